"""The console of a shrunken run through the CLI (prompts and generate, with the FAKE
OpenAI-compatible teacher of fake_openai.py and a real local Ray): progress bars and stage
outcomes only (one line each); Ray's and Ray Data's INFO lines and Python warnings go to the run's library log,
which the console names. `--verbose` puts them back on the console."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from fake_openai import fake_openai

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# What a library's log line looks like on the console: Ray's "2026-... INFO worker.py:2038 --",
# vLLM's "INFO 12-01 19:02:05 [file.py:12]", a Python warning "...: SomeWarning: ...", and
# the trainer's raw dicts.
LIBRARY_LINE = re.compile(r"\b(INFO|WARNING|DEBUG)\b|Warning:|\{'loss'")


@pytest.fixture
def ray_tmp():
    path = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # short: Ray's socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _shrunken_run(tmp_path: Path, url: str) -> Path:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"text": f"review {i}: fine film", "label": "positive"})
                           + "\n" for i in range(12)))
    cfg = yaml.safe_load((ROOT / "configs" / "tiny_cpu.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), ray={"num_cpus": 2})
    cfg["prompts"] = {"source": "jsonl", "path": str(src), "test_size": 2}
    cfg["teacher"] = {"model": "fake-teacher", "backend": "openai", "batch_size": 4,
                      "endpoint": {"base_url": url, "model": "fake", "max_retries": 1}}
    cfg["generate"] = {**cfg.get("generate", {}), "n": 1, "shard_size": 4}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(config: Path, ray_tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DISTILL_VERBOSE")}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "distill.cli", *flags, "run", str(config),
                           "--stage", "prompts", "--stage", "generate"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_console_has_no_library_lines_and_names_the_log(tmp_path, ray_tmp):
    with fake_openai() as (url, _):
        config = _shrunken_run(tmp_path, url)
        proc = _cli(config, ray_tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert [line for line in console.splitlines() if LIBRARY_LINE.search(line)] == []
    # One line per stage outcome (the whole summary is in manifest.json).
    assert re.search(r"^prompts: done in [\d.]+s: examples 12, ", proc.stdout, re.M)
    assert re.search(r"^generate: done in [\d.]+s: prompts 10, completions 10, errors 0",
                     proc.stdout, re.M)
    log = tmp_path / "run" / "logs" / "libraries.log"
    assert f"library logs: {log}\n" in proc.stdout
    assert "Started a local Ray instance" in log.read_text()  # Ray's INFO line, kept there


def test_verbose_shows_library_lines(tmp_path, ray_tmp):
    with fake_openai() as (url, _):
        config = _shrunken_run(tmp_path, url)
        proc = _cli(config, ray_tmp, "--verbose")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stderr
