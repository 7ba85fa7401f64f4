"""Join the configured Ray cluster, or start a local one; shared by every Ray stage. And the
named error inside an exception that comes back through Ray, and Ray Data's console kept quiet."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from distill.core.config import RunConfig
from distill.core.errors import DistillError


def ensure_ray(cfg: RunConfig):
    """Use the running Ray if this process already has one (tests, notebooks), else connect
    to `ray.address` (a cluster) or start a local Ray with `ray.num_cpus`. Returns the module.

    Workers' output stays in Ray's session logs instead of the console (log_to_driver=False):
    engines inside actors are chatty, and their failures reach the driver as exceptions."""
    import ray
    import ray.data  # noqa: F401 (its logger gets its console handler at import)

    from distill.core.logs import reroute

    reroute()  # Ray's console handlers, added at import, off again unless --verbose
    if not ray.is_initialized():
        if cfg.ray.address:  # a cluster has its own resources; num_cpus is for a local Ray
            ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def named_error(exc: BaseException) -> DistillError | None:
    """The `distill` error inside an exception that came back through Ray, if there is one.

    An error raised in an actor or task reaches the driver wrapped (RayTaskError, Ray Data's
    UserCodeException, ...), printed as a wall of tracebacks. The named error inside is what
    the user needs; it is found through `cause` (Ray's link) and `__cause__`/`__context__`.
    """
    from ray.exceptions import RayError

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        # Ray's wrapper, RayTaskError(EndpointError), subclasses the cause's class but prints
        # the whole traceback: the cause itself is the one to return.
        if isinstance(cur, DistillError) and not isinstance(cur, RayError):
            return cur
        todo += [e for e in (getattr(cur, "cause", None), cur.__cause__, cur.__context__)
                 if isinstance(e, BaseException)]
    return None


@contextmanager
def ray_data_console_quiet() -> Iterator[None]:
    """Ray Data's console lines off while a stage iterates a dataset: its progress lines and,
    on a failure, the traceback it logs before raising. Its log file (ray-data.log in Ray's
    session logs) keeps everything; the stage reports a failure as one named error."""
    import ray.data  # noqa: F401 (configures the "ray.data" logger and its handlers)

    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)
