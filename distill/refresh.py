"""`distill refresh`: one incremental cycle on a growing prompt source.

1. prompts   the source is read again; new prompts = all - the held-out set of the first run
             (fixed, never re-split) - every prompt an earlier version or the first run sent to
             the teacher. Fewer than refresh.min_new_prompts: no version is made, nothing runs.
2. generate  the teacher stage, on the new prompts only            (refresh/vN/data/)
3. curate    filters + dedup against the persistent index (everything kept before) + decontam
4. assemble  the version's training set: every version's curated data (retrain_from: scratch)
             or only this one's (previous: a new adapter on the promoted student's merged model)
5. train     pairs, sft, dpo, export, eval on the same held-out set  (refresh/vN/train/)
6. gate      the ship decision's rule (distill/decision.py) with the promoted student as the
             baseline: promote only if the new student is significantly better than it, shown
             within eval.non_inferiority_margin of the teacher, and within eval.max_forgetting

Each step is recorded in the manifest of its run dir, so a refresh that died half-way resumes
the same version when rerun (finished steps are skipped); promoted.json changes only in step 6.
The stages run through `stage_runner` (the CLI passes `distill.pipeline.run_stage`), so the cycle is
the same code whichever stages are plugged in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from distill import decision as D
from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig
from distill.core.errors import ConfigError, DistillError, StageNotReadyError
from distill.core.io import atomic_outputs, file_sha256, read_json, write_parquet_atomic
from distill.core.messages import text_id
from distill.core.rundir import Run
from distill.core import versions as V

console = Console()

StageRunner = Callable[[Run, str], "dict | None"]
DATA_STAGES = ("generate", "curate")
TRAIN_STAGES = ("pairs", "sft", "policy_pairs", "dpo", "opd", "export", "eval")


@dataclass
class RefreshResult:
    version: str | None
    status: str  # promoted | kept | nothing_new
    new_prompts: int
    reason: str
    candidate: float | None = None
    current: float | None = None
    metric: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- small helpers ---------------------------------------------------------------------------


def own_step(run: Run, name: str, func: Callable[[], dict]) -> dict:
    """A refresh step recorded like a stage: skipped when done (resume), summary kept."""
    if run.is_done(name):
        console.print(f"[dim]{name}: already done, skipped (resume)[/dim]")
        return run.manifest["summaries"].get(name, {})
    with run.stage(name):
        summary = func() or {}
        run.record_summary(name, summary)
    return summary


def index_dir(cfg: RunConfig) -> Path:
    return Path(cfg.curate.dedup.index_dir or RunPaths(cfg.output_dir).dedup_index)


def derived_config(cfg: RunConfig, output_dir: Path, **updates: Any) -> RunConfig:
    """The config of a version's run dir: same run, its own folder, the shared dedup index."""
    data = cfg.resolved()
    data["output_dir"] = str(output_dir)
    data["curate"]["dedup"]["index_dir"] = str(index_dir(cfg))
    for dotted, value in updates.items():
        target = data
        *parents, last = dotted.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    return RunConfig.model_validate(data)


def _read_ids(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["example_id"]).column("example_id").to_pylist())


# --- 1. prompts ------------------------------------------------------------------------------


def seen_prompt_ids(base: Path, exclude: Path | None = None) -> set[str]:
    """Every prompt the first run or an earlier version sent to the teacher."""
    seen = _read_ids(RunPaths(base).train_prompts)
    for _, vdir in V.versions(base):
        if exclude is None or vdir.resolve() != exclude.resolve():
            seen |= _read_ids(V.data_dir(vdir).train_prompts)
    return seen


def select_new_prompts(cfg: RunConfig, exclude: Path | None = None,
                       from_traffic: bool = False) -> list:
    """New prompts in source order: never sent to the teacher, not in the held-out set.
    `from_traffic`: the prompts `distill serve` captured instead of the prompt source."""
    from distill.data import collect, load_rows

    base = Path(cfg.output_dir)
    if from_traffic:
        return _cap(cfg, traffic_prompts(base, exclude))
    examples, _bad, _dups = collect(load_rows(cfg), cfg.prompts.on_bad_row)
    skip = _read_ids(RunPaths(base).test_prompts) | seen_prompt_ids(base, exclude)
    return _cap(cfg, [e for e in examples if e.example_id not in skip])


def _cap(cfg: RunConfig, new: list) -> list:
    if cfg.refresh.max_new_prompts is not None:
        new = new[: cfg.refresh.max_new_prompts]
    return new


def _read_text_ids(path: Path) -> set[str]:
    from distill.data import read_examples

    return {text_id(e.text) for e in read_examples(path)} if path.exists() else set()


def traffic_prompts(base: Path, exclude: Path | None = None) -> list:
    """Captured prompts (`<run>/traffic/`, oldest first) as examples: one per distinct text
    (whitespace-normalised), none that is in the held-out set or that the first run or a
    refresh already sent to the teacher, by id or by text. Near-duplicates of either are
    then dropped by curate, as for any refresh (dedup index, decontamination)."""
    from distill.data import Example
    from distill.serving.capture import read_traffic

    paths = [RunPaths(base).test_prompts, RunPaths(base).train_prompts] + [
        V.data_dir(d).train_prompts for _, d in V.versions(base)
        if exclude is None or d.resolve() != exclude.resolve()]
    skip = _read_ids(RunPaths(base).test_prompts) | seen_prompt_ids(base, exclude)
    for path in paths:
        skip |= _read_text_ids(path)
    rows = read_traffic(RunPaths(base).traffic).to_pylist()
    new = []
    for i, row in enumerate(rows):
        text = (row["prompt"] or "").strip()
        key = text_id(text)
        if text and key not in skip:
            skip.add(key)
            new.append(Example(key, text, None, f"traffic:{row['request_id']}", i))
    return new


def write_version_prompts(run: Run, cfg: RunConfig, new: list | None,
                          from_traffic: bool = False) -> dict:
    from distill.data import write_examples

    base = Path(cfg.output_dir)
    if new is None:  # resuming a version whose prompts step never finished
        new = select_new_prompts(cfg, exclude=run.dir.parent, from_traffic=from_traffic)
    out = run.paths
    copy_held_out(base, out)
    write_examples(out.train_prompts, new)
    ids = sorted(e.example_id for e in new)
    return {"new_prompts": len(new), "new_prompt_ids_sha256": _ids_sha(ids),
            "test_sha256": file_sha256(out.test_prompts),
            "sources": ["traffic"] if from_traffic else sorted({e.source for e in new})}


def copy_held_out(base: Path, dest: RunPaths) -> None:
    """Every version is evaluated on the first run's held-out set, byte for byte."""
    dest.test_prompts.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RunPaths(base).test_prompts, dest.test_prompts)


def _ids_sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


# --- 4. assemble -----------------------------------------------------------------------------


def data_versions(base: Path, upto: Path, retrain_from: str) -> list[tuple[str, Path]]:
    """(version, run dir holding prompts/generate/curate) whose data trains this version."""
    this = (upto.name, V.data_dir(upto).root)
    if retrain_from == "previous":
        return [this]
    found = [(V.BASE_VERSION, base)]
    for _, vdir in V.versions(base):
        if vdir.resolve() == upto.resolve():
            break
        if V.data_dir(vdir).curated.exists():
            found.append((vdir.name, V.data_dir(vdir).root))
    return found + [this]


def assemble(train_run: Run, base: Path, sources: list[tuple[str, Path]]) -> dict:
    """Write the training run's inputs: held-out set, curated union, the teacher rows behind it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = train_run.paths
    copy_held_out(base, out)
    curated, prompt_tables, per_version = [], [], {}
    for name, d in sources:
        path = RunPaths(d).curated
        if not path.exists():
            raise StageNotReadyError(f"{path} missing: version {name}'s curation did not finish")
        table = pq.read_table(path)
        curated.append(table)
        prompt_tables.append(pq.read_table(RunPaths(d).train_prompts))
        per_version[name] = table.num_rows
    union = pa.concat_tables(curated, promote_options="default")
    keep = pa.array(sorted(set(union.column("example_id").to_pylist())))
    shards = out.generate_shards
    shards.mkdir(parents=True, exist_ok=True)
    for old in shards.glob("*.parquet"):
        old.unlink()  # a resumed assemble rewrites the whole set
    for name, d in sources:
        rows = [pq.read_table(p) for p in sorted(RunPaths(d).generate_shards.glob("*.parquet"))]
        if rows:
            t = pa.concat_tables(rows, promote_options="default")
            write_parquet_atomic(shards / f"{name}.parquet",
                                 t.filter(pc.is_in(t.column("example_id"), value_set=keep)))
    with atomic_outputs(out.curated, out.train_prompts) as (tr, pr):
        pq.write_table(union, tr)
        pq.write_table(pa.concat_tables(prompt_tables, promote_options="default"), pr)
    return {"versions": per_version, "examples": union.num_rows,
            "dataset_sha256": file_sha256(out.curated), "test_sha256": file_sha256(out.test_prompts)}


# --- 6. gate ---------------------------------------------------------------------------------


def _scores(cfg: RunConfig, record: dict) -> dict[str, dict[str, float]]:
    """Per-item scores of a version's eval (every model it evaluated), or a named error."""
    path = RunPaths(record["run_dir"]).eval_predictions
    found = D.read_item_scores(path, cfg.task.type)
    if not found or not found.get(record["student"]):
        raise StageNotReadyError(f"{path}: no per-item predictions of {record['student']} "
                                 f"(version {record['version']}); run `distill eval` there")
    return found


def gate(cfg: RunConfig, candidate: dict | None, current: dict | None) -> tuple[bool, str, dict]:
    """The ship decision's rule, paired on the fixed held-out set, with the promoted student as
    the baseline (no promoted student yet: the prompted base student). The teacher and the
    forgetting check come from the candidate's own eval."""
    if candidate is None:
        return False, "the new student has no held-out metric (eval did not produce one)", {}
    if current is not None and candidate["metric"] != current["metric"]:
        raise DistillError(f"cannot compare {candidate['metric']} with the promoted student's "
                           f"{current['metric']}: the task's main metric changed")
    mine = _scores(cfg, candidate)
    if current is None:
        base_items, base_name = mine.get("student_base") or {}, D.NAMES["student_base"]
    else:
        base_items = _scores(cfg, current)[current["student"]]
        base_name = f"the promoted student {current['version']}"
    if not base_items or not mine.get("teacher"):
        raise StageNotReadyError(f"{candidate['run_dir']}: eval has no per-item predictions of "
                                 "the teacher or the base student; run `distill eval` there")
    rule = D.Rule.from_config(cfg.eval)
    evals = read_json(RunPaths(candidate["run_dir"]).eval_results) or {}
    lost = D.forgetting(evals, candidate["student"], "student_base", rule, cfg.seed)
    ok, reason, tests = D.gate(mine[candidate["student"]], base_items, mine["teacher"], lost,
                               rule, D.decision_metric(cfg.task.type),
                               f"{candidate['version']}'s student", base_name, cfg.seed)
    if not ok and current is not None:
        reason = f"kept {current['version']}: {reason}"
    return ok, reason, tests


# --- the cycle -------------------------------------------------------------------------------


def unfinished_version(base: Path) -> Path | None:
    """The newest version if it never reached the gate (a refresh that died half-way)."""
    found = V.versions(base)
    if found and V.lineage(found[-1][1]).get("status") == "running":
        return found[-1][1]
    return None


def train_config(cfg: RunConfig, vdir: Path, parent: dict | None) -> RunConfig:
    if cfg.refresh.retrain_from == "scratch":
        return derived_config(cfg, V.train_root(vdir))
    merged = (parent or {}).get("merged_model")
    if not merged or not Path(merged).is_dir():
        where = parent["run_dir"] if parent else cfg.output_dir
        raise ConfigError("refresh.retrain_from", [
            "previous: the promoted student has no merged model to continue from; set "
            f"export.merged: true and run `distill export CONFIG --force` on {where}, or use "
            "refresh.retrain_from: scratch"])
    # The previous student, merged, is the new base; the version writes its own merged model.
    return derived_config(cfg, V.train_root(vdir), student__model=str(merged),
                          export__merged=True)


def refresh(cfg: RunConfig, stage_runner: StageRunner, from_traffic: bool = False) -> RefreshResult:
    """One refresh cycle (or the resumption of an unfinished one). See the module docstring.

    `stage_runner(run, name)` runs one stage of the pipeline (the CLI passes
    `distill.pipeline.run_stage`), so this module needs no stage table of its own.
    """
    base = Path(cfg.output_dir)
    if not RunPaths(base).test_prompts.exists():
        raise StageNotReadyError(f"{base}: no first run to refresh (its held-out set "
                                 "prompts/test.parquet is fixed by `distill run CONFIG` first)")
    vdir, new = unfinished_version(base), None
    if vdir is None:
        new = select_new_prompts(cfg, from_traffic=from_traffic)
        if len(new) < cfg.refresh.min_new_prompts:
            reason = f"{len(new)} new prompt(s) < refresh.min_new_prompts={cfg.refresh.min_new_prompts}"
            console.print(f"[yellow]nothing to refresh: {reason}[/yellow]")
            return RefreshResult(None, "nothing_new", len(new), reason)
    if vdir is None:
        parent = V.current_promoted(base)
        n = V.versions(base)[-1][0] + 1 if V.versions(base) else 1
        vdir = V.refresh_root(base) / V.version_name(n)
        vdir.mkdir(parents=True)
        V.save_lineage(vdir, {
            "version": vdir.name, "status": "running", "created": V.now(),
            "parent": parent["version"] if parent else None,
            "prompt_source": "traffic" if from_traffic else "prompts",
            "retrain_from": cfg.refresh.retrain_from, "config_hash": cfg.config_hash()})
    console.rule(f"[bold]refresh {vdir.name}[/bold]")
    record = V.lineage(vdir)
    try:
        return _cycle(cfg, base, vdir, record, new, stage_runner)
    except BaseException as exc:
        record["last_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        V.save_lineage(vdir, record)
        raise


def _cycle(cfg, base, vdir, record, new, stage_runner) -> RefreshResult:
    data_run = Run(derived_config(cfg, V.data_root(vdir)))
    # A resumed version keeps the prompt source it was started with.
    traffic = record.get("prompt_source") == "traffic"
    prompts = own_step(data_run, "prompts",
                       lambda: write_version_prompts(data_run, cfg, new, traffic))
    record.update(new_prompts=prompts["new_prompts"],
                  new_prompt_ids_sha256=prompts["new_prompt_ids_sha256"],
                  test_sha256=prompts["test_sha256"], sources=prompts["sources"])
    V.save_lineage(vdir, record)
    for name in DATA_STAGES:
        stage_runner(data_run, name)

    parent = V.student_record(base, record["parent"]) if record.get("parent") else None
    train_run = Run(train_config(cfg, vdir, parent))
    sources = data_versions(base, vdir, cfg.refresh.retrain_from)
    dataset = own_step(train_run, "assemble", lambda: assemble(train_run, base, sources))
    record["dataset"] = dataset
    V.save_lineage(vdir, record)
    for name in TRAIN_STAGES:
        stage_runner(train_run, name)

    candidate = V.student_record(base, vdir.name)
    current = V.read_promoted(base)
    ok, reason, tests = gate(cfg, candidate, current)
    if ok:
        V.promote(base, candidate, reason)
    record.update(status="promoted" if ok else "kept", finished=V.now(), candidate=candidate,
                  gate={"promoted": ok, "reason": reason, "rule": D.Rule.from_config(
                      cfg.eval).to_dict(), "tests": tests, "against": current})
    record.pop("last_error", None)
    V.save_lineage(vdir, record)
    style = "green" if ok else "yellow"
    console.print(f"[{style}]{vdir.name}: {'promoted' if ok else 'not promoted'}: {reason}[/{style}]")
    return RefreshResult(vdir.name, record["status"], record["new_prompts"], reason,
                         candidate["value"] if candidate else None,
                         current["value"] if current else None,
                         (candidate or current or {}).get("metric"))


def version_table(base: Path) -> list[dict[str, Any]]:
    """One row per version for `distill refresh --list`."""
    promoted = (V.read_promoted(base) or {}).get("version")
    rows = []
    first = V.student_record(base, V.BASE_VERSION)
    if first or RunPaths(base).manifest.exists():
        rows.append({"version": V.BASE_VERSION, "status": "first run", "new_prompts": None,
                     "value": (first or {}).get("value"), "promoted": promoted == V.BASE_VERSION})
    for _, vdir in V.versions(base):
        rec = V.lineage(vdir)
        rows.append({"version": vdir.name, "status": rec.get("status"),
                     "new_prompts": rec.get("new_prompts"),
                     "value": (rec.get("candidate") or {}).get("value"),
                     "promoted": promoted == vdir.name})
    return rows


def dumps(result: RefreshResult) -> str:
    return json.dumps(result.to_dict(), default=str)
