"""An `openai` teacher's faults, run as a user runs them: the `distill generate` CLI in its own
process, with its own local Ray. The endpoint is the FAKE server of fake_openai.py (no real
provider key can be used in a test); Ray, the actor pool, the retries, the shards and the CLI
are real.

- the API key never reaches the run dir, the console or Ray's session logs (Ray writes a
  runtime_env's env_vars to runtime_env_agent.log), and yet reaches every request;
- an unset key variable stops the driver before Ray starts, with a named error (exit 2); one
  set for the driver but missing on the Ray workers is the same named error, from the actor;
- 429s (with Retry-After), 500s and dropped connections are retried: every row once;
- an endpoint that is down for good ends, after the retries, in a named error (exit 2) that
  says what is saved and that a rerun resumes; the rerun, once it is up, completes exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from distill.core.config import load_config
from distill.core.errors import ConfigError
from distill.core.rundir import Run
from fake_openai import closed_port, fake_openai
from teacher_helpers import REVIEWS, make_run, read_rows
from teachers.generate import run_generate

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "DISTILL_TEST_FAULTS_API_KEY"


@pytest.fixture
def ray_tmp():
    """A Ray temp dir of this test's own: its session logs are what gets searched, and no
    other Ray on the machine (the suite's, a user's) shares it. Short, for Ray's socket paths."""
    path = Path(tempfile.mkdtemp(prefix="rayk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(tmp_path: Path, base_url: str, key_env: str | None = KEY_ENV,
            max_retries: int = 1) -> Path:
    teacher = {"backend": "openai", "replicas": 1, "batch_size": 4, "endpoint": {
        "base_url": base_url, "model": "fake", "api_key_env": key_env, "max_concurrency": 4,
        "timeout_s": 5, "max_retries": max_retries}}
    run = make_run(tmp_path, model="fake-teacher", n=2, texts=REVIEWS[:8], teacher=teacher)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run.cfg.resolved(), sort_keys=False))
    return path


def _generate(config: Path, ray_tmp: Path, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "RAY_ADDRESS")}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT))
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([sys.executable, "-m", "distill.cli", "generate", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _run(config: Path) -> Run:
    return Run(load_config(config))


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and needle in p.read_bytes()]


def test_api_key_reaches_requests_but_no_log(tmp_path, ray_tmp):
    secret = f"sk-planted-{os.urandom(8).hex()}"
    with fake_openai(key=secret) as (url, auth_headers):
        config = _config(tmp_path, url)
        proc = _generate(config, ray_tmp, secret)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert len(read_rows(_run(config))) == 16
    # Every request carried the key: it did reach the Ray workers, through their environment.
    assert len(auth_headers) == 16 and set(auth_headers) == {f"Bearer {secret}"}
    sessions = list((ray_tmp / "ray").glob("session_2*/logs"))
    assert sessions and any(p.is_file() for p in sessions[0].rglob("*"))  # a real Ray ran
    assert b"DISTILL_TEST_FAULTS_API_KEY" in (run_dir / "manifest.json").read_bytes()
    for root in (run_dir, ray_tmp):
        assert _files_containing(root, secret.encode()) == []
    assert secret not in proc.stdout + proc.stderr


def test_unset_key_variable_stops_before_ray(tmp_path, ray_tmp):
    config = _config(tmp_path, f"http://127.0.0.1:{closed_port()}/v1")
    proc = _generate(config, ray_tmp, key=None)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"environment variable {KEY_ENV} is not set" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (ray_tmp / "ray").exists()  # the check came before any Ray start


def test_endpoint_down_for_good_is_named_and_a_rerun_resumes(tmp_path, ray_tmp):
    port = closed_port()
    config = _config(tmp_path, f"http://127.0.0.1:{port}/v1", key_env=None)
    proc = _generate(config, ray_tmp, key=None)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())  # the console wraps long lines
    assert f"teacher endpoint http://127.0.0.1:{port}/v1 still failing after 1 retries" in err
    assert "0 of the 8 prompts of this run are done and saved" in err
    assert "rerun `distill generate`" in err
    assert "Traceback" not in proc.stderr + proc.stdout

    with fake_openai(port=port) as (_, requests):
        again = _generate(config, ray_tmp, key=None)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = read_rows(_run(config))
    assert len(rows) == 16 and len({r["row_id"] for r in rows}) == 16 and len(requests) == 16


def test_key_set_for_the_driver_but_not_on_the_workers_is_named(tmp_path, ray_local,
                                                                 monkeypatch):
    # The shared test Ray started before the variable exists: its workers lack it, as the
    # nodes of a cluster without the secret would. The actor's error reaches the driver as
    # the named error itself, not as a Ray traceback.
    monkeypatch.setenv(KEY_ENV, "sk-only-on-the-driver")
    with fake_openai(key="sk-only-on-the-driver") as (url, requests):
        run = _run(_config(tmp_path, url))
        with pytest.raises(ConfigError) as exc:
            run_generate(run)
    assert exc.value.problems[0].startswith(f"environment variable {KEY_ENV} is not set on ")
    assert "every node needs it" in str(exc.value) and not requests


def test_a_full_run_checks_the_key_before_its_first_stage(tmp_path):
    from distill.pipeline import run_all

    run = _run(_config(tmp_path, f"http://127.0.0.1:{closed_port()}/v1"))
    with pytest.raises(ConfigError, match=f"environment variable {KEY_ENV} is not set"):
        run_all(run, only=("curate", "pairs", "sft", "generate"))
    assert run.manifest["stages"] == {}  # not even curate started


def test_rate_limits_errors_and_dropped_connections_end_with_every_row_once(tmp_path,
                                                                            ray_local):
    # Each fault costs one retry of one request (max_retries 5 covers a request that draws
    # several); none may lose a row or write one twice.
    faults = ["429", "500", "drop", "429", "drop", "500"]
    with fake_openai(faults=faults) as (url, requests):
        run = _run(_config(tmp_path, url, key_env=None, max_retries=5))
        summary = run_generate(run)
    rows = read_rows(run)
    assert len(requests) == 16 + len(faults)
    assert len(rows) == 16 and len({r["row_id"] for r in rows}) == 16
    assert (summary["prompts"], summary["completions"], summary["errors"]) == (8, 16, 0)
