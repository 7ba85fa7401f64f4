"""Refresh versions and the promoted student, under the run dir.

    <output_dir>/                   the first run (`distill run`): version v0000
    <output_dir>/refresh/v0001/     one refresh cycle: refresh.json (lineage, gate), data/, train/
    <output_dir>/promoted.json      the student being served: version, adapter, base model, metric
    <output_dir>/promotions.jsonl   every promotion and rollback, appended (the audit trail)

promoted.json is replaced atomically, so a reader sees the old or the new pointer, never half;
nothing is deleted on promotion, so every earlier version stays available for a rollback.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.core.artifacts import RunPaths
from distill.core.errors import DistillError
from distill.core.io import read_json, write_json_atomic

VERSION_RE = re.compile(r"^v(\d{4,})$")
BASE_VERSION = "v0000"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version_name(n: int) -> str:
    return f"v{n:04d}"


def refresh_root(base: Path) -> Path:
    return Path(base) / "refresh"


def versions(base: Path) -> list[tuple[int, Path]]:
    """Refresh versions on disk, oldest first (v0000, the first run, is not listed)."""
    root = refresh_root(base)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := VERSION_RE.match(p.name))]
    return sorted(found)


def lineage(version_dir: Path) -> dict[str, Any]:
    return read_json(version_dir / "refresh.json") or {}


def save_lineage(version_dir: Path, record: dict[str, Any]) -> None:
    record["updated"] = now()
    write_json_atomic(version_dir / "refresh.json", record)


def version_dir(base: Path, version: str) -> Path:
    if version == BASE_VERSION:
        return Path(base)
    if not VERSION_RE.match(version):
        raise DistillError(f"{version!r} is not a version name (v0000 is the first run, then "
                           "v0001, v0002, ...)")
    return refresh_root(base) / version


def model_dir(base: Path, version: str) -> Path:
    """The run dir holding a version's trained student (the first run's own dir for v0000)."""
    d = version_dir(base, version)
    return d if version == BASE_VERSION else train_root(d)


# --- the promoted student --------------------------------------------------------------------


def promoted_path(base: Path) -> Path:
    return Path(base) / "promoted.json"


def read_promoted(base: Path) -> dict[str, Any] | None:
    return read_json(promoted_path(base))


def promote(base: Path, record: dict[str, Any], reason: str) -> dict[str, Any]:
    """Point promoted.json at `record` (atomically) and append it to promotions.jsonl."""
    previous = read_promoted(base)
    record = {**record, "promoted_at": now(), "reason": reason,
              "previous_version": previous.get("version") if previous else None}
    write_json_atomic(promoted_path(base), record)
    with (Path(base) / "promotions.jsonl").open("a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    return record


def data_root(version_dir: Path) -> Path:
    """A refresh version's data run dir (prompts, generate, curate of its new prompts)."""
    return Path(version_dir) / "data"


def train_root(version_dir: Path) -> Path:
    """A refresh version's training run dir (assembled data, pairs, sft, dpo, export, eval)."""
    return Path(version_dir) / "train"


def data_dir(version_dir: Path) -> RunPaths:
    return RunPaths(data_root(version_dir))


# --- the student a version trained -----------------------------------------------------------

STUDENTS = ("student_dpo", "student_opd", "student_sft")  # eval/results.json names, best first


def _value(entry: Any, metric: str) -> float | None:
    v = entry.get(metric) if isinstance(entry, dict) else None
    if isinstance(v, dict):  # {"value": .., "ci": [..]} style
        v = v.get("value", v.get("mean"))
    return float(v) if isinstance(v, (int, float)) else None


def student_record(base: Path, version: str) -> dict[str, Any] | None:
    """The best trained student of a version and its held-out metric, or None if not evaluated."""
    d = model_dir(base, version)
    paths = RunPaths(d)
    results = read_json(paths.eval_results)
    if not results:
        return None
    metric = results.get("main_metric", "accuracy")
    for name in STUDENTS:
        stage = name.removeprefix("student_")
        value = _value(results.get("models", {}).get(name), metric)
        adapter = paths.adapter(stage)
        if value is not None and adapter.is_dir():
            config = (read_json(paths.manifest) or {}).get("config", {})
            merged = paths.export_merged
            base_model = config.get("student", {}).get("model")
            if config.get("prune", {}).get("layers"):
                base_model = str(paths.pruned_student)  # its LoRA applies to the pruned copy
            return {
                "version": version, "run_dir": str(d), "student": name, "adapter": str(adapter),
                "base_model": base_model,
                "merged_model": str(merged) if merged.is_dir() else None,
                "metric": metric, "value": value,
            }
    return None


def current_promoted(base: Path) -> dict[str, Any] | None:
    """promoted.json; on the first refresh, the first run's student if it was evaluated."""
    promoted = read_promoted(base)
    if promoted is None and (first := student_record(base, BASE_VERSION)) is not None:
        promoted = promote(base, first, "the first run's student (before any refresh)")
    return promoted
