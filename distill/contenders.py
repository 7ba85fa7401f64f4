"""The models a run compares (teacher, base student, tuned students), how they are grouped on
servers, and the one server per group that eval and bench both use.

A group is the contenders that share one engine: the teacher alone; the students together on
one server with LoRA adapters (`student.serve: lora`), or each tuned student merged into its
base on a server of its own (`merged`, how a one-task student ships). Eval answers through
the group's server and, when it started that server anyway, measures latency on it too, so
each model's engine starts once for both stages.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Callable, Iterator

from distill.core.config import EndpointConfig, RunConfig, TaskConfig
from distill.core.io import read_json
from distill.core.messages import Message, teacher_messages
from distill.core.rundir import Run

# Tuned students: (training stage, contender name); the DPO student trained on on-policy pairs
# with `pairs.on_policy` (its summary says which: pairs_from).
TUNED = (("sft", "student_sft"), ("dpo", "student_dpo"), ("opd", "student_opd"))
SERVED_CONCURRENCY = 64  # eval's requests in flight per server: vLLM batches them


@dataclass(frozen=True)
class Contender:
    name: str
    role: str  # teacher | student
    adapter: Path | None
    prompt: Callable[[TaskConfig, str], list[Message]]


def contenders(run: Run) -> list[Contender]:
    """Teacher and base student always; SFT / DPO / OPD students where their adapters exist, on
    their short prompt with over-long inputs shortened as in training (students/fit.py)."""
    out = [
        Contender("teacher", "teacher", None, teacher_messages),
        Contender("student_base", "student", None,
                  lambda task, text: teacher_messages(task, text, few_shot=False)),
    ]
    for stage, name in TUNED:
        if (adapter := run.paths.finished_adapter(stage)) is not None:
            out.append(Contender(name, "student", adapter, fitted_prompt(run, stage)))
    return out


def trained_budget(run: Run, stage: str) -> int | None:
    return (read_json(run.paths.train_summary(stage)) or {}).get("prompt_budget")


def fitted_prompt(run: Run, stage: str) -> Callable[[TaskConfig, str], list[Message]]:
    """The student's short prompt, its input cut to the budget the stage trained with."""
    from students.fit import load_fitter

    fitter = load_fitter(run.cfg, trained_budget(run, stage))
    return lambda task, text: fitter.messages(text)


def engine_groups(cfg: RunConfig, everyone: list[Contender]) -> list[list[Contender]]:
    """Contenders that share one engine: the teacher alone; the students together on one
    engine with LoRA adapters (`student.serve: lora`), or each tuned student merged on its own."""
    teacher = [c for c in everyone if c.role == "teacher"]
    students = [c for c in everyone if c.role == "student"]
    if cfg.student.serve == "lora":
        return [teacher, students]
    return [teacher, [c for c in students if c.adapter is None],
            *[[c] for c in students if c.adapter is not None]]


def is_merged(cfg: RunConfig, group: list[Contender]) -> bool:
    return cfg.student.serve == "merged" and group[0].adapter is not None


def has_server(cfg: RunConfig, group: list[Contender]) -> bool:
    """A `transformers` teacher has no server: eval asks it in-process, bench serves it on
    vLLM (`served_teacher`), so the two do not share an engine."""
    return group[0].role != "teacher" or cfg.teacher.backend != "transformers"


@contextmanager
def served_group(run: Run, group: list[Contender], cancel: Event | None = None
                 ) -> Iterator[tuple[str, dict[str, str], str]]:
    """The group's OpenAI-compatible server: (base_url, {contender: served name}, api key).
    `cancel` (set from another thread) stops it while it is still starting."""
    from distill.engines import merged_student, served_merged, served_students, served_teacher

    cfg = run.cfg
    if group[0].role == "teacher":
        server = served_teacher(cfg, run.paths.server_log("teacher"), cancel)
    elif is_merged(cfg, group):
        c = group[0]
        server = served_merged(cfg, c.name, merged_student(run, c.adapter),
                               run.paths.server_log(f"{c.name}_merged"), cancel)
    else:
        server = served_students(cfg, {c.name: c.adapter for c in group if c.adapter},
                                 run.paths.server_log("student"), cancel)
    with server as served:
        yield served


def served_generator(cfg: RunConfig, served: tuple[str, dict[str, str], str], c: Contender):
    """A generator that asks contender `c` on its group's server (any backend's interface)."""
    from teachers.http_engine import OpenAIGenerator

    if c.role == "teacher" and cfg.teacher.is_endpoint:
        return OpenAIGenerator(cfg.teacher.endpoint)  # its own key variable and limits
    base_url, names, key = served
    return OpenAIGenerator(EndpointConfig(base_url=base_url, model=names[c.name],
                                          max_concurrency=SERVED_CONCURRENCY, timeout_s=900,
                                          max_retries=2),
                           key=None if key == "unused" else key)  # the teacher pool's own
