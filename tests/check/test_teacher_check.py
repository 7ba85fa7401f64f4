"""The teacher check and the collapse watch, through the CLI, on a prompt file with gold labels.

The teacher is the FAKE endpoint of fake_teacher.py (a collapsed teacher can't be had on demand
from a real small engine); prompts, check, generate (Ray actors), curate and the run dir are real.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from fake_teacher import fake_teacher

LABELS = ["sports", "business", "science", "world"]
WORDS = ("match goal market shares lab cell election border team profit atom treaty coach "
         "bank orbit summit league merger genome minister stadium stock vaccine embassy "
         "season trade fossil refugee player budget quantum").split()


def _prompt_file(path: Path, n: int = 120) -> Path:
    rng = random.Random(7)
    rows = [{"text": f"Report {i}: " + " ".join(rng.choice(WORDS) for _ in range(30)),
             "label": LABELS[i % len(LABELS)]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gold_of(text: str, path: Path) -> str:
    number = int(re.search(r"Report (\d+):", text).group(1))
    return LABELS[number % len(LABELS)]


def _config(tmp_path: Path, url: str, **check) -> Path:
    cfg = {
        "run_name": "check", "output_dir": str(tmp_path / "run"), "seed": 0,
        "task": {"name": "topics", "type": "classification", "labels": LABELS,
                 "instruction": "Which topic: sports, business, science or world?"},
        "prompts": {"source": "jsonl", "path": str(_prompt_file(tmp_path / "p.jsonl")),
                    "test_size": 20},
        "teacher": {"model": "fake", "backend": "openai", "batch_size": 50,
                    "endpoint": {"base_url": url, "model": "fake", "max_retries": 0}},
        "generate": {"n": 1, "temperature": 0.0, "max_tokens": 4, "shard_size": 50},
        "check": {"sample_size": 40, "student_baseline": False, **check},
        "student": {"model": "packaged:smollm2-135m-instruct"},
        "curate": {"dedup": {"use_ray": False}},
        "ray": {"num_cpus": 2},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_a_one_label_teacher_is_stopped_before_generation_with_the_figures(tmp_path):
    with fake_teacher(lambda text: "sports") as fake:
        cfg = _config(tmp_path, fake.url)
        assert _cli("prompts", str(cfg)).exit_code == 0
        res = _cli("generate", str(cfg))
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "teacher check failed (40 training prompts with gold" in out
    # Always "sports" against an even gold: accuracy ~0.25, no better than the majority label.
    assert re.search(r"not significantly better than always answering '\w+': accuracy 0\.\d+", out)
    assert "label collapse" in out and "answered 'sports' for 40 of 40 (100%)" in out
    assert "task.template" in out and "check.on_fail=warn" in out
    assert fake.requests == 40  # the sample only: nothing was generated at scale
    run = tmp_path / "run"
    assert not list((run / "generate").glob("shards/*.parquet"))
    result = json.loads((run / "check" / "teacher_check.json").read_text())
    assert result["passed"] is False and result["teacher"]["value"] < 0.4
    assert result["labels"]["level"] == "stop"


def test_a_good_teacher_passes_and_a_new_decision_asks_no_engine_again(tmp_path):
    wrong = {"Report 3:", "Report 10:"}  # a few mistakes, so the CI is not degenerate

    def answer(text: str) -> str:
        gold = _gold_of(text, tmp_path)
        return "world" if any(w in text for w in wrong) and gold != "world" else gold

    with fake_teacher(answer) as fake:
        cfg = _config(tmp_path, fake.url)
        _cli("prompts", str(cfg))
        res = _cli("check", str(cfg))
        assert res.exit_code == 0, res.output
        asked = fake.requests
        res = _cli("check", str(cfg), "--force", "--set", "check.alpha=0.01")
        assert res.exit_code == 0 and fake.requests == asked
    result = json.loads((tmp_path / "run" / "check" / "teacher_check.json").read_text())
    assert result["passed"] and result["teacher"]["value"] >= 0.9
    assert result["teacher_vs_majority"]["p_value"] < 0.01
    assert result["teacher"]["ci_low"] < result["teacher"]["value"] <= result["teacher"]["ci_high"]


@pytest.mark.slow
def test_accepting_a_collapsed_teacher_warns_at_every_step_and_gold_filters(tmp_path, ray_local):
    """check.on_fail=warn: the run goes on, and generate and curate each say so."""
    with fake_teacher(lambda text: "sports") as fake:
        cfg = _config(tmp_path, fake.url, on_fail="warn")
        _cli("prompts", str(cfg))
        res = _cli("generate", str(cfg))
        assert res.exit_code == 0, res.output
        out = " ".join(res.output.split())
        assert "teacher check failed" in out and "going on" in out
        assert "label collapse: in the generated completions" in out
        res = _cli("curate", str(cfg))
    assert res.exit_code == 0, res.output
    assert "label collapse: after the vote" in " ".join(res.output.split())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    gold = manifest["summaries"]["curate"]["gold"]
    # 100 training prompts, a quarter of them sports: the rest contradict the gold.
    assert gold == {"mode": "filter", "checked": 100, "agree": 25, "disagree": 75,
                    "agreement": 0.25}
    assert manifest["summaries"]["curate"]["examples_out"] == 25
    assert manifest["summaries"]["generate"]["labels"]["level"] == "stop"


def _no_gold_run(tmp_path: Path, task: dict):
    from distill.core.config import RunConfig
    from distill.core.rundir import Run

    return Run(RunConfig.model_validate({
        "run_name": "nogold", "output_dir": str(tmp_path / "run"),
        "task": {"name": "t", "instruction": "Answer.", **task},
        "teacher": {"model": "fake"}, "student": {"model": "fake"}}))


def test_without_gold_the_check_reads_label_shares_and_answer_diversity(tmp_path):
    from distill.check import Answers, judge

    labels = _no_gold_run(tmp_path / "a", {"type": "classification", "labels": LABELS})
    one_label = Answers("k", [str(i) for i in range(30)], [None] * 30, ["world"] * 30, None)
    result = judge(labels, one_label)
    assert not result["passed"] and result["labels"]["reference"] == "uniform prior"
    assert "answered 'world' for 30 of 30 (100%); the uniform prior has it for 25%" \
        in result["failures"][0]
    varied = Answers("k", one_label.example_ids, [None] * 30,
                     [LABELS[i % 4] for i in range(30)], None)
    assert judge(labels, varied)["passed"]

    free = _no_gold_run(tmp_path / "b", {"type": "free_text"})
    same = Answers("k", one_label.example_ids, [None] * 30, ["I cannot help."] * 27
                   + ["a", "b", "c"], None)
    result = judge(free, same)
    assert not result["passed"] and result["distinct_answers"] == pytest.approx(4 / 30, abs=1e-4)
    assert "only 13% of the teacher's answers are distinct" in result["failures"][0]
