"""Real kills during generation, through the CLI with its own local Ray: SIGKILL of the driver's
process group mid-run, and SIGKILL of the Ray worker process that holds a teacher engine.
After each, every prompt appears exactly once (after a rerun, for the driver). And an engine
actor that dies more often than teacher.max_restarts allows: one named error, then a rerun.

The teacher is the FAKE OpenAI-compatible server of fake_openai.py, answering slowly, so that
there is a run in progress to kill; what is tested is the kill and the recovery (Ray's actor
restart, the shard files, resume), all real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from distill.core.config import load_config
from distill.core.rundir import Run
from fake_openai import fake_openai
from teacher_helpers import REVIEWS, make_run, read_rows
from teachers.generate import FAULT_ENV

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 16


@pytest.fixture
def ray_tmp():
    """This test's own Ray temp dir; every process of its Ray carries it in RAY_TMPDIR, which
    is how `_our_processes` finds (and the teardown ends) them, and only them."""
    path = Path(tempfile.mkdtemp(prefix="rayx-", dir="/tmp"))  # short: Ray's socket paths
    yield path
    _kill(_our_processes(path))
    shutil.rmtree(path, ignore_errors=True)


def _config(tmp_path: Path, url: str, max_restarts: int = 2) -> Path:
    teacher = {"backend": "openai", "replicas": 1, "batch_size": 4, "max_restarts": max_restarts,
               "endpoint": {"base_url": url, "model": "fake", "max_concurrency": 1,
                            "timeout_s": 30, "max_retries": 1}}
    run = make_run(tmp_path, model="fake-teacher", n=1, texts=REVIEWS[:PROMPTS],
                   teacher=teacher)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run.cfg.resolved(), sort_keys=False))
    return path


def _start(config: Path, ray_tmp: Path, **extra_env: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", FAULT_ENV)}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT), **extra_env)
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "generate", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group


# `python -m distill.cli`, with SIGINT's Python default even when this suite runs in the
# background of a non-interactive shell (SIGINT ignored, and children inherit that). Not a
# preexec_fn: that forks this process, which holds the suite's in-process Ray driver, and a
# run with one was followed by that driver hanging (CI, 2026-12-02).
AS_FROM_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
                      "signal.default_int_handler); sys.argv[0] = 'distill'; "
                      "runpy.run_module('distill.cli', run_name='__main__')")


def _our_processes(ray_tmp: Path, title: str = "") -> list[int]:
    """Live processes started for this test: RAY_TMPDIR=<ray_tmp> in their environment."""
    mark = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if mark in environ and title in cmdline:
            pids.append(int(proc.name))
    return pids


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(predicate, timeout_s: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _shards(config: Path) -> list[Path]:
    return sorted((config.parent / "run" / "generate" / "shards").glob("shard-*.parquet"))


def _rows_once(config: Path) -> list[dict]:
    rows = read_rows(Run(load_config(config)))
    assert len(rows) == PROMPTS and len({r["row_id"] for r in rows}) == PROMPTS
    return rows


def test_sigkill_of_the_driver_mid_run_then_a_rerun_completes_once(tmp_path, ray_tmp):
    with fake_openai(delay_s=0.3) as (url, _):
        config = _config(tmp_path, url)
        proc = _start(config, ray_tmp)
        _wait_for(lambda: _shards(config) or proc.poll() is not None, what="a first shard")
        assert proc.poll() is None, proc.communicate()[1][-3000:]  # still mid-run
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        _kill(_our_processes(ray_tmp))  # the Ray it started, should it have outlived it
        done = _shards(config)
        assert 1 <= len(done) < PROMPTS // 4
        kept = {f.name: f.stat().st_mtime_ns for f in done}

        again = _start(config, ray_tmp)
        out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _rows_once(config)
    assert {f.name: f.stat().st_mtime_ns for f in done} == kept  # finished shards not redone
    manifest = json.loads((config.parent / "run" / "manifest.json").read_text())
    assert manifest["summaries"]["generate"]["resumed_prompts"] == 4 * len(done)


def test_sigkill_of_a_teacher_worker_is_restarted_and_every_row_lands_once(tmp_path, ray_tmp):
    with fake_openai(delay_s=0.3) as (url, requests):
        config = _config(tmp_path, url)
        proc = _start(config, ray_tmp)
        # The engine actor is up once it sends its first request; kill its process then.
        _wait_for(lambda: requests or proc.poll() is not None, what="the first request")
        workers = _our_processes(ray_tmp, title="MapWorker")
        assert len(workers) == 1, workers
        _kill(workers)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    _rows_once(config)
    assert len(requests) > PROMPTS  # the killed actor's batch was sent again


def test_an_actor_dying_past_max_restarts_is_a_named_error_and_a_rerun_completes(
        tmp_path, ray_tmp):
    # teacher.max_restarts 0: the first death of the engine actor (a real process exit, from
    # the test-only fault hook) ends the job; the CLI says so in one message, exit 2. Through
    # the CLI with its own Ray: the suite's shared in-process Ray, after many tests, once left
    # this pool's actor "pending" for good (its creation had finished), and the run hung.
    marker = tmp_path / "actor_died"
    with fake_openai() as (url, _):
        config = _config(tmp_path, url, max_restarts=0)
        fault = json.dumps({"actor_crash_once": str(marker)})
        proc = _start(config, ray_tmp, **{FAULT_ENV: fault})
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and marker.exists(), err[-3000:]
        assert "its actor died" in err and "(teacher.max_restarts)" in err, err[-3000:]
        assert f"0 of the {PROMPTS} prompts of this run are done and saved" in err
        assert "A rerun resumes" in err and "Traceback" not in out + err
        _kill(_our_processes(ray_tmp))
        again = _start(config, ray_tmp)
        out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _rows_once(config)


def test_ctrl_c_mid_run_is_one_line_then_a_rerun_completes_once(tmp_path, ray_tmp):
    with fake_openai(delay_s=0.3) as (url, _):
        config = _config(tmp_path, url)
        proc = _start(config, ray_tmp)
        _wait_for(lambda: _shards(config) or proc.poll() is not None, what="a first shard")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the CLI
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "interrupted: what was finished is saved" in err
        assert "Traceback" not in out + err
        _kill(_our_processes(ray_tmp))
        again = _start(config, ray_tmp)
        out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _rows_once(config)
