"""The stage table: every stage of a run, in data-flow order, and the loop that runs them.

Each stage is a function `run_<stage>(run: Run) -> dict` (its summary) in the module named
after its command: `distill generate` -> `teachers/generate.py`, `distill train dpo` ->
`students/dpo.py`. Stage modules import their heavy engines (vLLM, torch, Ray) inside the
functions that use them, so importing this table is cheap.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

from rich.console import Console

from distill import bench, check, curate, pairs, prompts, report
from distill import eval as evaluate
from distill.core.artifacts import SHARED_STAGES
from distill.core.config import RunConfig
from distill.core import stale
from distill.core.errors import ConfigError, DistillError, StaleStageError
from distill.core.rundir import Run
from students import dpo, export, opd, prune, sft
from teachers import generate
from teachers import pool as teacher_pool
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
    # Config keys (dotted prefixes) this stage is the first in data-flow order to read. A
    # stage's results depend on the keys of its own and every earlier stage; a key no stage
    # names (run_name, seed, task, prompts, a new section) counts as read by the first stage.
    reads: tuple[str, ...] = ()
    keep_on_rerun: bool = False  # its folder holds only a cache keyed by what it asks

    @property
    def cli(self) -> str:
        return "distill " + " ".join(self.command)


PROMPTS = Stage("prompts", prompts.run_prompts,
                "load task data, split off the held-out test set", ("prompts",))
# The check asks the teacher as generation will (teacher, generate) and the base student
# (its model, and max_seq_len: the engine's length), with the eval answer budget
# (eval.max_tokens); its answer cache is keyed by all that.
CHECK = Stage("check", check.run_check, "is the teacher worth distilling? (gold sample)",
              ("check",), lambda cfg: cfg.check.enabled,
              reads=("check", "teacher", "generate", "student.model", "student.max_seq_len",
                     "eval.max_tokens"),
              keep_on_rerun=True)
GENERATE = Stage("generate", generate.run_generate, "teacher completions on a Ray actor pool",
                 ("generate",), lambda cfg: True, first=("check",), then=check.watch_generation,
                 reads=("cost",))  # the summary's cost estimate
CURATE = Stage("curate", curate.run_curate, "filters, dedup, decontamination", ("curate",),
               lambda cfg: cfg.curate.target == "judge" and cfg.judge.engine is None,
               reads=("curate", "judge"))
PAIRS = Stage("pairs", pairs.run_pairs, "preference pairs for DPO", ("pairs",),
              lambda cfg: cfg.pairs.enabled and cfg.pairs.scorer == "judge", reads=("pairs",))
# Shared by the seeds; it reads the student's short prompt (the block is chosen on it).
PRUNE = Stage("prune", prune.run_prune, "remove a block of the student's decoder layers",
              ("train", "prune"), reads=("prune", "task.student_instruction",
                                         "task.student_system_prompt"))
SFT = Stage("sft", sft.run_sft, "QLoRA SFT of the student", ("train", "sft"),
            reads=("sft", "student", "task.student_instruction", "task.student_system_prompt"))
# After SFT (it samples the SFT student), per seed; DPO reads its pairs with pairs.on_policy.
POLICY_PAIRS = Stage("policy_pairs", pairs.run_policy_pairs, "on-policy preference pairs from "
                     "the SFT student's samples", ("pairs", "--on-policy"),
                     lambda cfg: cfg.pairs.on_policy and cfg.pairs.scorer == "judge",
                     reads=("pairs.on_policy", "pairs.on_policy_samples",
                            "pairs.on_policy_temperature"))
DPO = Stage("dpo", dpo.run_dpo, "DPO on top of the SFT adapter", ("train", "dpo"),
            reads=("dpo",))
# After DPO: both start from the SFT adapter, so neither reads the other's output; here a
# change to opd keys leaves DPO fresh.
OPD = Stage("opd", opd.run_opd, "on-policy distillation of the SFT student (teacher scores "
            "its samples)", ("train", "opd"), reads=("opd",))
EXPORT = Stage("export", export.run_export, "adapter card, optional merged model", ("export",),
               reads=("export",))
EVAL = Stage("eval", evaluate.run_eval, "held-out quality of teacher and students", ("eval",),
             lambda cfg: True, reads=("eval",))
BENCH = Stage("bench", bench.run_bench, "latency, throughput, cost", ("bench",),
              lambda cfg: cfg.bench.enabled, reads=("bench",))
REPORT = Stage("report", report.run_report, "HTML/MD/JSON report", ("report",),
               reads=("run_name", "refresh", "eval.quality_bar",  # the verdict's bar
                      "eval.seeds"))  # how many seeds' evals it sums up

STAGES: tuple[Stage, ...] = (PROMPTS, CHECK, GENERATE, CURATE, PAIRS, PRUNE, SFT, POLICY_PAIRS, DPO,
                             OPD, EXPORT, EVAL, BENCH, REPORT)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise DistillError(f"unknown stage {name!r}: the stages are {', '.join(STAGE_NAMES)}")


# --- stale stages: finished under another config ------------------------------------------


def first_reader(path: str) -> int:
    """Index in STAGES of the first stage that reads this config key (longest prefix wins)."""
    best, where = -1, 0
    for i, s in enumerate(STAGES):
        for prefix in s.reads:
            if stale.under(path, prefix) and len(prefix) > best:
                best, where = len(prefix), i
    return where


def stale_changes(run: Run, stage: Stage) -> list[tuple[str, object, object]]:
    """What makes a finished stage's output stale: config keys read by it or an earlier
    stage (other than where/how-fast keys) that changed, and earlier stages that finished
    again after it. [] when it is not done or still fresh."""
    if not run.is_done(stage.name):
        return []
    return config_changes(run, stage) + rerun_since(run, stage)


def config_changes(run: Run, stage: Stage) -> list[tuple[str, object, object]]:
    digest, old = run.stage_config(stage.name)
    if digest == run.cfg.config_hash():
        return []
    if old is None:  # a manifest from before per-config records: only the hash is known
        return [("(config hash)", digest, run.cfg.config_hash())]
    index = STAGES.index(stage)
    return [c for c in stale.changes(old, run.cfg.resolved())
            if not stale.allowed(c[0]) and first_reader(c[0]) <= index]


RERUN_MARK = " (finished again after "
# A gate: no later stage reads its output, so running it again leaves theirs valid.
GATES = ("check",)


def rerun_since(run: Run, stage: Stage) -> list[tuple[str, object, object]]:
    """Earlier stages that finished after this one did (e.g. `distill train sft --force`
    after DPO): this stage was built on their previous output. As (what, this stage's finish
    time, theirs), so the stale message shows both."""
    mine = run.finished(stage.name)
    if mine is None:  # a manifest from before finish times were kept
        return []
    return [(f"{s.name}{RERUN_MARK}{stage.name})", mine, theirs)
            for s in STAGES[:STAGES.index(stage)]
            if s.name not in GATES and run.is_done(s.name)
            and (theirs := run.finished(s.name)) is not None and theirs > mine]


def stale_message(run: Run, found: dict[str, list], force_hint: str) -> str:
    lines = [f"{', '.join(found)}: finished in {run.dir} under another config, or before a "
             "stage they build on ran again; their output would be reused. Changed since:"]
    seen: list[tuple] = []
    reran: dict[tuple[str, str], list[str]] = {}  # (earlier stage, its finish) -> stages before it
    for name, changed in found.items():
        for c in changed:
            if RERUN_MARK in c[0]:
                reran.setdefault((c[0].split(RERUN_MARK)[0], c[2]), []).append(name)
            elif c not in seen:
                seen.append(c)
    lines += [f"  - {stale.describe(c)}" for c in seen]
    lines += [f"  - {earlier} ran again ({when}) after {', '.join(later)} finished"
              for (earlier, when), later in reran.items()]
    lines.append(f"{force_hint}, or set a new output_dir for a separate run. (Keys that only "
                 "say where or how fast, such as ray.address, never count.)")
    return "\n".join(lines)


def refuse_stale_inputs(run: Run, stage: Stage) -> None:
    """A stage reads what the earlier stages wrote: none of those may be stale."""
    found = {s.name: c for s in STAGES[:STAGES.index(stage)] if (c := stale_changes(run, s))}
    if found:
        raise StaleStageError(stale_message(
            run, found, f"`distill run --force` reruns the stale stages (then {stage.name})"))


def set_aside(run: Run, stage: Stage) -> None:
    """Before a stale stage reruns, its folder goes to <run>/stale/<old hash>/, so nothing
    made under the old config is resumed (finished shards, checkpoints, saved eval answers).
    Curation's persistent index in the run dir goes too: it would dedup the new data against
    the old. Nothing is deleted but an older set-aside of the same config's output."""
    digest, _ = run.stage_config(stage.name)
    dest = run.paths.seed_root / "stale" / str(digest)  # a seed's own, under seeds/<k>/
    folders = [] if stage.keep_on_rerun else [run.paths.stage(stage.name)]
    if stage is CURATE and run.cfg.curate.dedup.index_dir is None:
        folders.append(run.paths.dedup_index)
    for folder in folders:
        if folder.exists():
            target = dest / folder.name
            if target.exists():
                shutil.rmtree(target)  # an earlier set-aside of the same config's output
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
            console.print(f"[dim]{stage.name}: output of the old config moved to {target}[/dim]")


def run_stage(run: Run, stage: Stage | str, force: bool = False) -> dict | None:
    """Run one stage (unless already done), recording it in the manifest. A stage finished
    under another config is refused (StaleStageError) unless forced, and so is any stage
    whose inputs come from a stale earlier stage."""
    stage = stage_by_name(stage) if isinstance(stage, str) else stage
    name = stage.name
    refuse_stale_inputs(run, stage)
    changed = stale_changes(run, stage)
    if run.is_done(name) and not force:
        if changed:
            raise StaleStageError(stale_message(
                run, {name: changed}, f"`{stage.cli} --force` reruns it"))
        console.print(f"[dim]{label(run, name)}: already done, skipped (resume)[/dim]")
        return run.summary(name)
    for before in stage.first:  # e.g. the teacher check before generating at scale
        if not run.is_done(before):  # done: `distill run` just ran it, or a resume says so
            run_stage(run, before)
    check_api_keys(run.cfg, [stage])
    if changed:
        set_aside(run, stage)
    console.rule(f"[bold]{label(run, name)}[/bold]: {stage.what}")
    with run.stage(name) as entry:
        summary = stage.run(run) or {}
        if stage.then is not None:
            summary = stage.then(run, summary)
        run.record_summary(name, summary)
    console.print(outcome_line(label(run, name), entry.get("seconds"), summary),
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
    those complete in the run dir (resume). A stage finished under another config is refused
    before anything runs; with `force` exactly those stages run again (and the ones not done),
    while stages still valid under this config are kept."""
    for name in only:
        stage_by_name(name)  # an unknown name fails before anything runs
    chosen = [s for s in STAGES if not only or s.name in only]
    upto = STAGES[:STAGES.index(chosen[-1]) + 1]  # what the chosen stages reuse
    stale_now = {label(r, s.name): c for r, s in plan(run, upto) if (c := stale_changes(r, s))}
    if stale_now and not force:
        raise StaleStageError(stale_message(
            run, stale_now, "`distill run --force` reruns exactly these stages (and what "
                            "follows them)"))
    steps = plan(run, chosen)
    todo = [s for r, s in steps if label(r, s.name) in stale_now or not r.is_done(s.name)]
    check_api_keys(run.cfg, todo)  # now, not after an hour of earlier stages
    try:
        for i, (r, stage) in enumerate(steps):
            # An earlier stage that ran again in this invocation makes this one stale now: it
            # reruns too (what was stale before the start needed --force, checked above).
            run_stage(r, stage,
                      force=label(r, stage.name) in stale_now or bool(rerun_since(r, stage)))
            if i + 1 < len(steps):
                teacher_pool.release_idle(steps[i + 1][1].uses_teacher(run.cfg))
    finally:
        teacher_pool.release_all()


# --- training seeds (eval.seeds) ---------------------------------------------------------------


def per_seed(stage: Stage) -> bool:
    """Whether the stage's output depends on the training seed (then it runs once per seed)."""
    return stage.name not in SHARED_STAGES


def plan(run: Run, stages: list[Stage] | tuple[Stage, ...]) -> list[tuple[Run, Stage]]:
    """(run seen from a seed, stage) in the order they run: shared stages once; the block of
    per-seed stages (sft, dpo, export, eval) seed by seed, so a seed is whole before the next
    starts and a crash resumes inside the seed it stopped in."""
    steps: list[tuple[Run, Stage]] = []
    block = [s for s in stages if per_seed(s)]
    for stage in stages:
        if not per_seed(stage):
            steps.append((run, stage))
        elif stage is block[0]:
            steps += [(run.for_seed(k), s) for k in range(run.cfg.eval.seeds) for s in block]
    return steps


def label(run: Run, name: str) -> str:
    """A stage's name as messages show it: seed k > 0 named (seed 0 reads as a plain run)."""
    return name if run.seed_index == 0 else f"{name} (seed {run.seed_index})"


def check_api_keys(cfg: RunConfig, stages: list[Stage]) -> None:
    """Every key variable the config names is set, before Ray or any engine starts. (The
    workers check again where they read it: a cluster's nodes have their own environment.)"""
    if any(s.uses_teacher(cfg) for s in stages) and (missing := missing_api_keys(cfg.teacher)):
        raise ConfigError("teacher.endpoint.api_key_env", missing)
