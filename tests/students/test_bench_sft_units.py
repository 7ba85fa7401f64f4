"""benchmarks/bench_sft.py: the MFU formula its GPU figures rest on, and the random student it
writes once and reuses across device calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from distill.core.models import resolve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sft", ROOT / "benchmarks" / "bench_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_reproduces_issue_17s_figure(bench):
    # Issue 17's packed 8B-shaped run: 5,707 tokens/s on an H100 = 16.6% MFU. Its student had
    # Llama-3-8B's layers and the SmolLM2 tokenizer's 49,152-row LM head.
    n = bench.linear_params(bench.llama_shape("8b", 49152))
    assert n == 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336) + 4096 * 49152
    assert bench.mfu(5707, n, "NVIDIA H100 80GB HBM3") == pytest.approx(0.166, abs=5e-4)
    # Llama-3's own 128,256-row head adds 0.32 B weights a token passes through
    assert bench.linear_params(bench.llama_shape("8b", 128256)) - n == 4096 * (128256 - 49152)
    assert bench.mfu(5707, n, "a card not in the table") is None


def test_random_student_is_written_once_and_rebuilt_for_other_shapes(bench, tmp_path, capsys):
    tokenizer = Path(resolve("packaged:smollm2-135m-instruct").path)
    folder = tmp_path / "student"
    bench.cached_random_llama("tiny", tokenizer, 60000, folder)
    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns

    bench.cached_random_llama("tiny", tokenizer, 60000, folder)
    assert "reusing the random tiny student" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == written

    bench.cached_random_llama("tiny", tokenizer, None, folder)  # the tokenizer's own vocabulary
    assert "reusing" not in capsys.readouterr().out
    assert weights.stat().st_mtime_ns != written
