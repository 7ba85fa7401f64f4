"""Builders for the refresh tests: a growing JSONL prompt source, a config, and a stage runner.

The runner runs the real prompts and curate stages (real Parquet, the real persistent MinHash
index). Generation and training are replaced by cheap stand-ins in the unit tests ONLY because
the real ones need vLLM engines and QLoRA training (minutes each on this CPU); the stand-ins
follow the run-dir contracts of the brief exactly. The real teacher stage is exercised by the
slow test in test_refresh_generate.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from config_helpers import merge_sections

from distill.core.config import RunConfig
from distill.pipeline import run_stage
from distill.core.rundir import Run

LABELS = ["positive", "negative"]
VOCAB = [f"w{i:03d}" for i in range(400)]


def sentences(n: int, seed: int) -> list[dict[str, str]]:
    """Distinct random 14-word texts: no near-duplicates, no shared 8-grams by chance."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(VOCAB, 14)), "label": LABELS[i % 2]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_config(tmp: Path, source: Path, **sections: Any) -> RunConfig:
    data: dict[str, Any] = {
        "run_name": "fresh",
        "output_dir": str(tmp / "run"),
        "task": {"name": "sentiment", "type": "classification", "labels": LABELS,
                 "instruction": "Positive or negative?"},
        "prompts": {"source": "jsonl", "path": str(source), "test_size": 6},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct"},
        "student": {"model": "packaged:smollm2-135m-instruct"},
        "curate": {"dedup": {"use_ray": False}},
    }
    return RunConfig.model_validate(merge_sections(data, sections))


def fake_generate(run: Run) -> dict:
    """Stand-in for the vLLM teacher (see module docstring): the gold label as the completion."""
    prompts = pq.read_table(run.dir / "prompts" / "train.parquet").to_pylist()
    rows = []
    for p in prompts:
        pid = f"p{p['example_id'][:15]}"
        rows.append({
            "row_id": f"{pid}-0", "prompt_id": pid, "example_id": p["example_id"],
            "text": p["text"], "label": p["label"],
            "messages": json.dumps([{"role": "user", "content": p["text"]}]),
            "completion": p["label"], "sample_index": 0, "prompt_tokens": 14,
            "completion_tokens": 1, "finish_reason": "stop", "latency_s": 0.0,
            "backend": "fake", "model": "fake", "sampling": "{}", "seed": 0, "logprobs": None,
        })
    shards = run.dir / "generate" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), shards / "shard-00000.parquet")
    return {"prompts": len(prompts), "rows": len(rows)}


HELD_OUT = 400  # items in the stand-in eval: enough for the gate's paired tests to decide


def fake_predictions(run: Run, accuracy: dict[str, float]) -> None:
    """eval/predictions.parquet as eval writes it, on HELD_OUT stand-in items (the real
    held-out set here has 6 rows, too few to show anything): each model right on its first
    accuracy x HELD_OUT items, so versions are paired item by item."""
    rows = [{"example_id": f"h{i:04d}", "model": model, "answer": "", "gold": "positive",
             "parsed": "positive" if i < round(acc * HELD_OUT) else "negative"}
            for model, acc in accuracy.items() for i in range(HELD_OUT)]
    pq.write_table(pa.Table.from_pylist(rows), run.stage_dir("eval") / "predictions.parquet")


class FakeTrainer:
    """Stand-in for pairs/sft/dpo/export/eval (see module docstring): adapters are empty
    folders, and eval reports the accuracy the test chose for this run dir (the teacher at
    `teacher`, the prompted base student at 0.5, no forgetting)."""

    def __init__(self, accuracy: float, teacher: float = 0.72):
        self.accuracy = accuracy
        self.teacher = teacher

    def __call__(self, run: Run, name: str) -> dict:
        if name in ("sft", "dpo"):
            adapter = run.stage_dir(name) / "adapter"
            adapter.mkdir(exist_ok=True)
            (adapter / "adapter_config.json").write_text("{}")
        if name == "eval":
            accuracy = {"teacher": self.teacher, "student_base": 0.5,
                        "student_sft": self.accuracy - 0.01, "student_dpo": self.accuracy}
            results = {"main_metric": "accuracy",
                       "models": {m: {"accuracy": a} for m, a in accuracy.items()},
                       "general_ability": {m: 1.0 for m in accuracy if m != "teacher"}}
            (run.stage_dir("eval") / "results.json").write_text(json.dumps(results))
            fake_predictions(run, accuracy)
        return {"fake": name}


class Runner:
    """A stage runner: real stages through distill.pipeline.run_stage, stand-ins recorded
    in the manifest the same way, and a log of what actually ran (for resume checks)."""

    def __init__(self, accuracy: float = 0.7, fail_at: str | None = None,
                 real: tuple[str, ...] = ("prompts", "curate"), teacher: float = 0.72):
        self.real = real
        self.train = FakeTrainer(accuracy, teacher)
        self.fail_at = fail_at
        self.ran: list[tuple[str, str]] = []
        self.fakes: dict[str, Callable[[Run], dict]] = {"generate": fake_generate}

    def __call__(self, run: Run, name: str, force: bool = False) -> dict | None:
        if run.is_done(name) and not force:
            return run.manifest["summaries"].get(name)
        self.ran.append((run.dir.name, name))
        if name == self.fail_at:
            raise RuntimeError(f"simulated crash in {name}")  # a fault we can't cause otherwise
        if name in self.real:
            return run_stage(run, name, force=force)
        func = self.fakes.get(name) or (lambda r: self.train(r, name))
        with run.stage(name):
            summary = func(run)
            run.record_summary(name, summary)
        return summary


def first_run(cfg: RunConfig, runner: Runner) -> Run:
    """The first `distill run` (v0000): prompts, generate, curate, then training and eval."""
    run = Run(cfg)
    for name in ("prompts", "generate", "curate", "pairs", "sft", "dpo", "export", "eval"):
        runner(run, name)
    return run


def ids(path: Path) -> set[str]:
    return set(pq.read_table(path, columns=["example_id"]).column("example_id").to_pylist())
