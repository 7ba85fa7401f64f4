"""Shared fixtures: a real local Ray shared by the tests (checked before each), and the
packaged models."""

from __future__ import annotations

import faulthandler
import os
import threading
import time

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def ray_local():
    """A real local Ray (2 CPUs, no dashboard), shared by the tests that need one, and checked
    before each: a Ray whose CPUs a finished test still holds, or that does not answer, is
    started anew. Why: in CI, after many tests in this process, the driver stopped hearing
    from Ray (a created actor stayed "pending"; a resource query blocked inside Ray's C++,
    where no Python timeout reaches), and every later run on it hung."""
    yield _shared_ray()


@pytest.fixture(scope="module")
def ray_module():
    """`ray_local` for a module-scoped fixture."""
    yield _shared_ray()


def _shared_ray():
    import ray

    if ray.is_initialized() and not _bounded(_ray_is_healthy, 60):
        print("\nconftest: the shared Ray held CPUs or did not answer; starting a new one")
        if not _bounded(lambda: ray.shutdown() or True, 60):
            pytest.fail("the shared in-process Ray is stuck (not even ray.shutdown returns)")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    return ray


def _bounded(check, timeout_s: float) -> bool:
    """check() in a thread: False if it raised, returned falsy, or had not returned in time
    (a call blocked in Ray's C++ cannot be interrupted; the daemon thread is left behind)."""
    box: dict = {}

    def target():
        try:
            box["ok"] = bool(check())
        except Exception:
            box["ok"] = False

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return box.get("ok", False)


def _ray_is_healthy() -> bool:
    import ray

    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    ping = ray.remote(_Ping).options(num_cpus=0).remote()
    try:
        return ray.get(ping.ping.remote(), timeout=20)
    finally:
        ray.kill(ping)


class _Ping:
    def ping(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _hang_backstop(request):
    """pytest-timeout interrupts a test with a signal, which a call blocked in C++ never sees;
    past that timeout plus two minutes, print every thread's stack and end the run (exit 1)
    instead of hanging until CI's own limit."""
    marker = request.node.get_closest_marker("timeout")
    seconds = float(marker.args[0] if marker and marker.args
                    else request.config.getoption("timeout", None) or 900)
    faulthandler.dump_traceback_later(seconds + 120, exit=True, file=_real_stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


_real_stderr = 2


def pytest_configure(config):
    # The terminal's stderr, taken while pytest's capture is off (as its own faulthandler
    # plugin does): during a test, descriptor 2 is a capture file that dies with the run.
    global _real_stderr
    _real_stderr = os.dup(2)


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def student_path() -> str:
    from distill.core.models import resolve

    return resolve("packaged:smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def teacher_path() -> str:
    from distill.core.models import resolve

    return resolve("packaged:qwen2.5-coder-0.5b-instruct").path
