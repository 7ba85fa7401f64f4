"""Build the configured teacher backend. Imports the heavy engine only when it is used."""

from __future__ import annotations

from distill.config import TeacherConfig
from teachers.base import Generator


def make_generator(teacher: TeacherConfig, model_path: str, seed: int = 0) -> Generator:
    if teacher.backend == "openai":
        from teachers.http_engine import OpenAIGenerator

        return OpenAIGenerator(teacher.endpoint)
    kwargs = dict(max_model_len=teacher.max_model_len, dtype=teacher.dtype)
    if teacher.backend == "transformers":
        from teachers.hf_engine import HFGenerator

        return HFGenerator(model_path, engine_kwargs=teacher.engine_kwargs, **kwargs)
    from teachers.vllm_engine import VLLMGenerator, has_gpu

    engine_kwargs = dict(teacher.engine_kwargs)
    if teacher.tensor_parallel_size > 1:
        engine_kwargs.setdefault("tensor_parallel_size", teacher.tensor_parallel_size)
        # TP inside a Ray actor: vLLM's own multiprocessing executor on the actor's GPUs
        # (the `ray` executor loses the placement group there, vLLM issue #30016).
        if has_gpu():
            engine_kwargs.setdefault("distributed_executor_backend", "mp")
    return VLLMGenerator(model_path, engine_kwargs=engine_kwargs, seed=seed, **kwargs)
