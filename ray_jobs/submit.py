"""`distill submit`: a run, some of its stages, or a refresh as a Ray job (Jobs API).

The submission id is derived from the run (run name, command, hash of the shipped config, and
for scheduled refreshes the trigger's date), so a repeated trigger of the same run is refused by
Ray ("already exists") and reported instead of starting a second job: triggers are idempotent.

What travels with a job (its runtime env):
- `working_dir`: the project root (git-ignored files and EXCLUDES left out), so the job runs this
  code, `python -m ray_jobs.entrypoint`, whatever is installed on the cluster's nodes;
- the resolved config as YAML in the env var DISTILL_JOB_CONFIG, with relative paths made
  absolute (they must be on a filesystem every node mounts at the same path) and `ray.address:
  auto`, so every stage attaches to the job's cluster instead of starting a Ray of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.core.config import RunConfig
from distill.core.errors import DistillError
from ray_jobs.client import JobError, client

CONFIG_ENV = "DISTILL_JOB_CONFIG"
SUBMISSION_ENV = "DISTILL_SUBMISSION_ID"
COMMANDS = ("run", "refresh", "stages")
# Never uploaded: environments, run outputs, VCS data, model weights and data files. Ray also
# skips what .gitignore ignores. The upload limit is a few hundred MiB (GCS_STORAGE_MAX_SIZE).
EXCLUDES = [
    ".venv", "venv", ".git", "runs", "benchmarks/results", "__pycache__", ".pytest_cache",
    "*.egg-info", "*.parquet", "*.safetensors", "*.gguf", "*.bin", "*.pt", "*.ckpt",
]


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def job_config(cfg: RunConfig) -> RunConfig:
    """The config a job runs with: absolute paths, Ray attached to the job's cluster."""
    data = cfg.resolved()
    data["output_dir"] = str(_absolute(cfg.output_dir))
    if cfg.prompts.path is not None:
        data["prompts"]["path"] = str(_absolute(cfg.prompts.path))
    if cfg.curate.dedup.index_dir is not None:
        data["curate"]["dedup"]["index_dir"] = str(_absolute(cfg.curate.dedup.index_dir))
    data["ray"] = {"address": "auto", "num_cpus": None}
    return RunConfig.model_validate(data)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def submission_id(cfg: RunConfig, command: str, stages: tuple[str, ...] = (),
                  trigger: str | None = None) -> str:
    """`distill-<run>-<command>-<hash8>[-<trigger>]`: same run + same trigger = same id."""
    blob = json.dumps({"config": cfg.config_hash(), "command": command, "stages": list(stages)},
                      sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    parts = ["distill", _slug(cfg.run_name), command, digest]
    if trigger:
        parts.append(_slug(trigger))
    return "-".join(parts)


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None


def build_submission(cfg: RunConfig, command: str = "run", stages: tuple[str, ...] = (),
                     trigger: str | None = None, python: str = "python",
                     overrides: list[str] | None = None,
                     entrypoint_num_cpus: float | None = None) -> Submission:
    if command not in COMMANDS:
        raise DistillError(f"unknown job command {command!r} (expected one of {COMMANDS})")
    if command == "stages" and not stages:
        raise DistillError("a stages job needs at least one --stage")
    shipped = job_config(cfg)
    sid = submission_id(shipped, command, stages, trigger)
    args = [python, "-m", "ray_jobs.entrypoint", command, *[a for s in stages for a in ("--stage", s)]]
    runtime_env = {
        "working_dir": str(project_root()),
        "excludes": list(EXCLUDES),
        "env_vars": {
            CONFIG_ENV: yaml.safe_dump(shipped.resolved(), sort_keys=False),
            SUBMISSION_ENV: sid,
            "PYTHONUNBUFFERED": "1",
        },
    }
    metadata = {"run_name": cfg.run_name, "command": command, "config_hash": shipped.config_hash(),
                "output_dir": str(shipped.output_dir), "trigger": trigger or ""}
    if overrides:
        metadata["overrides"] = json.dumps(overrides)
    return Submission(sid, shlex.join(args), runtime_env, metadata, entrypoint_num_cpus)


@dataclass
class SubmitResult:
    submission_id: str
    created: bool  # False: a job with this id existed already; nothing new was started
    status: str


def submit(address: str, sub: Submission) -> SubmitResult:
    """Submit once. A repeated id is not an error: the existing job's status is returned."""
    c = client(address)
    try:
        c.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                     metadata=sub.metadata, submission_id=sub.submission_id,
                     entrypoint_num_cpus=sub.entrypoint_num_cpus)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise JobError(f"{address}: the cluster refused job {sub.submission_id}: {exc}") from None
        return SubmitResult(sub.submission_id, False, str(c.get_job_status(sub.submission_id)))
    return SubmitResult(sub.submission_id, True, str(c.get_job_status(sub.submission_id)))
