"""The stage table: every stage of a run, in data-flow order, and the loop that runs them.

Each stage is a function `run_<stage>(run: Run) -> dict` (its summary) in the module named
after its command: `distill generate` -> `teachers/generate.py`, `distill train dpo` ->
`students/dpo.py`. Stage modules import their heavy engines (vLLM, torch, Ray) inside the
functions that use them, so importing this table is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.console import Console

from distill import bench, check, curate, pairs, prompts, report
from distill import eval as evaluate
from distill.core.errors import DistillError
from distill.core.rundir import Run
from students import dpo, export, sft
from teachers import generate

console = Console()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], dict]
    what: str
    command: tuple[str, ...]  # the CLI words that run it alone
    first: tuple[str, ...] = ()  # stages that run before this one, whenever it runs
    then: Callable[[Run, dict], dict] | None = None  # a watch on its summary; may stop the run

    @property
    def cli(self) -> str:
        return "distill " + " ".join(self.command)


PROMPTS = Stage("prompts", prompts.run_prompts,
                "load task data, split off the held-out test set", ("prompts",))
CHECK = Stage("check", check.run_check, "is the teacher worth distilling? (gold sample)",
              ("check",))
GENERATE = Stage("generate", generate.run_generate, "teacher completions on vLLM in Ray",
                 ("generate",), first=("check",), then=check.watch_generation)
CURATE = Stage("curate", curate.run_curate, "filters, dedup, decontamination", ("curate",))
PAIRS = Stage("pairs", pairs.run_pairs, "preference pairs for DPO", ("pairs",))
SFT = Stage("sft", sft.run_sft, "QLoRA SFT of the student", ("train", "sft"))
DPO = Stage("dpo", dpo.run_dpo, "DPO on top of the SFT adapter", ("train", "dpo"))
EXPORT = Stage("export", export.run_export, "adapter card, optional merged model", ("export",))
EVAL = Stage("eval", evaluate.run_eval, "held-out quality of teacher and students", ("eval",))
BENCH = Stage("bench", bench.run_bench, "latency, throughput, cost", ("bench",))
REPORT = Stage("report", report.run_report, "HTML/MD/JSON report", ("report",))

STAGES: tuple[Stage, ...] = (PROMPTS, CHECK, GENERATE, CURATE, PAIRS, SFT, DPO, EXPORT, EVAL, BENCH,
                             REPORT)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise DistillError(f"unknown stage {name!r}: the stages are {', '.join(STAGE_NAMES)}")


def run_stage(run: Run, stage: Stage | str, force: bool = False) -> dict | None:
    """Run one stage (unless already done), recording it in the manifest."""
    stage = stage_by_name(stage) if isinstance(stage, str) else stage
    name = stage.name
    if run.is_done(name) and not force:
        console.print(f"[dim]{name}: already done, skipped (resume)[/dim]")
        return run.manifest["summaries"].get(name)
    for before in stage.first:  # e.g. the teacher check before generating at scale
        run_stage(run, before)
    console.rule(f"[bold]{name}[/bold]: {stage.what}")
    with run.stage(name):
        summary = stage.run(run) or {}
        if stage.then is not None:
            summary = stage.then(run, summary)
        run.record_summary(name, summary)
    return summary


def run_all(run: Run, force: bool = False, only: tuple[str, ...] = ()) -> None:
    """Every stage in order (or only the named ones, still in data-flow order), skipping
    those complete in the run dir (resume)."""
    for name in only:
        stage_by_name(name)  # an unknown name fails before anything runs
    for stage in STAGES:
        if not only or stage.name in only:
            run_stage(run, stage, force=force)
