"""Tiny runs for the student tests: a config, and Parquet files shaped like curate/pairs output."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distill.core.messages import text_id

POSITIVE = ["a joy to watch", "warm and funny", "a brilliant, moving film", "great acting throughout",
            "I loved every minute", "smart, sharp and delightful", "a triumph", "beautifully shot"]
NEGATIVE = ["a dull mess", "boring and far too long", "the plot makes no sense", "flat, lifeless acting",
            "I walked out", "a tedious waste of time", "clumsy and loud", "painfully unfunny"]
SUBJECTS = ["The movie", "This sequel", "The new drama", "Her debut", "The remake", "This comedy",
            "The thriller", "That film"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        phrase = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        text = f"{rng.choice(SUBJECTS)} is {phrase} ({i})."
        rows.append({"example_id": text_id(text), "text": text, "label": label})
    return rows


def write_curated(run_dir: Path, n: int = 48, seed: int = 0) -> Path:
    rows = sentiment_rows(n, seed)
    table = pa.table({
        "example_id": [r["example_id"] for r in rows],
        "text": [r["text"] for r in rows],
        "label": [r["label"] for r in rows],
        "target": [r["label"] for r in rows],
        "row_ids": [[f"{r['example_id']}-0"] for r in rows],
        "agreement": [1.0] * len(rows),
    })
    path = run_dir / "curate" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_pairs(run_dir: Path, n: int = 32, seed: int = 1) -> Path:
    rows = sentiment_rows(n, seed)
    flip = {"positive": "negative", "negative": "positive"}
    table = pa.table({
        "example_id": [r["example_id"] for r in rows],
        "text": [r["text"] for r in rows],
        "chosen": [r["label"] for r in rows],
        "rejected": [flip[r["label"]] for r in rows],
        "chosen_score": [1.0] * len(rows),
        "rejected_score": [0.0] * len(rows),
        "margin": [1.0] * len(rows),
        "origin": ["teacher"] * len(rows),
    })
    path = run_dir / "pairs" / "pairs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def tiny_config(run_dir: Path, **sections) -> dict:
    cfg = {
        "run_name": "students-test",
        "output_dir": str(run_dir),
        "seed": 0,
        "task": {
            "name": "sentiment",
            "type": "classification",
            "labels": ["positive", "negative"],
            "instruction": "Classify the sentiment of the movie review. Answer positive or negative.",
            "student_instruction": "Sentiment (positive/negative):",
        },
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct"},
        "student": {"model": "packaged:smollm2-135m-instruct", "quantization": "nf4",
                    "max_seq_len": 128, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "sft": {"epochs": 1, "max_steps": 12, "batch_size": 4, "learning_rate": 1e-3,
                "save_steps": 6, "logging_steps": 2, "val_fraction": 0.2, "warmup_ratio": 0.0},
        "dpo": {"max_steps": 8, "batch_size": 4, "learning_rate": 5e-4, "save_steps": 4,
                "logging_steps": 1, "warmup_ratio": 0.0, "beta": 0.1},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_config(run_dir: Path, **sections) -> Path:
    path = run_dir / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_config(run_dir, **sections), sort_keys=False))
    return path


def build_run(run_dir: Path, pairs: bool = False, n: int = 48, **sections):
    """A Run over a tiny curated set (and pairs), with config overrides per section."""
    from distill.core.config import load_config
    from distill.core.rundir import Run

    write_curated(run_dir, n=n)
    if pairs:
        write_pairs(run_dir)
    return Run(load_config(write_config(run_dir, **sections)))
