"""Open the teacher or the student as a generator (eval) or as a server (bench).

One place decides which engine serves which role, so eval and bench measure the same thing:
the teacher through its configured backend, the student through vLLM with its LoRA adapter.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distill.config import RunConfig
from distill.models import resolve


def student_max_len(cfg: RunConfig) -> int:
    # The base student is also asked with the teacher's long zero-shot prompt.
    return max(cfg.student.max_seq_len, cfg.teacher.max_model_len)


def merged_student(run, adapter: Path) -> Path:
    """`adapter` folded into the student's base, cached in `<run>/merged/<stage>/`.

    Rebuilt when the adapter is newer than the cached merge (a retrained stage).
    """
    from students.export import merge

    dest = run.dir / "merged" / adapter.parent.name
    stamp = dest / "distill_merge.json"
    weights = adapter / "adapter_model.safetensors"
    if stamp.is_file() and weights.is_file() and stamp.stat().st_mtime >= weights.stat().st_mtime:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    return merge(resolve(run.cfg.student.model).path, adapter, dest, run.cfg.export.merged_dtype)


@contextmanager
def open_generator(cfg: RunConfig, role: str, adapter: Path | None = None,
                   model_path: Path | None = None) -> Iterator:
    """A `teachers.base.Generator` for `role` ("teacher" or "student"); closed on exit.

    `model_path` replaces the student's base (a merged student); `adapter` adds a LoRA.
    """
    if role == "teacher":
        generator = _teacher(cfg)
    else:
        from teachers.vllm_engine import VLLMGenerator

        generator = VLLMGenerator(str(model_path or resolve(cfg.student.model).path),
                                  max_model_len=student_max_len(cfg),
                                  lora_path=str(adapter) if adapter else None,
                                  max_lora_rank=cfg.student.lora.r, seed=cfg.seed)
    try:
        yield generator
    finally:
        generator.close()


def _teacher(cfg: RunConfig):
    from teachers.factory import make_generator

    path = cfg.teacher.model if cfg.teacher.backend == "openai" else resolve(cfg.teacher.model).path
    return make_generator(cfg.teacher, path, seed=cfg.seed)


@contextmanager
def served(cfg: RunConfig, role: str,
           adapters: dict[str, Path]) -> Iterator[tuple[str, dict[str, str], str]]:
    """(base_url, {contender: served model name}, api_key) of an OpenAI-compatible server.

    The student's server holds the base model plus every adapter (vLLM LoRA), so all students
    are measured on one engine.
    """
    from teachers.serve import vllm_server

    if role == "teacher" and cfg.teacher.backend == "openai":
        from teachers.http_engine import api_key

        yield cfg.teacher.endpoint.base_url, {"teacher": cfg.teacher.endpoint.model}, \
            api_key(cfg.teacher.endpoint)
        return
    log = Path(cfg.output_dir) / "bench" / f"vllm_{role}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if role == "teacher":
        with vllm_server(resolve(cfg.teacher.model).path, served_name="teacher",
                         max_model_len=cfg.teacher.max_model_len, dtype=cfg.teacher.dtype,
                         log_path=log) as url:
            yield url, {"teacher": "teacher"}, "unused"
        return
    names = {"student_base": "student_base", **{name: name for name in adapters}}
    with vllm_server(resolve(cfg.student.model).path, served_name="student_base",
                     max_model_len=student_max_len(cfg),
                     lora_modules={n: str(p) for n, p in adapters.items()} or None,
                     max_lora_rank=cfg.student.lora.r, log_path=log) as url:
        yield url, names, "unused"


@contextmanager
def served_merged(cfg: RunConfig, name: str, path: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """A merged student (the base with an adapter folded in) on its own server."""
    from teachers.serve import vllm_server

    log = Path(cfg.output_dir) / "bench" / f"vllm_{name}_merged.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with vllm_server(str(path), served_name=name, max_model_len=student_max_len(cfg),
                     log_path=log) as url:
        yield url, {name: name}, "unused"
