"""The teacher pool (`teacher.server: run`): one real `vllm serve` in a real local Ray actor,
started once and used by generation, the check's and the judge's engines and eval's server;
stopped between stages where it has no GPU; keyed; never left running by a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.contenders import Contender, served_generator
from distill.core.config import TeacherConfig
from distill.core.logs import own_log_env
from distill.core.messages import teacher_messages
from distill.engines import chat, open_judge, open_teacher, served_teacher
from distill.pipeline import run_all
from teachers import pool as teacher_pool
from teacher_helpers import make_run, read_rows

HERE = Path(__file__).parent


def _records(run) -> list[dict]:
    path = run.dir / "logs" / "teacher_pool.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _server_processes(pgid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return out.split()


def _pgid_of_server(port: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"api_server.*--port {port}"], capture_output=True,
                         text=True).stdout.split()
    assert out, f"no vllm api_server on port {port}"
    return os.getpgid(int(out[0]))


@pytest.mark.parametrize("backend", ["openai", "transformers"])
def test_run_server_needs_the_vllm_backend(tmp_path, backend):
    endpoint = {"endpoint": {"base_url": "http://x/v1", "model": "m"}} if backend == "openai" else {}
    with pytest.raises(ValidationError, match="server: run starts `vllm serve`"):
        make_run(tmp_path, teacher={"server": "run", "backend": backend, **endpoint})


@pytest.mark.parametrize("replicas,per,free,held", [
    (1, 1.0, 2, 1.0), (2, 1.0, 2, 0.5), (2, 1.0, 16, 1.0), (1, 4.0, 2, 1.0), (3, 1.0, 1, 0.0)])
def test_a_pool_leaves_ray_data_a_cpu(replicas, per, free, held):
    engine = TeacherConfig(model="packaged:smollm2-135m-instruct", replicas=replicas,
                           cpus_per_replica=per)
    assert teacher_pool.server_cpus(engine, free) == held


def test_a_server_in_an_actor_logs_to_its_own_file():
    # A pool actor's environment comes from the driver, whose vLLM logging config sent the
    # servers' logs to the run's library log (in the suite: a finished test's), not
    # teacher_pool_<i>.log. The driver marks its own config; a user's is left alone.
    ours = {"VLLM_LOGGING_CONFIG_PATH": "/r/logs/vllm_logging.json",
            "DISTILL_VLLM_LOGGING_CONFIG": "/r/logs/vllm_logging.json", "PATH": "/bin"}
    assert "VLLM_LOGGING_CONFIG_PATH" not in own_log_env(ours)
    users = {"VLLM_LOGGING_CONFIG_PATH": "/home/me/logging.json",
             "DISTILL_VLLM_LOGGING_CONFIG": "/r/logs/vllm_logging.json"}
    assert own_log_env(users)["VLLM_LOGGING_CONFIG_PATH"] == "/home/me/logging.json"


@pytest.mark.slow
def test_one_start_serves_generation_check_judge_and_eval(ray_local, tmp_path):
    # Two replicas on the 2-CPU Ray: they must leave a CPU to Ray Data (holding both, the
    # stage waited forever), and the batches go to both.
    run = make_run(tmp_path, teacher={"server": "run", "replicas": 2})
    try:
        run_all(run, only=("generate",))  # the check first (skipped: too few gold labels)
        rows = read_rows(run)
        assert len(rows) == 24 and {r["backend"] for r in rows} == {"vllm_serve"}
        assert any(r["completion"].strip() for r in rows)
        for i in (0, 1):
            log = (run.dir / "logs" / f"teacher_pool_{i}.log").read_text()
            assert "POST /v1/chat/completions" in log, f"replica {i} got no request"
        started = _records(run)
        assert started[0]["cpus_per_server"] == 0.5 and len(started[0]["urls"]) == 2
        # run_all stops the pool when the run is over
        assert [r["event"] for r in started] == ["start", "stop"]
        assert started[1]["why"] == "the run is over" and not teacher_pool.running()
        port = started[0]["urls"][0].rsplit(":", 1)[1].split("/")[0]
        assert subprocess.run(["pgrep", "-f", f"api_server.*--port {port}"]).returncode == 1

        # Within one stage and across roles: the check's and the judge's engines, eval's
        # server: all the same one start.
        ask = [[{"role": "user", "content": "Say one word."}]]
        with open_teacher(run.cfg) as teacher, open_judge(run.cfg) as judge:
            assert chat(teacher, 4)(ask)[0] and chat(judge, 4)(ask)[0]
        with served_teacher(run.cfg, tmp_path / "unused.log") as served:
            url, names, key = served
            c = Contender("teacher", "teacher", None, teacher_messages)
            answer = chat(served_generator(run.cfg, served, c), 4)(ask)
            assert answer[0]
            # The server listens on the node's address and wants the pool's key.
            request = urllib.request.Request(f"{url}/models")
            with pytest.raises(urllib.error.HTTPError, match="401"):
                urllib.request.urlopen(request, timeout=10)
            request.add_header("Authorization", f"Bearer {key}")
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert json.load(resp)["data"][0]["id"] == names["teacher"]
        assert [r["event"] for r in _records(run)] == ["start", "stop", "start"]
        teacher_pool.release_idle(needed_next=True)
        assert len(teacher_pool.running()) == 1  # the next stage asks the teacher: kept
        teacher_pool.release_idle(needed_next=False)  # no GPU: stopped while not needed
        assert not teacher_pool.running()
        assert "does not use the teacher" in _records(run)[-1]["why"]
        assert key not in (run.dir / "logs" / "teacher_pool.jsonl").read_text()
        assert key not in run.cfg.model_dump_json()
    finally:
        teacher_pool.release_all()


DRIVER = """
import sys, time
sys.path.insert(0, {here!r})
from pathlib import Path
from teacher_helpers import make_run
from teachers.pool import ensure_pool
if __name__ == "__main__":
    run = make_run(Path({tmp!r}), teacher={{"server": "run"}})
    pool = ensure_pool(run.cfg, run.cfg.teacher)
    print("URL", pool.urls[0], flush=True)
    time.sleep(900)
"""


@pytest.mark.slow
def test_a_killed_driver_leaves_no_server_running(tmp_path):
    # Its own driver (and local Ray) in a child process, killed with SIGKILL: Ray kills the
    # actor and its direct children; the watchdog stops the server's engine core too.
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(here=str(HERE), tmp=str(tmp_path / "run")))
    out = tmp_path / "driver.out"
    with out.open("w") as f:
        driver = subprocess.Popen([sys.executable, str(script)], stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  cwd=HERE.parent.parent)
    try:
        deadline = time.monotonic() + 300
        while "URL" not in out.read_text():
            assert driver.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, "the pool did not start in 300 s"
            time.sleep(1)
        url = out.read_text().split("URL ", 1)[1].split()[0]
        pgid = _pgid_of_server(url.rsplit(":", 1)[1].split("/")[0])
        assert len(_server_processes(pgid)) >= 2  # API server and engine core at least
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60
        while _server_processes(pgid) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _server_processes(pgid), "the server outlived its driver"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
