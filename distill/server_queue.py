"""Servers for a row of engine groups, the next one starting while the current one answers.

On a CPU, most of a vLLM server's start is three Python processes (API server, engine core,
worker) importing torch and vLLM one after another: about 50 s for a 135M model on this
2-core machine, on one core at a time. A serving vLLM worker computes with one torch thread.
So eval can start group i+1's server in a thread while group i answers, and the wait shrinks
to the part of the start that did not fit behind the answers. Two servers are alive at once,
each with its own KV cache (`VLLM_CPU_KVCACHE_SPACE`) and weights. `eval.overlap_server_starts`
`auto` overlaps on a CPU with 4 or more cores: on this 2-core machine the answers slowed by as
much as the waits shrank (benchmarks/results/eval_overlap.md); on one GPU a second server
would find the first one's memory reserved.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from threading import Event
from typing import Callable, Generic, Iterator, Sequence, TypeVar

Group = TypeVar("Group")
Served = TypeVar("Served")
StartServer = Callable[[Group, Event], AbstractContextManager]


class ServerQueue(Generic[Group, Served]):
    """`serve(group)` for each group of `groups` in order; with `ahead`, entering one group's
    server submits the next group's start to a background thread. Leaving the queue stops
    whatever is still running or starting (a start in progress is cancelled)."""

    def __init__(self, start: StartServer, groups: Sequence[Group], ahead: bool) -> None:
        self._start = start
        self._groups = list(groups)
        self._ahead = ahead
        self._cancel = Event()
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="server-start") if ahead else None

    def __enter__(self) -> "ServerQueue[Group, Served]":
        return self

    def __exit__(self, *exc) -> None:
        self._cancel.set()
        for future in self._pending.values():
            try:
                stack, _ = future.result()
            except BaseException:  # noqa: BLE001 - a start that failed or was cancelled
                continue
            stack.close()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown()

    def _open(self, group: Group) -> tuple[ExitStack, Served]:
        stack = ExitStack()  # nothing to close if entering raises
        served = stack.enter_context(self._start(group, self._cancel))
        return stack, served

    def _index(self, group: Group) -> int:
        return next(i for i, g in enumerate(self._groups) if g is group)

    @contextmanager
    def serve(self, group: Group) -> Iterator[Served]:
        """The group's server (started now, or already by the group before it); stopped when
        the block ends."""
        i = self._index(group)
        future = self._pending.pop(i, None)
        stack, served = future.result() if future is not None else self._open(group)
        with stack:
            if self._pool is not None and i + 1 < len(self._groups):
                self._pending[i + 1] = self._pool.submit(self._open, self._groups[i + 1])
            yield served
