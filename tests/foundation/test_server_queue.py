"""Servers started one ahead (distill/server_queue.py): the order of starts and stops, the
overlap, a failed start surfacing at its group's turn, and a start cancelled on the way out.

The queue's own contract is tested with stand-in servers (context managers that record what
happened and sleep as a start would); the cancel test at the end starts a real `vllm serve`."""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from distill.server_queue import ServerQueue


class Servers:
    """Stand-in servers: each start takes `start_s` (or fails, for names in `broken`)."""

    def __init__(self, start_s: float = 0.2, broken: tuple[str, ...] = (),
                 slow: tuple[str, ...] = ()) -> None:
        self.start_s, self.broken, self.slow = start_s, broken, slow
        self.events: list[str] = []
        self.lock = threading.Lock()

    def log(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    @contextmanager
    def start(self, group: list[str], cancel: threading.Event):
        name = group[0]
        self.log(f"start {name}")
        deadline = time.monotonic() + (5.0 if name in self.slow else self.start_s)
        while time.monotonic() < deadline:
            if cancel.is_set():
                self.log(f"cancelled {name}")
                raise RuntimeError("cancelled")
            time.sleep(0.01)
        if name in self.broken:
            raise RuntimeError(f"{name} did not start")
        self.log(f"ready {name}")
        try:
            yield f"url-{name}"
        finally:
            self.log(f"stop {name}")


GROUPS = [["teacher"], ["base"], ["sft"]]


def test_the_next_server_starts_while_the_current_one_answers():
    servers = Servers(start_s=0.3)
    begin = time.monotonic()
    with ServerQueue(servers.start, GROUPS, ahead=True) as queue:
        for group in GROUPS:
            with queue.serve(group) as url:
                assert url == f"url-{group[0]}"
                time.sleep(0.3)  # answering, as long as a start
                servers.log(f"answered {group[0]}")
    took = time.monotonic() - begin
    # one start waited for, then each start hidden behind the answers before it
    assert took < 0.3 * 6 - 0.4, took
    ev = servers.events
    assert ev.index("start base") < ev.index("answered teacher")
    assert ev.index("start sft") < ev.index("answered base")
    assert ev.count("stop teacher") == ev.count("stop base") == ev.count("stop sft") == 1
    assert ev.index("stop teacher") < ev.index("answered base")  # one answering at a time


def test_without_ahead_each_server_starts_at_its_turn():
    servers = Servers(start_s=0.05)
    with ServerQueue(servers.start, GROUPS, ahead=False) as queue:
        for group in GROUPS:
            with queue.serve(group):
                servers.log(f"answered {group[0]}")
    assert servers.events == [e for g in GROUPS for e in
                              (f"start {g[0]}", f"ready {g[0]}", f"answered {g[0]}",
                               f"stop {g[0]}")]


def test_a_failed_start_surfaces_at_its_groups_turn_and_nothing_is_left_running():
    servers = Servers(start_s=0.05, broken=("base",))
    with pytest.raises(RuntimeError, match="base did not start"):
        with ServerQueue(servers.start, GROUPS, ahead=True) as queue:
            for group in GROUPS:
                with queue.serve(group):
                    time.sleep(0.1)
                    servers.log(f"answered {group[0]}")
    assert "answered teacher" in servers.events and "answered base" not in servers.events
    assert "start sft" not in servers.events  # the queue stopped at the failure


def test_leaving_early_cancels_the_start_in_progress():
    servers = Servers(start_s=0.0, slow=("b",))  # "b" would take 5 s
    begin = time.monotonic()
    groups = [["a"], ["b"]]
    with pytest.raises(KeyError):
        with ServerQueue(servers.start, groups, ahead=True) as queue:
            with queue.serve(groups[0]):
                raise KeyError("interrupted while answering")
    assert time.monotonic() - begin < 2.0  # not the 5 s start
    assert "cancelled b" in servers.events and "stop a" in servers.events


@pytest.mark.slow
def test_a_real_vllm_serve_start_is_cancelled_and_its_process_stopped(student_path, tmp_path):
    from teachers.serve import ServerError, vllm_server

    name = f"cancelled-{tmp_path.name}"  # to find its processes
    cancel = threading.Event()
    threading.Timer(3.0, cancel.set).start()
    begin = time.monotonic()
    with pytest.raises(ServerError, match="cancelled"):
        with vllm_server(student_path, served_name=name, max_model_len=256, cancel=cancel,
                         log_path=tmp_path / "server.log"):
            pass
    assert time.monotonic() - begin < 30  # not a whole start (~50 s on this CPU)
    left = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout
    assert not left.strip(), left


def test_sigterm_unwinds_like_ctrl_c_so_started_servers_stop():
    """A real SIGTERM to this process while a command runs: the `with` blocks run their exits
    (what stops a started server) and the command ends with one line and status 143."""
    stopped = []

    def body():
        try:
            _sigterm_self()
        finally:
            stopped.append("server")

    assert _exit_status_under_sigterm(body) == 143 and stopped == ["server"]


def test_sigterm_turned_into_another_error_by_a_library_still_ends_as_terminated():
    """vLLM, waiting for its engine core, can turn the interruption into a TimeoutError (seen
    with a real SIGTERM during `distill run`'s engine start): still one line and status 143."""
    def body():
        try:
            _sigterm_self()
        except KeyboardInterrupt:
            raise TimeoutError("Timed out waiting for engine core processes to start")

    assert _exit_status_under_sigterm(body) == 143


def _sigterm_self() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises here


def _exit_status_under_sigterm(body) -> int:
    """`body` run as a CLI command with the CLI's SIGTERM handler; this process's handler and
    the CLI's received-flag are restored afterwards."""
    import signal

    import typer

    from distill import cli

    previous = signal.getsignal(signal.SIGTERM)
    try:
        cli.stop_on_sigterm()
        with pytest.raises(typer.Exit) as exit_:
            cli.user_errors(body)()
    finally:
        signal.signal(signal.SIGTERM, previous)
        cli._sigterm_received = False
    return exit_.value.exit_code
