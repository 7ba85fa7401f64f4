"""The engine builder: every role that needs a model running gets it here.

- the teacher (eval contender, pairs judge): its configured backend (vLLM in this process, an
  OpenAI-compatible endpoint, or transformers), with its `engine_kwargs` and tensor parallelism,
  through `teachers.factory`, the same builder the generation actors use;
- the students: vLLM, the base model with a LoRA adapter, or a tuned student merged into its
  base (`student.serve: merged`, how a one-task student ships), cached in `<run>/merged/`;
- servers for bench: vLLM's OpenAI-compatible server with the same settings, or the teacher's
  own endpoint.
So eval, bench and the judge measure the same engines that generation used.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from threading import Event
from typing import Callable, Iterator

from distill.core.config import RunConfig, TeacherConfig
from distill.core.models import resolve
from distill.core.rundir import Run
from students.merge import MERGE_STAMP, merge
from students.modeling import training_base
from teachers.base import Generator, Messages, SamplingSpec
from teachers.factory import make_generator, serve_flags, teacher_source, vllm_engine_kwargs

ServedModel = tuple[str, dict[str, str], str]  # (base_url, {contender: served name}, api key)


def student_max_len(cfg: RunConfig) -> int:
    # The base student is also asked with the teacher's long zero-shot prompt.
    return max(cfg.student.max_seq_len, cfg.teacher.max_model_len)


def merged_student(run: Run, adapter: Path) -> Path:
    """`adapter` folded into the student's base, cached in `<run>/merged/<stage>/`.

    Rebuilt when the adapter is newer than the cached merge (a retrained stage).
    """
    dest = run.paths.merged(adapter.parent.name)
    stamp = dest / MERGE_STAMP
    weights = adapter / "adapter_model.safetensors"
    if stamp.is_file() and weights.is_file() and stamp.stat().st_mtime >= weights.stat().st_mtime:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    base = training_base(run.cfg, run.paths).path
    return merge(base, adapter, dest, run.cfg.export.merged_dtype)


# --- engines in this process -------------------------------------------------------------------


def _make(cfg: RunConfig, engine: TeacherConfig, role: str) -> Generator:
    if engine.server == "run":  # a client of the run's pool (teachers/pool.py)
        from teachers.pool import pooled_generator

        return pooled_generator(cfg, engine, role)
    return make_generator(engine, teacher_source(engine).path, seed=cfg.seed)


@contextmanager
def open_teacher(cfg: RunConfig) -> Iterator[Generator]:
    """The teacher through its configured backend (or its pool); closed on exit."""
    generator = _make(cfg, cfg.teacher, "teacher")
    try:
        yield generator
    finally:
        generator.close()


@contextmanager
def open_student(cfg: RunConfig, adapter: Path | None = None,
                 model_path: Path | None = None) -> Iterator[Generator]:
    """The student on vLLM: `model_path` replaces its base (a merged student), `adapter` adds
    a LoRA (more can be switched in with `use_adapter`)."""
    from teachers.vllm_engine import VLLMGenerator

    generator = VLLMGenerator(str(model_path or resolve(cfg.student.model).path),
                              max_model_len=student_max_len(cfg),
                              lora_path=str(adapter) if adapter else None,
                              max_lora_rank=cfg.student.lora.r, seed=cfg.seed)
    try:
        yield generator
    finally:
        generator.close()


@contextmanager
def open_judge(cfg: RunConfig) -> Iterator[Generator]:
    """The judge (`judge.engine`, else the teacher) through the same builder as the teacher."""
    generator = _make(cfg, cfg.judge.engine or cfg.teacher,
                      "judge" if cfg.judge.engine else "teacher")
    try:
        yield generator
    finally:
        generator.close()


def open_generator(cfg: RunConfig, role: str, adapter: Path | None = None,
                   model_path: Path | None = None):
    """`open_teacher` or `open_student` by role ("teacher" | "student")."""
    if role == "teacher":
        return open_teacher(cfg)
    return open_student(cfg, adapter=adapter, model_path=model_path)


def chat(generator: Generator, max_tokens: int, seed: int = 0) -> Callable[[list[Messages]], list[str]]:
    """Greedy replies from any backend: one text per conversation ("" where it failed)."""
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed)

    def reply(conversations: list[Messages]) -> list[str]:
        return [c.text if c.ok else "" for c in generator.generate(conversations, spec)]
    return reply


# --- servers -------------------------------------------------------------------------------


@contextmanager
def served_teacher(cfg: RunConfig, log: Path, cancel: Event | None = None
                   ) -> Iterator[ServedModel]:
    """The teacher behind an OpenAI-compatible API: its own endpoint, its pool's first server
    (`teacher.server: run`), or `vllm serve` with the teacher's engine settings (a
    `transformers` teacher is served by vLLM: that backend has no server)."""
    from teachers.serve import vllm_server

    if cfg.teacher.server == "run":
        from teachers.pool import ensure_pool

        pool = ensure_pool(cfg, cfg.teacher)
        yield pool.urls[0], {"teacher": "teacher"}, pool.key
        return
    if cfg.teacher.is_endpoint:
        from teachers.http_engine import api_key

        ep = cfg.teacher.endpoint
        yield ep.base_url, {"teacher": ep.model}, api_key(ep)
        return
    engine_kwargs = vllm_engine_kwargs(cfg.teacher) if cfg.teacher.backend == "vllm" else {}
    with vllm_server(teacher_source(cfg.teacher).path, served_name="teacher",
                     max_model_len=cfg.teacher.max_model_len, dtype=cfg.teacher.dtype,
                     extra_args=serve_flags(engine_kwargs), log_path=log, cancel=cancel) as url:
        yield url, {"teacher": "teacher"}, "unused"


@contextmanager
def served_students(cfg: RunConfig, adapters: dict[str, Path], log: Path,
                    cancel: Event | None = None) -> Iterator[ServedModel]:
    """The base student plus every adapter (vLLM LoRA) on one server."""
    from teachers.serve import vllm_server

    names = {"student_base": "student_base", **{name: name for name in adapters}}
    with vllm_server(resolve(cfg.student.model).path, served_name="student_base",
                     max_model_len=student_max_len(cfg),
                     lora_modules={n: str(p) for n, p in adapters.items()} or None,
                     max_lora_rank=cfg.student.lora.r, log_path=log, cancel=cancel) as url:
        yield url, names, "unused"


@contextmanager
def served_merged(cfg: RunConfig, name: str, path: Path, log: Path,
                  cancel: Event | None = None) -> Iterator[ServedModel]:
    """A merged student (the base with an adapter folded in) on its own server."""
    from teachers.serve import vllm_server

    with vllm_server(str(path), served_name=name, max_model_len=student_max_len(cfg),
                     log_path=log, cancel=cancel) as url:
        yield url, {name: name}, "unused"
