"""The stages of a run, in data-flow order, and `distill run` which executes them.

Each stage is a function `run_<stage>(run: Run) -> dict` (its summary) living in the module
that owns the stage; it is imported only when it runs, so heavy engines load only when needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from rich.console import Console

from distill.rundir import Run

console = Console()


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function"
    what: str

    def load(self) -> Callable[[Run], dict]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage("prompts", "distill.data:run_prompts", "load task data, split off the held-out test set"),
    Stage("generate", "teachers.stage:run_generate", "teacher completions on vLLM in Ray"),
    Stage("curate", "distill.curate:run_curate", "filters, dedup, decontamination"),
    Stage("pairs", "distill.pairs:run_pairs", "preference pairs for DPO"),
    Stage("sft", "students.sft:run_sft", "QLoRA SFT of the student"),
    Stage("dpo", "students.dpo:run_dpo", "DPO on top of the SFT adapter"),
    Stage("export", "students.export:run_export", "adapter card, optional merged model"),
    Stage("eval", "distill.evaluate:run_eval", "held-out quality of teacher and students"),
    Stage("bench", "distill.bench:run_bench", "latency, throughput, cost"),
    Stage("report", "distill.report:run_report", "HTML/MD/JSON report"),
)


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(name)


def is_built(stage: Stage) -> bool:
    module = stage.target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_stage(run: Run, name: str, force: bool = False) -> dict | None:
    """Run one stage (unless already done), recording it in the manifest."""
    stage = stage_by_name(name)
    if run.is_done(name) and not force:
        console.print(f"[dim]{name}: already done, skipped (resume)[/dim]")
        return run.manifest["summaries"].get(name)
    func = stage.load()
    console.rule(f"[bold]{name}[/bold]: {stage.what}")
    with run.stage(name):
        summary = func(run) or {}
        run.record_summary(name, summary)
    return summary


def run_all(run: Run, force: bool = False) -> list[str]:
    """Every stage in order, skipping those complete in the run dir (resume).

    Stops before the first stage whose module is not built yet, since every later stage reads
    its output; returns the names of the stages that did not run for that reason.
    """
    for i, stage in enumerate(STAGES):
        if not is_built(stage):
            missing = [s.name for s in STAGES[i:]]
            console.print(f"[yellow]not built yet, not run: {', '.join(missing)}[/yellow]")
            return missing
        run_stage(run, stage.name, force=force)
    return []
