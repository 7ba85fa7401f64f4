"""Join the configured Ray cluster, or start a local one; shared by every Ray stage. And the
named error inside an exception that comes back through Ray, and Ray Data's console kept quiet."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distill.core.config import RunConfig
from distill.core.errors import DistillError
from distill.core.logs import is_console, reroute


def ensure_ray(cfg: RunConfig):
    """Use the running Ray if this process already has one (tests, notebooks), else connect
    to `ray.address` (a cluster) or start a local Ray with `ray.num_cpus`. Returns the module.

    Workers' output stays in Ray's session logs instead of the console (log_to_driver=False):
    engines inside actors are chatty, and their failures reach the driver as exceptions."""
    import ray
    import ray.data  # noqa: F401 (its logger gets its console handler at import)

    reroute()  # Ray's console handlers, added at import, off again unless --verbose
    if not ray.is_initialized():
        if cfg.ray.address:  # a cluster has its own resources; num_cpus is for a local Ray
            ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: Ray's `cause`, then `__cause__`/`__context__`."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [e for e in (getattr(cur, "cause", None), cur.__cause__, cur.__context__)
                 if isinstance(e, BaseException)]


def named_error(exc: BaseException) -> DistillError | None:
    """The `distill` error inside an exception that came back through Ray, if there is one.

    An error raised in an actor or task reaches the driver wrapped (RayTaskError, Ray Data's
    UserCodeException, ...), printed as a wall of tracebacks. The named error inside is what
    the user needs.
    """
    from ray.exceptions import RayError

    for cur in _chain(exc):
        # Ray's wrapper, RayTaskError(EndpointError), subclasses the cause's class but prints
        # the whole traceback: the cause itself is the one to return.
        if isinstance(cur, DistillError) and not isinstance(cur, RayError):
            return cur
    return None


def ray_failure(exc: BaseException) -> str | None:
    """One line on a failure inside Ray: an actor that died (killed, out of memory, crashed)
    or an exception raised in an actor or task. None: the exception is not from Ray."""
    from ray.exceptions import RayActorError, RayTaskError

    for cur in _chain(exc):
        if isinstance(cur, RayActorError):
            text = str(cur)
            detail = re.search(r"Worker exit detail: (.*?)(?: Some common causes|$)", text, re.S)
            return "its actor died: " + (detail.group(1).strip() if detail
                                         else text.strip().splitlines()[0])
        if isinstance(cur, RayTaskError) and not isinstance(cur.cause, RayTaskError):
            lines = str(cur.cause).strip().splitlines()
            return f"{type(cur.cause).__name__}: {lines[0] if lines else ''}"
    return None


def ray_logs_dir() -> str:
    """Where this process's Ray writes its logs (workers' stderr included)."""
    try:
        from ray._private.worker import _global_node  # no public API names the session dir

        return str(Path(_global_node.get_session_dir_path()) / "logs")
    except Exception:  # not started, or the private name moved: say where it usually is
        return "Ray's session logs (<RAY_TMPDIR or /tmp>/ray/session_latest/logs)"


@contextmanager
def ray_data_console_quiet() -> Iterator[None]:
    """Ray Data's console lines off while a stage iterates a dataset: its progress lines and,
    on a failure, the traceback it logs before raising. Its log file (ray-data.log in Ray's
    session logs) keeps everything; the stage reports a failure as one named error."""
    import ray.data  # noqa: F401 (configures the "ray.data" logger and its handlers)

    handlers = [h for h in logging.getLogger("ray.data").handlers if is_console(h)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)
