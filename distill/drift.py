"""`distill drift`: is live traffic still what the student was trained on?

Compares the prompts `distill serve` captured (serve.capture, `<run>/traffic/`) with every
prompt the student versions were trained on (the first run's and each refresh's), on input
lengths, word n-grams, near-duplicates of training data (the persistent MinHash dedup index)
and, with drift.teacher_sample > 0, how often the teacher agrees with the answers the
student gave on a sample of live inputs. Writes `<run>/drift/report.json`, `report.html` and
its plots, and lists every drift.* limit crossed as an alarm; the CLI exits 1 on an alarm so
a scheduler can act (retrain with `distill refresh --from-traffic`).
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path

from distill import drift_stats as S
from distill.core import versions as V
from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig
from distill.core.errors import DataError, StageNotReadyError
from distill.core.io import write_json_atomic, write_text_atomic
from distill.core.messages import plain_text
from distill.serving.capture import read_traffic


def training_texts(base: Path) -> list[str]:
    """Every prompt a version was trained on: the first run's and each refresh's new ones."""
    from distill.data import read_examples

    paths = [RunPaths(base).train_prompts] + [V.data_dir(d).train_prompts
                                              for _, d in V.versions(base)]
    return [e.text for p in paths if p.exists() for e in read_examples(p)]


def _plain(cfg: RunConfig, text: str) -> str:
    try:
        return plain_text(cfg.task, text)
    except DataError:  # a live input not shaped like the task's columns: its words as they are
        return text


def near_duplicates(cfg: RunConfig, base: Path, train: list[str], live: list[str]) -> dict:
    """Against the persistent index when it holds prompts (what curation kept), else against
    the training prompts themselves, with the same MinHash parameters."""
    from distill.curation.dedup import resolve_params, signatures_local
    from distill.curation.dedup_index import DiskIndex, IndexedDocs
    import numpy as np

    dcfg = cfg.curate.dedup
    params, _ = resolve_params(dcfg)
    root = Path(dcfg.index_dir or RunPaths(base).dedup_index)
    index = DiskIndex(root, params, ["prompt"])
    if (root / "meta.json").exists() and list(dcfg.fields) == ["prompt"]:
        index.check_meta()  # refuses an index built with other parameters, by name
        docs, against = index.load(), f"dedup index {root}"
    else:
        s = signatures_local(train, params)
        docs = IndexedDocs([str(i) for i in range(len(train))], [""] * len(train), s.bands,
                           s.shingle_values, s.shingle_offsets, np.zeros(len(train), np.int64))
        against = "training prompts"
    share = S.near_duplicate_share(live, docs, params, dcfg.threshold)
    return {"share": share, "threshold": dcfg.threshold, "against": against,
            "indexed": len(docs)}


def teacher_agreement(cfg: RunConfig, rows: list[dict]) -> dict:
    """The teacher answers a sample of live inputs (its own full prompt); each student answer
    is scored against it with the task's per-item scorer (label match, ROUGE-L, field F1)."""
    from distill import decision as D
    from distill.core.messages import teacher_messages
    from distill.curation.labels import canonical_json, normalize_label
    from distill.engines import chat, open_teacher

    sample = random.Random(cfg.seed).sample(rows, min(cfg.drift.teacher_sample, len(rows)))
    with open_teacher(cfg) as teacher:
        answers = chat(teacher, cfg.answer_tokens, cfg.seed)(
            [teacher_messages(cfg.task, r["prompt"]) for r in sample])
    parse = {"classification": lambda a: normalize_label(a, cfg.task.labels or []),
             "json": canonical_json}.get(cfg.task.type, lambda a: a)
    scored = D.ITEM_SCORES[cfg.task.type][1]([
        {"parsed": parse(r["answer"] or ""), "gold": parse(t), "answer": r["answer"] or ""}
        for r, t in zip(sample, answers)])
    return {"rate": sum(scored) / max(len(scored), 1), "sample": len(sample),
            "scorer": D.decision_metric(cfg.task.type)}


def alarms(cfg: RunConfig, m: dict) -> list[str]:
    d, out = cfg.drift, []
    checks = [("input lengths: KS", m["length"]["ks"], d.max_length_ks, "max_length_ks", ">"),
              ("n-grams: JS distance", m["ngrams"]["js_distance"], d.max_ngram_js,
               "max_ngram_js", ">"),
              ("out-of-vocabulary words", m["ngrams"]["oov_rate"], d.max_oov_rate,
               "max_oov_rate", ">"),
              ("near-duplicates of training data", m["near_duplicates"]["share"],
               d.min_near_duplicate_share, "min_near_duplicate_share", "<")]
    if m.get("teacher_agreement"):
        checks.append(("student-teacher agreement", m["teacher_agreement"]["rate"],
                       d.min_teacher_agreement, "min_teacher_agreement", "<"))
    for what, value, limit, key, side in checks:
        if limit is not None and (value > limit if side == ">" else value < limit):
            out.append(f"{what} {value:.3f} {side} drift.{key}={limit}")
    return out


def run_drift(cfg: RunConfig, run_dir: Path | None = None) -> dict:
    base = Path(run_dir or cfg.output_dir)
    paths = RunPaths(base)
    traffic = read_traffic(paths.traffic, cfg.drift.max_rows).to_pylist()
    if len(traffic) < cfg.drift.min_rows:
        raise StageNotReadyError(
            f"{paths.traffic}: {len(traffic)} captured request(s) < drift.min_rows="
            f"{cfg.drift.min_rows}; enable serve.capture and serve traffic first")
    train_raw = training_texts(base)
    if not train_raw:
        raise StageNotReadyError(f"{paths.train_prompts}: no training prompts to compare with "
                                 "(run `distill prompts` first)")
    train = [_plain(cfg, t) for t in train_raw]
    live = [_plain(cfg, r["prompt"] or "") for r in traffic]
    metrics = {"length": S.length_shift(train, live), "ngrams": S.ngram_shift(train, live),
               "near_duplicates": near_duplicates(cfg, base, train_raw,
                                                  [r["prompt"] or "" for r in traffic])}
    if cfg.drift.teacher_sample:
        metrics["teacher_agreement"] = teacher_agreement(cfg, traffic)
    found = alarms(cfg, metrics)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "run_dir": str(base), "rows": {"live": len(live), "train": len(train)},
              "window": [traffic[0]["ts"], traffic[-1]["ts"]],
              "versions": sorted({r["version"] for r in traffic}),
              "metrics": metrics, "limits": cfg.drift.model_dump(mode="json"),
              "alarms": found, "drifted": bool(found)}
    write_report(paths.drift_dir, result)
    return result


def write_report(folder: Path, result: dict) -> None:
    from distill.drift_report import html, plots

    folder.mkdir(parents=True, exist_ok=True)
    images = plots(folder, result)
    lean = {**result, "metrics": {**result["metrics"], "length": {
        k: v for k, v in result["metrics"]["length"].items() if k not in ("train", "live")}}}
    write_json_atomic(folder / "report.json", lean)
    write_text_atomic(folder / "report.html", html(lean, images))
    result["report"] = str(folder / "report.html")


def summary_lines(result: dict) -> list[str]:
    m = result["metrics"]
    lines = [f"drift over {result['rows']['live']} live inputs vs {result['rows']['train']} "
             f"training prompts:",
             f"  lengths KS {m['length']['ks']:.3f} (median {m['length']['train_median']:.0f} "
             f"-> {m['length']['live_median']:.0f} words)",
             f"  n-grams JS {m['ngrams']['js_distance']:.3f}, OOV {m['ngrams']['oov_rate']:.3f}",
             f"  near-duplicates of training data {m['near_duplicates']['share']:.3f}"]
    if "teacher_agreement" in m:
        lines.append(f"  teacher agreement {m['teacher_agreement']['rate']:.3f} "
                     f"({m['teacher_agreement']['sample']} sampled)")
    lines += [f"[bold red]alarm:[/bold red] {a}" for a in result["alarms"]] or \
        ["[green]no drift above the configured limits[/green]"]
    return lines + [f"report: {result['report']}"]
