"""Shared fixtures: one real local Ray per test session, and the packaged models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard), shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def student_path() -> str:
    from distill.core.models import resolve

    return resolve("packaged:smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def teacher_path() -> str:
    from distill.core.models import resolve

    return resolve("packaged:qwen2.5-coder-0.5b-instruct").path
