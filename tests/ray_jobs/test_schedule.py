"""Cron parsing and next-fire times, the Kubernetes manifests, the scheduler loop, and the
submission's shape (ids, runtime env) - everything that needs no cluster."""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml
from refresh_helpers import make_config, sentences, write_jsonl
from typer.testing import CliRunner

from distill.cli import app
from ray_jobs import submit
from ray_jobs.cron import Cron, CronError
from ray_jobs.schedule import fire_trigger, run_scheduler


@pytest.mark.parametrize("expr, after, expected", [
    ("0 3 * * *", datetime(2026, 1, 1, 3, 0), datetime(2026, 1, 2, 3, 0)),
    ("0 3 * * *", datetime(2026, 1, 1, 2, 59, 59), datetime(2026, 1, 1, 3, 0)),
    ("*/15 9-17 * * mon-fri", datetime(2026, 11, 21, 12, 0), datetime(2026, 11, 23, 9, 0)),
    ("30 23 31 12 *", datetime(2026, 12, 31, 23, 30), datetime(2027, 12, 31, 23, 30)),
    ("0 0 29 feb *", datetime(2026, 3, 1), datetime(2028, 2, 29, 0, 0)),
    ("0 12 13 * 5", datetime(2026, 1, 1), datetime(2026, 1, 2, 12, 0)),  # day 13 OR a Friday
    ("5,10 * * * 7", datetime(2026, 11, 22, 0, 7), datetime(2026, 11, 22, 0, 10)),  # 7 = Sunday
    ("0 0 1 */3 *", datetime(2026, 2, 1), datetime(2026, 4, 1)),
])
def test_next_fire_time(expr, after, expected):
    assert Cron.parse(expr).next_after(after) == expected


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", "expected 5 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* * * * funday", "day of week: 'funday' is not a number"),
    ("*/0 * * * *", "bad step"),
    ("0 5-2 * * *", "runs backwards"),
    ("0 0 31 2 *", "never fires"),
])
def test_bad_cron_is_named(expr, message):
    with pytest.raises(CronError, match=message):
        Cron.parse(expr).next_after(datetime(2026, 1, 1))


def test_scheduler_fires_each_tick_on_a_fake_clock():
    clock = [datetime(2026, 1, 1, 2, 58, 30)]
    fired = []

    def sleep(seconds):  # a fake clock: the loop's sleeping is what is under test
        clock[0] = clock[0] + __import__("datetime").timedelta(seconds=seconds)

    def fire(t):
        fired.append(t)
        if len(fired) == 2:
            raise RuntimeError("cluster unreachable")  # logged; the loop goes on
        return "ok"

    logs = []
    n = run_scheduler("0 3 * * *", fire, max_fires=3, now=lambda: clock[0], sleep=sleep,
                      log=logs.append)
    assert n == 3
    assert fired == [datetime(2026, 1, d, 3, 0) for d in (1, 2, 3)]
    assert any("failed: RuntimeError: cluster unreachable" in line for line in logs)
    assert fire_trigger(fired[0]) == "20260101T0300Z"


@pytest.fixture
def config_file(tmp_path):
    src = write_jsonl(tmp_path / "prompts" / "a.jsonl", sentences(12, seed=1))
    cfg = make_config(tmp_path, src.parent)
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_schedule_writes_raycronjob_and_cronjob(config_file, tmp_path):
    out = tmp_path / "k8s"
    res = CliRunner().invoke(app, ["schedule", str(config_file), "--cron", "0 3 * * *",
                                   "--address", "http://head:8265", "--out", str(out),
                                   "--image", "ghcr.io/me/distill:1", "--config-in-image",
                                   "/app/configs/fresh.yaml"])
    assert res.exit_code == 0, res.output
    ray_cron = yaml.safe_load((out / "raycronjob.yaml").read_text())
    assert (ray_cron["apiVersion"], ray_cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert ray_cron["spec"]["schedule"] == "0 3 * * *"
    job = ray_cron["spec"]["jobTemplate"]
    assert job["entrypoint"].startswith("distill refresh /app/configs/fresh.yaml")
    assert job["shutdownAfterJobFinishes"] is True
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "ghcr.io/me/distill:1"

    cron = yaml.safe_load((out / "cronjob.yaml").read_text())
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    assert cron["spec"]["schedule"] == "0 3 * * *"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["distill", "submit", "/app/configs/fresh.yaml", "--refresh",
                                    "--address", "http://head:8265"]


def test_schedule_rejects_a_bad_cron(config_file, tmp_path):
    res = CliRunner().invoke(app, ["schedule", str(config_file), "--cron", "0 25 * * *",
                                   "--out", str(tmp_path / "k8s")])
    assert res.exit_code == 2 and "hour: 25 is outside 0-23" in res.output


def test_submission_id_is_stable_and_runtime_env_ships_project_and_config(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "prompts" / "a.jsonl", sentences(12, seed=1))
    monkeypatch.chdir(tmp_path)
    cfg = make_config(tmp_path, src.parent).model_copy(update={"output_dir": "runs/x"})
    a = submit.build_submission(cfg, "run")
    b = submit.build_submission(cfg, "run")
    assert a.submission_id == b.submission_id and a.submission_id.startswith("distill-fresh-run-")
    assert submit.build_submission(cfg, "refresh", trigger="20260101").submission_id.endswith(
        "-20260101")
    other = cfg.model_copy(update={"seed": 7})
    assert submit.build_submission(other, "run").submission_id != a.submission_id
    env = a.runtime_env
    assert env["working_dir"] == str(submit.project_root())
    assert {".venv", ".git", "runs"} <= set(env["excludes"])
    shipped = yaml.safe_load(env["env_vars"][submit.CONFIG_ENV])
    assert shipped["output_dir"] == str(tmp_path / "runs" / "x")  # absolute for the cluster
    assert shipped["ray"] == {"address": "auto", "num_cpus": None}
    assert a.entrypoint == "python -m ray_jobs.entrypoint run"
