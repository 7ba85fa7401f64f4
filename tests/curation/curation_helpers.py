"""Builders for curation tests: a run config, generate shards and a held-out set as real Parquet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from config_helpers import merge_sections

from distill.core.config import RunConfig
from distill.core.messages import text_id
from distill.core.rundir import Run

LABELS = ["positive", "negative"]


def make_config(out: Path, **sections: Any) -> RunConfig:
    base: dict[str, Any] = {
        "run_name": "cur",
        "output_dir": str(out),
        "task": {"name": "sentiment", "type": "classification", "labels": LABELS,
                 "instruction": "Positive or negative?"},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct"},
        "student": {"model": "packaged:smollm2-135m-instruct"},
        "curate": {"dedup": {"use_ray": False}},
    }
    return RunConfig.model_validate(merge_sections(base, sections))


def gen_row(text: str, completion: str, sample: int = 0, *, label: str | None = None,
            finish: str = "stop", tokens: int | None = None) -> dict[str, Any]:
    example_id = text_id(text)
    prompt_id = f"p{example_id[:10]}"
    return {
        "row_id": f"{prompt_id}-{sample}", "prompt_id": prompt_id, "example_id": example_id,
        "text": text, "label": label, "messages": json.dumps([{"role": "user", "content": text}]),
        "completion": completion, "sample_index": sample, "prompt_tokens": len(text.split()),
        "completion_tokens": tokens if tokens is not None else len(completion.split()),
        "finish_reason": finish, "latency_s": 0.01, "backend": "vllm", "model": "packaged:t",
        "sampling": "{}", "seed": 0, "logprobs": None,
    }


def samples(text: str, completions: list[str], **kw: Any) -> list[dict[str, Any]]:
    return [gen_row(text, c, i, **kw) for i, c in enumerate(completions)]


def write_shards(run: Run, rows: list[dict[str, Any]], shard_size: int = 50) -> list[Path]:
    d = run.dir / "generate" / "shards"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, max(len(rows), 1), shard_size):
        p = d / f"shard-{k // shard_size:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k:k + shard_size]), p)
        paths.append(p)
    return paths


def write_test_set(run: Run, texts: list[str]) -> None:
    d = run.dir / "prompts"
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"example_id": text_id(t), "text": t, "label": None, "source": "t", "line": i}
            for i, t in enumerate(texts)]
    schema = pa.schema([("example_id", pa.string()), ("text", pa.string()), ("label", pa.string()),
                        ("source", pa.string()), ("line", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "test.parquet")


def read(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()
