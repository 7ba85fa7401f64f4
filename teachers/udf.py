"""The Ray Data `map_batches` class: one teacher engine per actor, one row per completion out.

The same class runs on a laptop CPU and on a GPU cluster; only the actor's resources differ
(see teachers/stage.py). Rows carry their lineage (prompt id, seed, backend, model, sampling).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from distill.core.config import TeacherConfig
from distill.core.errors import DistillError
from teachers.base import SamplingSpec

# Exactly the run-dir contract for generate/shards/*.parquet, in this order.
ROW_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("prompt_id", pa.string()), ("example_id", pa.string()),
    ("text", pa.string()), ("label", pa.string()), ("messages", pa.string()),
    ("completion", pa.string()), ("sample_index", pa.int64()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("finish_reason", pa.string()),
    ("latency_s", pa.float64()), ("backend", pa.string()), ("model", pa.string()),
    ("sampling", pa.string()), ("seed", pa.int64()), ("logprobs", pa.string()),
])
# What the UDF adds for the driver: which shard a row belongs to, and why it failed.
UDF_SCHEMA = ROW_SCHEMA.append(pa.field("shard", pa.string())).append(
    pa.field("error", pa.string()))


class TeacherUDF:
    """Holds one engine for the actor's lifetime; `__call__` handles one batch of prompts."""

    def __init__(self, teacher: dict, model_path: str, model_ref: str, sampling: dict,
                 seed: int, fault: dict | None = None, pool: list[str] | None = None):
        """`pool`: the Ray actor names of the run's teacher pool (`teacher.server: run`): this
        actor is then a client of those servers instead of holding an engine."""
        from teachers.factory import make_generator

        self.teacher = TeacherConfig.model_validate(teacher)
        self.sampling = SamplingSpec(**sampling)
        self.sampling_json = self.sampling.to_json()
        self.model_ref = model_ref
        self.fault = fault or {}
        self.startup_error: DistillError | None = None
        try:
            if pool:
                from teachers.pool import PoolClients

                self.generator = PoolClients(pool, self.teacher.batch_size)
            else:
                self.generator = make_generator(self.teacher, model_path, seed=seed)
        except DistillError as exc:
            # A named error (an API key variable unset on this node) is raised with the first
            # batch instead: from a batch Ray hands the exception itself to the driver, from
            # a constructor only its text, and it would restart the actor for nothing.
            self.startup_error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.startup_error is not None:
            raise self.startup_error
        self._maybe_crash()
        rows = batch.to_pylist()
        messages = [json.loads(r["messages"]) for r in rows]
        seeds = [int(r["seed"]) for r in rows]
        completions = self.generator.generate(messages, self.sampling, seeds=seeds)
        out = [self._row(rows[c.prompt_index], c) for c in completions]
        return pa.Table.from_pylist(out, schema=UDF_SCHEMA)

    def _row(self, src: dict[str, Any], c) -> dict[str, Any]:
        return {
            "row_id": f"{src['prompt_id']}-{c.sample_index}", "prompt_id": src["prompt_id"],
            "example_id": src["example_id"], "text": src["text"], "label": src["label"],
            "messages": src["messages"], "completion": c.text, "sample_index": c.sample_index,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason, "latency_s": c.latency_s,
            "backend": self.generator.backend, "model": self.model_ref,
            "sampling": self.sampling_json, "seed": c.seed,
            "logprobs": None if c.logprobs is None else json.dumps(c.logprobs),
            "shard": src["shard"], "error": c.error,
        }

    def _maybe_crash(self) -> None:
        # FAULT INJECTION (tests only, set through DISTILL_FAULT_INJECT): kill this actor
        # process once, the way an OOM kill or a dead engine would, to prove Ray restarts
        # the actor and retries the batch.
        marker = self.fault.get("actor_crash_once")
        if marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
