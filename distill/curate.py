"""The curate stage: teacher completions -> the SFT training set, with every drop explained.

Order: row filters -> JSON repair (json tasks) -> target choice (per example: vote, medoid,
judge or rule) -> label collapse watch -> exact dedup -> near dedup -> decontam -> gold (where
prompts carry gold).
Outputs (all written tmp-then-rename, nothing partial on failure):
    curate/train.parquet    example_id, text, label, target, row_ids, agreement, target_by,
                            target_score
    curate/rejects.parquet  row_id, example_id, filter, detail   (every input row not in a
                            train row's row_ids is here, with the filter that dropped it)
The kept examples are added to the persistent dedup index, so a later refresh pointing at the
same `curate.dedup.index_dir` drops what duplicates them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from distill.core.errors import DataError, StageNotReadyError
from distill.core.io import atomic_outputs
from distill.core.ray_init import ensure_ray
from distill.curation.filters import (Example, Rejected, apply_row_filters, build_row_filters,
                                     repair_json_rows, target_mode, vote_all)
from distill.curation.scorers import Scorer, open_judge_scorer, rule
from distill.core.rundir import Run
from distill.curation.collapse import check_labels, enforce, label_counts
from distill.curation.labels import canonical_json

console = Console()

REQUIRED_COLUMNS = {
    "row_id": "string", "example_id": "string", "text": "string", "completion": "string",
    "finish_reason": "string", "completion_tokens": "integer",
}
OPTIONAL_COLUMNS = ("label", "sample_index", "prompt_id")


# --- input -----------------------------------------------------------------------------------


def shard_paths(run: Run) -> list[Path]:
    shards = sorted(run.paths.generate_shards.glob("*.parquet"))
    if not shards:
        raise StageNotReadyError(
            f"no teacher completions in {run.paths.generate_shards}: run `distill generate` first")
    return shards


def _check_type(field, want: str) -> bool:
    import pyarrow.types as pt

    if want == "string":
        return pt.is_string(field.type) or pt.is_large_string(field.type) or pt.is_null(field.type)
    return pt.is_integer(field.type)


def read_shard(path: Path) -> list[dict[str, Any]]:
    """Rows of one generate shard, or a DataError naming the file, column and row."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for torn/foreign files
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(has {', '.join(table.column_names)})")
    for col, want in REQUIRED_COLUMNS.items():
        if not _check_type(table.schema.field(col), want):
            raise DataError(f"{path}: column {col} is {table.schema.field(col).type}, expected {want}")
    columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.column_names]
    rows = table.select(columns).to_pylist()
    for i, row in enumerate(rows):
        for col in ("row_id", "example_id", "text", "completion"):
            if row[col] is None:
                raise DataError(f"{path}: row {i}: column {col} is null")
        row.setdefault("label", None)
        row["completion_tokens"] = row["completion_tokens"] or 0
    return rows


def read_generate_rows(run: Run) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in shard_paths(run):
        for row in read_shard(path):
            if row["row_id"] in seen:
                raise DataError(f"{path}: row_id {row['row_id']} also in {seen[row['row_id']]}")
            seen[row["row_id"]] = path
            rows.append(row)
    return rows


def read_test_texts(run: Run) -> list[str]:
    import pyarrow.parquet as pq

    path = run.paths.test_prompts
    if not path.exists():
        raise StageNotReadyError(f"decontamination needs the held-out set {path}: "
                                 "run the prompts stage first (or set curate.decontam.enabled: false)")
    try:
        return [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    except Exception as exc:
        raise DataError(f"{path}: cannot read column text ({exc})") from None


# --- output ----------------------------------------------------------------------------------


TRAIN_SCHEMA_FIELDS = ("example_id", "text", "label", "target", "row_ids", "agreement",
                       "target_by", "target_score")


def _write_train(examples: list[Example], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("example_id", pa.string()), ("text", pa.string()), ("label", pa.string()),
                        ("target", pa.string()), ("row_ids", pa.list_(pa.string())),
                        ("agreement", pa.float64()), ("target_by", pa.string()),
                        ("target_score", pa.float64())])
    pq.write_table(pa.Table.from_pylist([e.as_row() for e in examples], schema=schema), path)


def _write_rejects(rejects: list[Rejected], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in ("row_id", "example_id", "filter", "detail")])
    pq.write_table(pa.Table.from_pylist([r.as_row() for r in rejects], schema=schema), path)


# --- the stage -------------------------------------------------------------------------------


def _dedup_text(ex: Example, fields: list[str]) -> str:
    return "\n".join(ex.text if f == "prompt" else ex.target for f in fields)


def _drop_examples(examples: list[Example], drops: dict[int, tuple[str, str]]) -> tuple[
        list[Example], list[Rejected]]:
    """Remove examples by index; each of their rows becomes a reject (filter, detail)."""
    kept, rejected = [], []
    for i, ex in enumerate(examples):
        if i in drops:
            name, detail = drops[i]
            rejected += [Rejected(r, ex.example_id, name, detail) for r in ex.row_ids]
        else:
            kept.append(ex)
    return kept, rejected


def _segment_id(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for rid in sorted(r["row_id"] for r in rows):
        h.update(rid.encode() + b"\0")
    return h.hexdigest()[:16]


class Funnel:
    """Counts per step, for the manifest and the terminal table."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, step: str, unit: str, n_in: int, dropped: int, **extra: Any) -> None:
        self.steps.append({"step": step, "unit": unit, "in": n_in, "dropped": dropped,
                           "out": n_in - dropped, **extra})

    def table(self, title: str) -> Table:
        t = Table(title=title)
        for col, justify in (("step", "left"), ("unit", "left"), ("in", "right"),
                             ("dropped", "right"), ("out", "right"), ("note", "left")):
            t.add_column(col, justify=justify)
        for s in self.steps:
            t.add_row(s["step"], s["unit"], str(s["in"]), str(s["dropped"]), str(s["out"]),
                      s.get("note", ""))
        return t


def run_curate(run: Run, judge: Scorer | None = None) -> dict[str, Any]:
    """`judge`: a callable (text, completion) -> score that replaces the `judge:` engine for
    `curate.target: judge` (library use and tests)."""
    cfg = run.cfg
    rows = read_generate_rows(run)
    test_texts = read_test_texts(run) if cfg.curate.decontam.enabled else []
    funnel = Funnel()
    rejects: list[Rejected] = []

    # 1. row filters, each counted
    kept_rows = rows
    filter_counts: dict[str, int] = {}
    for f in build_row_filters(cfg.curate.filters, cfg.task):
        n_in = len(kept_rows)
        kept_rows, rej, counts = apply_row_filters(kept_rows, [f])
        rejects += rej
        filter_counts.update(counts)
        funnel.add(f"filter: {f.name}", "rows", n_in, counts[f.name])

    # 1b. JSON answers repaired (stored canonical) or rejected with the reason
    json_summary = None
    if cfg.task.type == "json":
        kept_rows, json_summary = _json_step(cfg, kept_rows, rejects, funnel)

    # 2. the target of each example from its n samples: vote, medoid, judge or rule
    n_by_example = Counter(r["example_id"] for r in rows)
    mode = target_mode(cfg.task, cfg.curate.target)
    scores, judge_summary = _target_scores(run, mode, kept_rows, judge)
    examples, rej = vote_all(kept_rows, n_by_example, cfg.task, cfg.curate.filters.min_agreement,
                             mode, scores)
    rejects += rej
    vote_counts = Counter(r.filter for r in rej)
    n_examples_in = len({r["example_id"] for r in kept_rows})
    n_after_vote = len(examples)
    funnel.add("vote: agreement" if mode == "vote" else f"target: {mode}", "examples",
               n_examples_in, n_examples_in - len(examples),
               note=", ".join(f"{k} rows {v}" for k, v in sorted(vote_counts.items())))
    target_summary = {"mode": mode, "configured": cfg.curate.target,
                      "mean_score": _mean([e.target_score for e in examples]),
                      "rule": cfg.curate.target_rule if mode == "rule" else None,
                      "judge": judge_summary}

    # 3. the teacher's labels against the gold (or the prior): collapse
    labels_summary = _watch_labels(cfg, examples)

    # 4-5. exact and near dedup, against this run and the persistent index
    dedup_summary, examples, index_update = _dedup(run, examples, rows, rejects, funnel)

    # 6. decontamination against the held-out test set
    decontam_dropped = 0
    if cfg.curate.decontam.enabled:
        fields = [[e.text if f == "prompt" else e.target for e in examples]
                  for f in cfg.curate.decontam.fields]
        hits = {i: ("decontam", d) for i, d in
                _contaminated(fields, test_texts, cfg.curate.decontam).items()}
        n_in = len(examples)
        examples, rej = _drop_examples(examples, hits)
        rejects += rej
        decontam_dropped = len(hits)
        funnel.add("decontamination", "examples", n_in, decontam_dropped,
                   note=f"{cfg.curate.decontam.method} vs {len(test_texts)} test rows")

    # 7. answers the gold contradicts; last, so that what pairs reuse of them (the gold over
    # the teacher's mistake) has passed dedup and decontamination too
    examples, gold_summary = _gold_step(cfg, examples, rejects, funnel)

    with atomic_outputs(run.paths.rejects, run.paths.curated) as (rej_tmp, tr_tmp):
        _write_rejects(rejects, rej_tmp)
        _write_train(examples, tr_tmp)
    index_path = index_update.commit(examples)  # after the outputs: see distill/dedup_index.py

    summary = {
        "rows_in": len(rows),
        "examples_in": len(n_by_example),
        "filters": filter_counts,
        "rows_after_filters": len(kept_rows),
        "json": json_summary,
        "vote": {"examples_in": n_examples_in, "examples_kept": n_after_vote,
                 "rows_dropped": dict(vote_counts)},
        "target": {**target_summary, "examples_out": len(examples),
                   "by": dict(Counter(e.target_by for e in examples))},
        "gold": gold_summary,
        "labels": labels_summary,
        "dedup": dedup_summary,
        "decontam": {"enabled": cfg.curate.decontam.enabled, "method": cfg.curate.decontam.method,
                     "dropped": decontam_dropped, "test_rows": len(test_texts)},
        "examples_out": len(examples),
        "rejected_rows": len(rejects),
        "mean_agreement": _mean([e.agreement for e in examples]),
        "index": str(index_path) if index_path else None,
        "funnel": funnel.steps,
    }
    if labels_summary:
        labels_summary["kept"] = label_counts([e.target for e in examples], cfg.task.labels or [])
    console.print(funnel.table(f"curation funnel: {len(rows)} rows -> {len(examples)} examples"))
    return summary


def _json_step(cfg, rows: list[dict[str, Any]], rejects: list[Rejected],
               funnel: Funnel) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Repair each JSON sample where safe, or reject it with the reason (unless
    `curate.filters.require_valid_answer: false`); two funnel rows, repaired and rejected."""
    n_in = len(rows)
    kept, rej, stats = repair_json_rows(rows, cfg.task, cfg.curate.filters.require_valid_answer)
    rejects += rej
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.repaired.items()))
    funnel.add("json repaired", "rows", n_in, 0,
               note=f"{stats.rows_repaired} repaired: {kinds}" if stats.rows_repaired else "")
    funnel.add("json rejected", "rows", n_in, len(rej),
               note=", ".join(f"{k} {v}" for k, v in sorted(stats.rejected.items())))
    return kept, {"rows_in": n_in, "repaired": stats.rows_repaired,
                  "repairs": dict(stats.repaired), "rejected": len(rej),
                  "rejected_by": dict(stats.rejected)}


def _target_scores(run: Run, mode: str, rows: list[dict[str, Any]], judge: Scorer | None
                   ) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """Every sample's score by row_id for `curate.target: judge|rule` (None for vote/medoid).

    The judge engine is opened once for the whole run (only if a score is not in the run's
    cache, which `distill pairs` reuses) and closed here; it scores the samples in one batch."""
    cfg = run.cfg
    if mode == "rule":
        score = rule(cfg.curate.target_rule, cfg.task, "curate.target_rule")
        return {r["row_id"]: score(r, r["completion"].strip()) for r in rows}, None
    if mode != "judge":
        return None, None
    with ExitStack() as engines:
        scorer = open_judge_scorer(cfg, engines, run.paths.judge_scores, judge)
        values = scorer.score_examples([(r, r["completion"].strip()) for r in rows])
    console.print(f"judge: {scorer.asked} samples scored, {scorer.reused} from the cache")
    return ({r["row_id"]: v for r, v in zip(rows, values)},
            {"asked": scorer.asked, "reused": scorer.reused,
             "engine_opened": scorer.judge is not None,
             "engine": (cfg.judge.engine or cfg.teacher).model})


def _watch_labels(cfg, examples: list[Example]) -> dict[str, Any] | None:
    """The voted labels' distribution next to the gold (or the prior); a collapse warns, or
    stops the stage above `check.collapse_stop` (unless `check.on_fail: warn`)."""
    if cfg.task.type != "classification" or not examples:
        return None
    gold = [e.label for e in examples]
    found = check_labels([e.target for e in examples], gold if None not in gold else None,
                         cfg.task.labels or [], cfg.check.collapse_warn, cfg.check.collapse_stop)
    out = {"check": found.to_dict(), "teacher": found.answers,
           "gold": label_counts(gold, cfg.task.labels or []) if None not in gold else None}
    message = enforce(found, cfg.check, "after the vote",
                      "Training on these targets would teach one label. Check the teacher "
                      "(`distill check`), or go on anyway with --set check.on_fail=warn")
    if message:
        out["warning"] = message
        console.print(f"[yellow]warning: {message}[/yellow]")
    return out


def _agrees(task_type: str, target: str, gold: str) -> bool:
    if task_type == "json":
        return canonical_json(target) == (canonical_json(gold) or gold)
    return target == gold


def _gold_step(cfg, examples: list[Example], rejects: list[Rejected],
               funnel: Funnel) -> tuple[list[Example], dict[str, Any] | None]:
    """Where prompts carry gold (classification, JSON): answers that disagree with it are
    rejected (`curate.gold: filter`) or kept and counted (`keep`)."""
    if cfg.task.type == "free_text":
        return examples, None  # a reference text is one good answer, not the only one
    checked = [i for i, e in enumerate(examples) if e.label is not None]
    if not checked:
        return examples, None
    wrong = {i: ("gold", f"teacher answered {examples[i].target!r}, gold is {examples[i].label!r}")
             for i in checked if not _agrees(cfg.task.type, examples[i].target, examples[i].label)}
    agree = len(checked) - len(wrong)
    summary = {"mode": cfg.curate.gold, "checked": len(checked), "agree": agree,
               "disagree": len(wrong), "agreement": round(agree / len(checked), 4)}
    note = f"teacher = gold on {agree}/{len(checked)} ({agree / len(checked):.0%})"
    n_in = len(examples)
    if cfg.curate.gold == "filter":
        examples, rej = _drop_examples(examples, wrong)
        rejects += rej
        funnel.add("gold: teacher vs gold", "examples", n_in, len(wrong), note=note)
    else:
        funnel.add("gold: teacher vs gold", "examples", n_in, 0,
                   note=f"{note}; {len(wrong)} disagreeing kept (curate.gold=keep)")
    return examples, summary


def _contaminated(fields, test_texts, dcfg):
    from distill.curation.decontam import contaminated

    return contaminated(fields, test_texts, dcfg)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _dedup(run: Run, examples: list[Example], rows, rejects: list[Rejected], funnel: Funnel):
    """Exact then near dedup. Returns (summary, kept examples, the pending index update)."""
    from distill.curation import dedup as dd
    from distill.curation.dedup_index import IndexedDocs

    cfg = run.cfg.curate.dedup
    summary: dict[str, Any] = {"exact_dropped": 0, "near_dropped": 0, "dropped_total": 0}
    if not (cfg.exact or cfg.near):
        return summary, examples, IndexUpdate()
    index = dd.open_index(cfg, run.paths.dedup_index)
    segment = _segment_id(rows)
    # More than one batch runs on Ray Data end to end (the index too); one batch gains nothing
    on_ray = cfg.near and cfg.use_ray and cfg.verify == "exact" and len(examples) > cfg.batch_size
    old = None if on_ray else index.load(exclude=segment)
    old_keys, old_exact = index.load_keys(exclude=segment) if on_ray else (old.keys, old.exact)
    params, cand = dd.resolve_params(cfg)
    summary.update(index_dir=str(index.root), indexed_before=len(old_keys), segment=segment)

    if cfg.exact:
        texts = [_dedup_text(e, cfg.fields) for e in examples]
        chars = np.array([len(t) for t in texts], dtype=np.int64)
        indexed = dict(zip(old_exact, old_keys))
        _, dropped = dd.exact_dedup(texts, [e.example_id for e in examples], chars, cfg.keep,
                                    indexed)
        n_in = len(examples)
        examples, rej = _drop_examples(
            examples, {d.index: ("exact_dup", f"{d.detail}: kept {d.kept_key}") for d in dropped})
        rejects += rej
        against = sum("indexed" in d.detail for d in dropped)
        summary.update(exact_dropped=len(dropped), exact_against_index=against)
        funnel.add("exact dedup", "examples", n_in, len(dropped),
                   note=f"{against} against the index" if against else "")

    if not cfg.near:  # the index holds signatures, so it is only kept up with near-dedup on
        summary["dropped_total"] = summary["exact_dropped"]
        return summary, examples, IndexUpdate()
    texts = [_dedup_text(e, cfg.fields) for e in examples]
    chars = np.array([len(t) for t in texts], dtype=np.int64)
    keys = [e.example_id for e in examples]
    if on_ray:
        from distill.curation.dedup_ray import near_dedup_texts

        ensure_ray(run.cfg)
        result, update = near_dedup_texts(texts, keys, old_keys, index, segment, params,
                                          cfg.threshold, cfg.keep, cfg.batch_size)
    else:
        sigs = dd.signatures_local(texts, params)
        new = IndexedDocs(keys, [dd.exact_key(t) for t in texts], sigs.bands,
                          sigs.shingle_values, sigs.shingle_offsets, chars)
        result = dd.near_dedup(new, sigs.sig, cfg.threshold, cfg.keep, old, cfg.verify)
        update = IndexUpdate(index, segment, new)
    drops = {d.index: ("near_dup", f"{d.detail}; kept {d.kept_key}") for d in result.dropped}
    n_in = len(examples)
    examples, rej = _drop_examples(examples, drops)
    rejects += rej
    summary.update(near_dropped=len(drops), near_against_index=result.against_index,
                   clusters=result.clusters, candidate_pairs=result.candidate_pairs,
                   verified_pairs=result.verified_pairs, bands=params.bands,
                   rows=params.rows, candidate_threshold=round(cand, 4),
                   threshold=cfg.threshold)
    funnel.add("near dedup", "examples", n_in, len(drops),
               note=f"{result.clusters} clusters, {result.candidate_pairs} candidates, "
                    f"{result.verified_pairs} >= J {cfg.threshold}")
    summary["dropped_total"] = summary["exact_dropped"] + summary["near_dropped"]
    return summary, examples, update


class IndexUpdate:
    """The kept examples' signatures, added to the persistent index once outputs are written."""

    def __init__(self, index=None, segment: str = "", docs=None):
        self.index, self.segment, self.docs = index, segment, docs

    def commit(self, final: list[Example]) -> Path | None:
        if self.index is None:
            return None
        ids = {e.example_id for e in final}
        keep = np.array([i for i, k in enumerate(self.docs.keys) if k in ids], dtype=np.int64)
        return self.index.write(self.segment, self.docs.take(keep))
