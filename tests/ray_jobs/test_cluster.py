"""Through a real two-node Ray cluster on 127.0.0.1 and its Jobs API: `distill submit` runs the
job on the cluster, the result lands in the run dir, a second identical trigger does not run it
again, `distill status`/`logs` follow it, and the built-in scheduler submits a real
`distill refresh` once per fire time.

The submitted job is kept tiny (the prompts and curate stages, curation's MinHash signatures on
Ray Data across the cluster) because the full pipeline needs vLLM engines and training."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from local_cluster import start_cluster
from refresh_helpers import make_config, sentences, write_jsonl
from typer.testing import CliRunner

from distill.cli import app
from distill.core.config import load_config
from distill.core.messages import text_id
from ray_jobs import logs, status, submit
from ray_jobs.schedule import fire_trigger, run_scheduler

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    src = write_jsonl(tmp / "prompts" / "a.jsonl", sentences(16, seed=5))
    cfg = make_config(tmp, src.parent, dedup={"use_ray": True, "batch_size": 8})
    # The teacher's output, as the generate stage would have left it: the job curates it.
    shards = cfg.output_dir / "generate" / "shards"
    shards.mkdir(parents=True)
    rows = [{"row_id": f"r{i}-0", "prompt_id": f"r{i}", "example_id": text_id(r["text"]),
             "text": r["text"], "label": r["label"], "completion": r["label"],
             "finish_reason": "stop", "completion_tokens": 1, "sample_index": 0}
            for i, r in enumerate(sentences(16, seed=5))]
    pq.write_table(pa.Table.from_pylist(rows), shards / "shard-00000.parquet")
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_submit_runs_once_and_lands_in_the_run_dir(cluster, config_file):
    argv = ["submit", str(config_file), "--address", cluster.address,
            "--stage", "prompts", "--stage", "curate"]
    out = _cli(*argv)
    assert "submitted: distill-fresh-stages-" in out
    sid = out.split("submitted: ")[1].split()[0]
    assert status.wait(cluster.address, sid, timeout_s=300) == "SUCCEEDED", \
        logs.logs(cluster.address, sid)[-3000:]

    cfg = load_config(config_file)
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["status"] == "done"
    assert manifest["stages"]["curate"]["status"] == "done"
    assert pq.read_table(cfg.output_dir / "prompts" / "train.parquet").num_rows == 10
    assert pq.read_table(cfg.output_dir / "curate" / "train.parquet").num_rows > 0
    shipped = yaml.safe_load((cfg.output_dir / "jobs" / f"{sid}.yaml").read_text())
    assert shipped["ray"]["address"] == "auto"  # the stages attached to the job's cluster
    job_logs = _cli("logs", sid, "--address", cluster.address)
    assert "--stage curate" in job_logs and "curation funnel" in job_logs
    started = manifest["stages"]["prompts"]["started"]

    # The same trigger again: refused by Ray's submission id, reported, nothing runs twice.
    again = _cli(*argv)
    assert f"already submitted, not started again: {sid} (SUCCEEDED)" in again
    assert len(status.jobs_with_id(cluster.address, sid)) == 1
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["started"] == started
    info = json.loads(_cli("status", sid, "--address", cluster.address))
    assert info["status"] == "SUCCEEDED" and info["metadata"]["run_name"] == "fresh"


def test_scheduler_submits_a_refresh_once_per_fire_time(cluster, config_file):
    """One real fire: the clock is shifted so the next minute starts in ~2 s (cron's finest
    interval is a minute); the refresh job runs on the cluster and, with no prompts added since
    the first run, ends without making a version. A restarted scheduler at the same fire time
    submits nothing new."""
    cfg = load_config(config_file)
    real = datetime.now(timezone.utc).replace(tzinfo=None)
    shift = (real.replace(second=0, microsecond=0) + timedelta(minutes=1)) - real \
        - timedelta(seconds=2)
    now = lambda: datetime.now(timezone.utc).replace(tzinfo=None) + shift  # noqa: E731
    submitted = []

    def fire(t):
        r = submit.submit(cluster.address, submit.build_submission(cfg, "refresh",
                                                               trigger=fire_trigger(t)))
        submitted.append(r)
        return r.submission_id

    start = now()
    assert run_scheduler("* * * * *", fire, max_fires=1, now=now, log=lambda _: None) == 1
    first = submitted[0]
    assert first.created and first.submission_id.endswith(fire_trigger(
        start.replace(second=0, microsecond=0) + timedelta(minutes=1)).lower())
    assert status.wait(cluster.address, first.submission_id, timeout_s=300) == "SUCCEEDED", \
        logs.logs(cluster.address, first.submission_id)[-3000:]
    assert "nothing to refresh" in logs.logs(cluster.address, first.submission_id)
    assert not (cfg.output_dir / "refresh").exists()

    # a restarted scheduler, same fire time: the id exists, no second job
    fire(start.replace(second=0, microsecond=0) + timedelta(minutes=1))
    assert submitted[1].submission_id == first.submission_id and not submitted[1].created
    assert len(status.jobs_with_id(cluster.address, first.submission_id)) == 1


def test_submit_a_training_stage_by_name(cluster, config_file):
    """`sft` is `distill train sft` on the command line; a job runs it by its stage name.
    Trains one step of the packaged student on the curated set the first test left."""
    out = _cli("submit", str(config_file), "--address", cluster.address, "--stage", "sft",
               "--set", "sft.max_steps=1", "--set", "sft.batch_size=2")
    sid = out.split("submitted: ")[1].split()[0]
    assert status.wait(cluster.address, sid, timeout_s=400) == "SUCCEEDED", \
        logs.logs(cluster.address, sid)[-3000:]
    cfg = load_config(config_file)
    manifest = json.loads((cfg.output_dir / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "done"
    assert (cfg.output_dir / "sft" / "adapter" / "adapter_config.json").is_file()


def test_submit_refuses_an_unknown_stage(cluster, config_file):
    res = CliRunner().invoke(app, ["submit", str(config_file), "--address", cluster.address,
                                   "--stage", "train-sft"])
    assert res.exit_code == 2 and "unknown stage 'train-sft'" in res.output
