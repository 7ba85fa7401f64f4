"""Runs as Ray jobs: submit through the Jobs API (JobSubmissionClient), follow, fetch logs.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from distill.config import RunConfig
from distill.errors import DistillError

CONFIG_ENV = "DISTILL_JOB_CONFIG"
SUBMISSION_ENV = "DISTILL_SUBMISSION_ID"
COMMANDS = ("run", "refresh", "stages")
# Never uploaded: environments, run outputs, VCS data, model weights and data files. Ray also
# skips what .gitignore ignores. The upload limit is a few hundred MiB (GCS_STORAGE_MAX_SIZE).
EXCLUDES = [
    ".venv", "venv", ".git", "runs", "benchmarks/results", "__pycache__", ".pytest_cache",
    "*.egg-info", "*.parquet", "*.safetensors", "*.gguf", "*.bin", "*.pt", "*.ckpt",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobError(DistillError):
    """The cluster refused or lost a job (unreachable address, unknown id, failed job)."""


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def job_config(cfg: RunConfig) -> RunConfig:
    """The config a job runs with: absolute paths, Ray attached to the job's cluster."""
    data = cfg.resolved()
    data["output_dir"] = str(_absolute(cfg.output_dir))
    if cfg.data.path is not None:
        data["data"]["path"] = str(_absolute(cfg.data.path))
    if cfg.dedup.index_dir is not None:
        data["dedup"]["index_dir"] = str(_absolute(cfg.dedup.index_dir))
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


# --- talking to the cluster ------------------------------------------------------------------


def _use_token_if_available() -> None:
    """Send the cluster's auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
    like `ray.init` and `ray job submit` do; Ray 2.60 clusters require one by default."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_token_if_available()
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None


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


def job_info(address: str, sid: str):
    try:
        return client(address).get_job_info(sid)
    except RuntimeError as exc:
        raise JobError(f"{address}: no job {sid} ({exc})") from None


def status(address: str, sid: str) -> str:
    return str(job_info(address, sid).status)


def logs(address: str, sid: str) -> str:
    try:
        return client(address).get_job_logs(sid)
    except RuntimeError as exc:
        raise JobError(f"{address}: no logs for job {sid} ({exc})") from None


def follow_logs(address: str, sid: str) -> Iterator[str]:
    """Log chunks as they arrive, until the job ends."""
    import asyncio

    c = client(address)
    agen = c.tail_job_logs(sid)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def wait(address: str, sid: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> str:
    """Block until the job reaches a terminal state; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(address, sid)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise JobError(f"job {sid} still {state} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def jobs_with_id(address: str, sid: str) -> list:
    """Every job the cluster knows under this submission id (0 or 1 when ids are honoured)."""
    return [j for j in client(address).list_jobs() if j.submission_id == sid]
