"""Small builders shared by the teacher tests: a run config and a prompts/train.parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill.core.config import RunConfig
from distill.core.messages import text_id
from distill.core.rundir import Run

REVIEWS = [
    "a gripping, beautifully shot thriller", "dull and far too long", "a warm, funny delight",
    "the plot makes no sense at all", "one of the best films of the year", "painfully unfunny",
    "charming performances all round", "a boring mess", "smart, moving and true",
    "i walked out after an hour", "an instant classic", "lifeless and predictable",
    "tender and wise", "a total waste of time", "bold and brilliant", "clumsy and loud",
]


def make_run(tmp: Path, *, model: str = "packaged:smollm2-135m-instruct", n: int = 2,
             texts: list[str] | None = None, teacher: dict | None = None,
             generate: dict | None = None) -> Run:
    cfg = RunConfig.model_validate({
        "run_name": "t", "output_dir": str(tmp / "run"),
        "task": {"name": "sentiment", "type": "classification",
                 "labels": ["positive", "negative"],
                 "instruction": "Is this review positive or negative? Answer in one word.",
                 "template": "{instruction}\n\nReview: {input}"},
        "teacher": {"model": model, "max_model_len": 256, "batch_size": 4, **(teacher or {})},
        "generate": {"n": n, "temperature": 0.8, "max_tokens": 4, "shard_size": 4,
                     "seed": 7, **(generate or {})},
        "student": {"model": "packaged:smollm2-135m-instruct"},
        "cost": {"teacher": {"per_hour_usd": 2.0}},
        "ray": {"num_cpus": 2},
    })
    run = Run(cfg)
    write_prompts(run, texts if texts is not None else REVIEWS[:12])
    return run


def write_prompts(run: Run, texts: list[str]) -> None:
    rows = [{"example_id": text_id(t), "text": t, "label": "positive" if i % 2 else None,
             "source": "test", "line": i + 1} for i, t in enumerate(texts)]
    path = run.dir / "prompts" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("example_id", pa.string()), ("text", pa.string()),
                        ("label", pa.string()), ("source", pa.string()), ("line", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_rows(run: Run) -> list[dict]:
    files = sorted((run.dir / "generate" / "shards").glob("shard-*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


LINEAGE = ("row_id", "prompt_id", "example_id", "text", "label", "messages", "completion",
           "sample_index", "prompt_tokens", "completion_tokens", "finish_reason", "latency_s",
           "backend", "model", "sampling", "seed", "logprobs")
