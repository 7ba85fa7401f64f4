"""`distill serve` for real: the CLI in its own process, a real vLLM server (CPU) with two
versions of a tiny student as LoRA adapters, requests through the real `openai` client.

One server start is reused for every step (it is the slow part: about a minute here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from adapter_helpers import noisy_adapter
from serve_helpers import add_version, serve_config, write_config

from distill.core.config import load_config
from distill.promote import promote_version
from distill.serving.capture import read_traffic
from teachers.serve import free_port

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ["The movie is a joy to watch.", "Boring and far too long; mail me at jo@example.com"]


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"distill serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"distill serve not healthy after {timeout_s}s:\n{log.read_text()[-4000:]}")


def _answers(client, model: str) -> list[tuple[str, str]]:
    """(answering version, text) per review, greedy."""
    out = []
    for review in REVIEWS:
        r = client.chat.completions.create(model=model, temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": review}])
        out.append((r.model, r.choices[0].message.content))
    return out


@pytest.mark.slow
def test_serve_two_versions_capture_and_live_promotion(tmp_path):
    import openai

    run_dir = tmp_path / "run"
    port = free_port()
    cfg_path = write_config(tmp_path / "config.yaml", serve_config(run_dir, serve={
        "port": port, "capture": {"enabled": True, "rows_per_shard": 4, "flush_s": 3600}}))
    cfg = load_config(cfg_path)
    v0 = add_version(run_dir, "v0000", lambda d: noisy_adapter(cfg, d, seed=0, sigma=0.02), 0.6)
    add_version(run_dir, "v0001", lambda d: noisy_adapter(cfg, d, seed=1, sigma=0.4), 0.7)

    log = tmp_path / "serve.out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", str(cfg_path)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        names = {m.id for m in client.models.list().data}
        assert names == {"sentiment", "sentiment@v0000", "sentiment@v0001"}

        first = _answers(client, "sentiment@v0000")
        second = _answers(client, "sentiment@v0001")
        assert [v for v, _ in first] == ["sentiment@v0000"] * 2
        assert [v for v, _ in second] == ["sentiment@v0001"] * 2
        assert [t for _, t in first] != [t for _, t in second], "the adapters answer alike"
        # nothing promoted yet: the task's name is the first run's student
        assert _answers(client, "sentiment") == first

        stream = client.chat.completions.create(
            model="sentiment@v0001", temperature=0, max_tokens=12, stream=True,
            messages=[{"role": "user", "content": REVIEWS[0]}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) \
            == second[0][1]

        promote_version(cfg, "v0001")  # what `distill promote --version v0001` does
        assert _answers(client, "sentiment") == second

        # a version made after the server started: loaded at runtime into the same engine
        add_version(run_dir, "v0002", v0, 0.8)
        promote_version(cfg, "v0002")
        third = _answers(client, "sentiment")
        assert [v for v, _ in third] == ["sentiment@v0002"] * 2
        assert [t for _, t in third] == [t for _, t in first]  # v0002 is v0000's adapter

        with pytest.raises(openai.NotFoundError, match="unknown model"):
            client.chat.completions.create(model="other", messages=[{"role": "user",
                                                                     "content": "x"}])
        health = httpx.get(f"{url}/health").json()
        assert health["default"] == "v0002" and health["loaded"] == ["v0000", "v0001", "v0002"]
        metrics = httpx.get(f"{url}/metrics").json()
        ok_requests = 2 * 5 + 1
        assert metrics["requests"] == ok_requests + 1 and metrics["errors"] == 1
        assert metrics["latency_s"]["p50"] > 0 and metrics["tokens"]["completion"] > 0
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the front stops, capture is flushed
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, log.read_text()[-3000:]

    rows = read_traffic(run_dir / "traffic").to_pylist()
    assert len(rows) == ok_requests  # one row per answered request
    assert [r["version"] for r in rows] == ["v0000"] * 2 + ["v0001"] * 2 + ["v0000"] * 2 + \
        ["v0001"] * 3 + ["v0002"] * 2
    assert rows[0]["prompt"] == REVIEWS[0] and rows[0]["formatted"]
    assert rows[1]["prompt"] == "Boring and far too long; mail me at [REDACTED:email]"
    assert [r["answer"] for r in rows[:4]] == [t for _, t in first + second]
    assert all(r["completion_tokens"] > 0 and r["latency_s"] > 0 for r in rows)
    assert len(list((run_dir / "traffic").glob("traffic-*.parquet"))) == 3  # rotated at 4 rows
