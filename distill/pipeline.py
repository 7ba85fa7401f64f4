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
from distill.core.config import RunConfig
from distill.core.errors import ConfigError, DistillError
from distill.core.rundir import Run
from students import dpo, export, sft
from teachers import generate
from teachers.http_engine import missing_api_keys

console = Console()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], dict]
    what: str
    command: tuple[str, ...]  # the CLI words that run it alone
    uses_teacher: Callable[[RunConfig], bool] = lambda cfg: False  # needs the API key, if any
    first: tuple[str, ...] = ()  # stages that run before this one, whenever it runs
    then: Callable[[Run, dict], dict] | None = None  # a watch on its summary; may stop the run

    @property
    def cli(self) -> str:
        return "distill " + " ".join(self.command)


PROMPTS = Stage("prompts", prompts.run_prompts,
                "load task data, split off the held-out test set", ("prompts",))
CHECK = Stage("check", check.run_check, "is the teacher worth distilling? (gold sample)",
              ("check",), lambda cfg: cfg.check.enabled)
GENERATE = Stage("generate", generate.run_generate, "teacher completions on a Ray actor pool",
                 ("generate",), lambda cfg: True, first=("check",), then=check.watch_generation)
CURATE = Stage("curate", curate.run_curate, "filters, dedup, decontamination", ("curate",))
PAIRS = Stage("pairs", pairs.run_pairs, "preference pairs for DPO", ("pairs",),
              lambda cfg: cfg.pairs.enabled and cfg.pairs.scorer == "judge")
SFT = Stage("sft", sft.run_sft, "QLoRA SFT of the student", ("train", "sft"))
DPO = Stage("dpo", dpo.run_dpo, "DPO on top of the SFT adapter", ("train", "dpo"))
EXPORT = Stage("export", export.run_export, "adapter card, optional merged model", ("export",))
EVAL = Stage("eval", evaluate.run_eval, "held-out quality of teacher and students", ("eval",),
             lambda cfg: True)
BENCH = Stage("bench", bench.run_bench, "latency, throughput, cost", ("bench",),
              lambda cfg: cfg.bench.enabled)
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
    check_api_keys(run.cfg, [stage])
    console.rule(f"[bold]{name}[/bold]: {stage.what}")
    with run.stage(name):
        summary = stage.run(run) or {}
        if stage.then is not None:
            summary = stage.then(run, summary)
        run.record_summary(name, summary)
    console.print(outcome_line(name, run.manifest["stages"][name].get("seconds"), summary),
                  soft_wrap=True, highlight=False)
    return summary


def outcome_line(name: str, seconds: float | None, summary: dict, keys: int = 6) -> str:
    """A stage's outcome in one line: its time and the first few plain numbers and words of
    its summary (the stage orders them, most telling first); the rest is in manifest.json."""
    shown = [f"{k} {v}" for k, v in summary.items()
             if isinstance(v, (int, float, str)) and len(str(v)) <= 40][:keys]
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    return f"{name}: done{took}" + (f": {', '.join(shown)}" if shown else "")


def run_all(run: Run, force: bool = False, only: tuple[str, ...] = ()) -> None:
    """Every stage in order (or only the named ones, still in data-flow order), skipping
    those complete in the run dir (resume)."""
    for name in only:
        stage_by_name(name)  # an unknown name fails before anything runs
    todo = [s for s in STAGES
            if (not only or s.name in only) and (force or not run.is_done(s.name))]
    check_api_keys(run.cfg, todo)  # now, not after an hour of earlier stages
    for stage in STAGES:
        if not only or stage.name in only:
            run_stage(run, stage, force=force)


def check_api_keys(cfg: RunConfig, stages: list[Stage]) -> None:
    """Every key variable the config names is set, before Ray or any engine starts. (The
    workers check again where they read it: a cluster's nodes have their own environment.)"""
    if any(s.uses_teacher(cfg) for s in stages) and (missing := missing_api_keys(cfg.teacher)):
        raise ConfigError("teacher.endpoint.api_key_env", missing)
