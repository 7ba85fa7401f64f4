"""Shared fixtures: a real local Ray shared by the tests (checked before each), and the
packaged models."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def ray_local():
    """A real local Ray (2 CPUs, no dashboard), shared by the tests that need one, and checked
    before each: a Ray that no longer answers an actor's call, or whose CPUs a finished test
    still holds, is started anew. (Once, after many tests in this process, a Ray Data pool's
    actor stayed "pending" although Ray had created it, and every later run on it hung.)"""
    yield _shared_ray()


@pytest.fixture(scope="module")
def ray_module():
    """`ray_local` for a module-scoped fixture."""
    yield _shared_ray()


def _shared_ray():
    import ray

    if ray.is_initialized() and not _ray_is_healthy(ray):
        print("\nconftest: the shared Ray did not answer or held CPUs; starting a new one")
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    return ray


def _ray_is_healthy(ray, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    ping = ray.remote(_Ping).options(num_cpus=0).remote()
    try:
        return ray.get(ping.ping.remote(), timeout=timeout_s)
    except Exception:
        return False
    finally:
        ray.kill(ping)


class _Ping:
    def ping(self) -> bool:
        return True


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
