"""The serving front's parts without a model: names -> versions, scrubbing, capture rotation
and its size cap."""

from __future__ import annotations

import os
import time

import pytest

from serve_helpers import fake_version, serve_config

from distill.core import versions as V
from distill.core.config import CaptureConfig, RunConfig
from distill.serving.capture import TrafficWriter, read_traffic
from distill.serving.metrics import ServeMetrics
from distill.serving.routes import Routes, UnknownModel
from distill.serving.scrub import Scrubber


def test_routes_follow_promotion_and_new_versions(tmp_path):
    fake_version(tmp_path, "v0000", 0.6)
    fake_version(tmp_path, "v0001", 0.7)
    routes = Routes(tmp_path, "sentiment")
    assert routes.names() == ["sentiment", "sentiment@v0000", "sentiment@v0001"]
    assert routes.resolve("sentiment") == routes.resolve(None) == "v0000"  # nothing promoted
    assert routes.resolve("sentiment@v0001") == "v0001"
    V.promote(tmp_path, V.student_record(tmp_path, "v0001"), "test")
    assert routes.resolve("sentiment") == "v0001"
    fake_version(tmp_path, "v0002", 0.8)  # a refresh finished while serving
    assert routes.resolve("sentiment@v0002") == "v0002"
    for bad in ("other", "sentiment@v9", "sentiment@v0009", "sentiment@"):
        with pytest.raises(UnknownModel):
            routes.resolve(bad)
    assert Routes(tmp_path, "sentiment", pinned="v0000").resolve("sentiment") == "v0000"


def test_scrubber_removes_secrets_and_configured_pii():
    scrub = Scrubber({**CaptureConfig().pii_patterns, "order": r"ORD-\d{6}"})
    text = ("key sk-proj-abcdefghijklmnopqrstuvwx, token ghp_" + "a" * 36 +
            ", mail jo.doe@example.com, call +49 30 1234 5678, order ORD-123456, "
            "password: hunter2, AKIAABCDEFGHIJKLMNOP. The film was fine.")
    out = scrub(text)
    for secret in ("sk-proj", "ghp_", "jo.doe", "1234 5678", "ORD-123456", "hunter2", "AKIA"):
        assert secret not in out
    for kind in ("api_key", "github_token", "email", "phone", "order", "password", "aws_key"):
        assert f"[REDACTED:{kind}]" in out
    assert out.endswith("The film was fine.")
    assert scrub("a plain review, 3 stars") == "a plain review, 3 stars"


def test_bad_pii_pattern_is_a_named_config_error(tmp_path):
    with pytest.raises(Exception, match="pii_patterns.bad: not a valid regex"):
        RunConfig.model_validate(serve_config(tmp_path, serve={
            "capture": {"enabled": True, "pii_patterns": {"bad": "(unclosed"}}}))


def row(i: int) -> dict:
    return {"request_id": str(i), "model": "sentiment", "version": "v0000", "prompt": f"p{i}",
            "answer": "a", "formatted": True, "latency_s": 0.1, "prompt_tokens": 3,
            "completion_tokens": 1, "status": "ok"}


def test_capture_rotates_flushes_and_caps(tmp_path):
    metrics = ServeMetrics()
    writer = TrafficWriter(tmp_path, CaptureConfig(enabled=True, rows_per_shard=3, flush_s=0.05),
                           metrics)
    for i in range(7):
        writer.add(row(i))
    assert len(list(tmp_path.glob("traffic-*.parquet"))) == 2  # 3 + 3, one row buffered
    time.sleep(0.06)
    writer.flush_if_due()  # the timer writes what is buffered
    assert [r["prompt"] for r in read_traffic(tmp_path).to_pylist()] == [f"p{i}" for i in range(7)]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert read_traffic(tmp_path, max_rows=2).column("prompt").to_pylist() == ["p5", "p6"]

    capped = TrafficWriter(tmp_path, CaptureConfig(enabled=True, max_mb=1e-6), metrics)
    capped.add(row(8))
    capped.close()
    assert metrics.captured == 7 and metrics.capture_dropped == 1
    assert len(read_traffic(tmp_path)) == 7
