"""`distill drift` on captured traffic: the real capture writer makes the shards, the CLI
compares them with the run's training prompts and exits 0 (no drift) or 1 (drift)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from serve_helpers import serve_config, write_config

from distill.cli import app
from distill.core.artifacts import RunPaths
from distill.core.config import load_config
from distill.core.messages import text_id
from distill.data import Example, write_examples
from distill.serving.capture import TrafficWriter, read_traffic
from distill.serving.metrics import ServeMetrics

SUBJECTS = ["The movie", "This sequel", "The new drama", "Her debut", "The remake", "This comedy"]
PHRASES = ["a joy to watch", "warm and funny", "a brilliant, moving film", "a dull mess",
           "boring and far too long", "the plot makes no sense", "great acting throughout"]
TOPICS = ["invoice", "router", "firmware", "refund", "password reset", "VPN", "shipping label"]


def reviews(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} is {rng.choice(PHRASES)}, {rng.choice(PHRASES)} ({i})."
            for i in range(n)]


def support_tickets(n: int, seed: int) -> list[str]:
    """Shifted traffic: other words, and three to four times longer."""
    rng = random.Random(seed)
    return [f"Hello, my {rng.choice(TOPICS)} stopped working after the update on ticket "
            f"{rng.randint(1000, 9999)}; I restarted the {rng.choice(TOPICS)} twice, cleared the "
            f"cache, checked the {rng.choice(TOPICS)} settings and the {rng.choice(TOPICS)} "
            f"still fails with error {rng.randint(100, 999)}. Please escalate this." for _ in range(n)]


def capture(run_dir, cfg, prompts: list[str]) -> None:
    writer = TrafficWriter(RunPaths(run_dir).traffic, cfg.serve.capture, ServeMetrics())
    for p in prompts:
        writer.add({"request_id": text_id(p), "model": "sentiment", "version": "v0000",
                    "prompt": p, "answer": "positive", "formatted": True, "latency_s": 0.01,
                    "prompt_tokens": 20, "completion_tokens": 1, "status": "ok"})
    writer.close()


@pytest.fixture
def trained(tmp_path):
    run_dir = tmp_path / "run"
    path = write_config(tmp_path / "config.yaml", serve_config(
        run_dir, serve={"capture": {"enabled": True, "rows_per_shard": 25}}))
    texts = reviews(200, seed=0)
    write_examples(RunPaths(run_dir).train_prompts,
                   [Example(text_id(t), t, None, "train.jsonl", i) for i, t in enumerate(texts)])
    return run_dir, path


def test_drift_quiet_on_training_like_traffic(trained):
    run_dir, path = trained
    capture(run_dir, load_config(path), reviews(60, seed=1))
    result = CliRunner().invoke(app, ["drift", str(path)])
    assert result.exit_code == 0, result.output
    assert "no drift" in result.output
    report = json.loads((RunPaths(run_dir).drift_dir / "report.json").read_text())
    assert report["alarms"] == [] and report["rows"] == {"live": 60, "train": 200}
    m = report["metrics"]
    assert m["length"]["ks"] < 0.3 and m["ngrams"]["js_distance"] < 0.5
    assert m["near_duplicates"]["against"] == "training prompts"
    assert (RunPaths(run_dir).drift_dir / "lengths.png").stat().st_size > 1000
    assert "no drift" in (RunPaths(run_dir).drift_dir / "report.html").read_text()


def test_drift_alarms_on_shifted_traffic(trained):
    run_dir, path = trained
    capture(run_dir, load_config(path), reviews(10, seed=1) + support_tickets(50, seed=2))
    assert len(read_traffic(RunPaths(run_dir).traffic)) == 60
    result = CliRunner().invoke(app, ["drift", str(path), "--set", "drift.max_oov_rate=0.2"])
    assert result.exit_code == 1, result.output
    report = json.loads((RunPaths(run_dir).drift_dir / "report.json").read_text())
    assert {a.split(" ")[0] for a in report["alarms"]} == {"input", "n-grams:", "out-of-vocabulary"}
    assert any(r["train_share"] == 0.0 for r in report["metrics"]["ngrams"]["rising"])
    assert (RunPaths(run_dir).drift_dir / "ngrams.png").exists()


def test_drift_needs_enough_traffic(trained):
    run_dir, path = trained
    capture(run_dir, load_config(path), reviews(5, seed=1))
    result = CliRunner().invoke(app, ["drift", str(path)])
    assert result.exit_code == 2 and "drift.min_rows=20" in result.output
