"""The teacher's backends: where its model comes from, its engine in this process, and the
flags of its `vllm serve`. Imports the heavy engine only when it is used.

Every role that runs the teacher (generation actors, the pairs judge, eval, bench) builds it
through these functions, so `teacher.backend`, `tensor_parallel_size` and `engine_kwargs` mean
the same thing everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from distill.core.config import TeacherConfig
from distill.core.models import resolve
from teachers.base import Generator


@dataclass(frozen=True)
class TeacherSource:
    path: str  # what the engine loads: a model folder, or the endpoint's model name
    manifest: dict[str, Any]  # what the run's manifest records (never an API key)


def teacher_source(teacher: TeacherConfig) -> TeacherSource:
    if teacher.is_endpoint:
        ep = teacher.endpoint
        return TeacherSource(ep.model, {"ref": teacher.model, "kind": "endpoint",
                                        "path": ep.base_url, "endpoint_model": ep.model,
                                        "source_sha256": None})
    resolved = resolve(teacher.model)
    return TeacherSource(resolved.path, resolved.to_manifest())


def vllm_engine_kwargs(teacher: TeacherConfig) -> dict[str, Any]:
    from teachers.vllm_engine import has_gpu

    engine_kwargs = dict(teacher.engine_kwargs)
    if teacher.tensor_parallel_size > 1:
        engine_kwargs.setdefault("tensor_parallel_size", teacher.tensor_parallel_size)
        # TP inside a Ray actor: vLLM's own multiprocessing executor on the actor's GPUs
        # (the `ray` executor loses the placement group there, vLLM issue #30016).
        if has_gpu():
            engine_kwargs.setdefault("distributed_executor_backend", "mp")
    return engine_kwargs


def make_generator(teacher: TeacherConfig, model_path: str, seed: int = 0) -> Generator:
    if teacher.is_endpoint:
        from teachers.http_engine import OpenAIGenerator

        return OpenAIGenerator(teacher.endpoint)
    kwargs = dict(max_model_len=teacher.max_model_len, dtype=teacher.dtype)
    if teacher.backend == "transformers":
        from teachers.hf_engine import HFGenerator

        return HFGenerator(model_path, engine_kwargs=teacher.engine_kwargs, **kwargs)
    from teachers.vllm_engine import VLLMGenerator

    return VLLMGenerator(model_path, engine_kwargs=vllm_engine_kwargs(teacher), seed=seed,
                         **kwargs)


def serve_flags(engine_kwargs: dict[str, Any]) -> list[str]:
    """`vllm.LLM` keyword arguments as `vllm serve` flags (the server takes the same names)."""
    flags: list[str] = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags
