"""A finished run with versioned students, without training: what `distill serve` needs.

Each version's student is a real PEFT LoRA on the packaged smollm2-135m-instruct whose B
matrices hold Gaussian noise (as tests/students/test_opd.py does: a fresh LoRA is the
identity). Different seeds and sizes give adapters that answer differently, which is all the
serve test needs to tell versions apart; training two adapters would cost minutes here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from distill.core import versions as V
from distill.core.artifacts import RunPaths

STUDENT = "packaged:smollm2-135m-instruct"


def serve_config(run_dir: Path, **sections) -> dict:
    cfg = {
        "run_name": "serve-test", "output_dir": str(run_dir), "seed": 0,
        "task": {"name": "sentiment", "type": "classification", "labels": ["positive", "negative"],
                 "instruction": "Classify the sentiment of the movie review. Answer positive "
                                "or negative.",
                 "student_instruction": "Sentiment (positive/negative):", "max_answer_tokens": 8},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct", "max_model_len": 512},
        "student": {"model": STUDENT, "quantization": "none", "max_seq_len": 256,
                    "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_version(base: Path, version: str, adapter_from, accuracy: float) -> Path:
    """Version `version` as eval leaves it: eval/results.json and sft/adapter.
    `adapter_from`: a callable writing the adapter into a folder, or a folder to copy."""
    run_dir = V.model_dir(base, version)
    paths = RunPaths(run_dir)
    if version != V.BASE_VERSION:
        V.save_lineage(V.version_dir(base, version), {"version": version, "status": "kept"})
    adapter = paths.adapter("sft")
    adapter.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(adapter_from, Path):
        shutil.copytree(adapter_from, adapter)
    else:
        adapter_from(adapter)
    paths.eval_results.parent.mkdir(parents=True, exist_ok=True)
    paths.eval_results.write_text(json.dumps({
        "main_metric": "accuracy", "models": {"student_sft": {"accuracy": accuracy}}}))
    return adapter


def fake_version(base, version: str, accuracy: float) -> None:
    """An evaluated version as `student_record` reads it (no weights: nothing runs here)."""
    paths = RunPaths(V.model_dir(base, version))
    if version != V.BASE_VERSION:
        V.save_lineage(V.version_dir(base, version), {"version": version})
    paths.adapter("sft").mkdir(parents=True)
    paths.eval_results.parent.mkdir(parents=True, exist_ok=True)
    paths.eval_results.write_text(
        '{"main_metric": "accuracy", "models": {"student_sft": {"accuracy": %s}}}' % accuracy)
