"""Shrunken generative tasks end to end through `distill run` (prompts -> report): a JSON
extraction task with gold fields and a free-text task from two columns, both on data shipped in
the `aclsum` package. The packaged 135M model plays teacher, judge and student (start-up time);
what is asserted is the plumbing a generative task needs: the exact held-out size, field-level
F1, the judge's table, and a verdict sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "teacher": {"model": "packaged:smollm2-135m-instruct", "max_model_len": 512, "batch_size": 16},
    "student": {"model": "packaged:smollm2-135m-instruct", "quantization": "nf4",
                "max_seq_len": 160, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "serve": "lora"},
    # the teacher check's own paths are tested in tests/check; here only the teacher's part
    # runs (the student baseline would be one more engine start per run)
    "check": {"on_fail": "warn", "student_baseline": False},
    "sft": {"max_steps": 2, "batch_size": 4, "logging_steps": 1},
    "dpo": {"max_steps": 1, "batch_size": 2, "logging_steps": 1},
    "eval": {"bootstrap": 100, "forgetting_items": 0,
             "general_prompts": [{"prompt": "What is 2 + 3? Answer with a number.",
                                  "expect": ["5", "five"]}]},
    "bench": {"enabled": False},
}
TEST_SIZE = 8


def _run(tmp_path: Path, config: str, **overrides) -> tuple[Path, dict]:
    cfg = yaml.safe_load((ROOT / "configs" / config).read_text())
    for section, values in {**TINY, **overrides}.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    out = tmp_path / "run"
    cfg["output_dir"] = str(out)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return out, json.loads((out / "report" / "report.json").read_text())


@pytest.mark.slow
def test_json_extraction_task_end_to_end(tmp_path):
    out, report = _run(tmp_path, "references_json.yaml",
                       prompts={"test_size": TEST_SIZE, "max_train_prompts": 16},
                       generate={"n": 2, "max_tokens": 48, "shard_size": 16})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summaries"]["prompts"]["test_examples"] == TEST_SIZE
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["examples"] == TEST_SIZE and results["main_metric"] == "field_f1"
    for name in ("teacher", "student_base", "student_sft", "student_dpo"):
        f1 = results["models"][name]["field_f1"]
        assert 0.0 <= f1["ci_low"] <= f1["value"] <= f1["ci_high"] <= 1.0
    assert report["main_metric"] == "field_f1" and report["verdict"]["text"]


@pytest.mark.slow
def test_free_text_task_end_to_end_with_the_judge(tmp_path):
    out, report = _run(tmp_path, "paper_outcomes.yaml",
                       prompts={"test_size": TEST_SIZE, "max_train_prompts": 12},
                       generate={"n": 2, "max_tokens": 24, "shard_size": 16},
                       task={"max_answer_tokens": 24},
                       # The 135M stand-in teacher seldom ends a sentence within 24 tokens; the
                       # truncation filter itself is tested in tests/curation.
                       curate={"target": "judge", "filters": {"drop_truncated": False}},
                       student={**TINY["student"], "max_seq_len": 256})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summaries"]["prompts"]["test_examples"] == TEST_SIZE
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["examples"] == TEST_SIZE and results["main_metric"] == "rouge_l"
    judged = results["judge"]["models"]
    # the teacher answered last and judged on its own eval server: no second teacher engine
    assert results["judge"]["asked_on"] == "the teacher's eval server"
    assert results["seconds"]["judge"] > 0
    # The 135M stand-in judge may tie every preference pair: DPO is then skipped, with why.
    dpo = manifest["summaries"]["dpo"]
    tuned = {"student_sft"} | (set() if dpo.get("skipped") else {"student_dpo"})
    assert dpo.get("reason", "no preference pairs").startswith("no preference pairs")
    assert set(judged) == {"student_base"} | tuned
    for verdicts in judged.values():
        assert sum(verdicts["counts"].values()) == TEST_SIZE
        assert verdicts["win"] + verdicts["tie"] + verdicts["loss"] == pytest.approx(1.0)
    lines = (out / "eval" / "judge" / "student_sft.jsonl").read_text().splitlines()
    assert len(lines) == 2 * TEST_SIZE  # both orders, prompts and raw verdicts kept
    # The student's input (abstract + conclusion) is longer than its window: cut, not dropped.
    sft = manifest["summaries"]["sft"]
    assert sft["inputs_shortened"] > 0 and sft["train_examples"] + sft["val_examples"] \
        == manifest["summaries"]["curate"]["examples_out"]
    assert report["verdict"]["text"]
