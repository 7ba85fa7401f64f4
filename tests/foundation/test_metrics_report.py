"""Metrics with bootstrap CIs, and the report's verdict logic (pure functions)."""

from __future__ import annotations

import json

import pytest

from distill import metrics
from distill.report import build_report, render_html, render_markdown, verdict


def test_accuracy_and_macro_f1_by_hand():
    gold = ["pos", "pos", "neg", "neg"]
    pred = ["pos", "neg", "neg", None]  # None: unparseable answer
    assert metrics.accuracy(pred, gold) == 0.5
    # pos: tp1 fp0 fn1 -> 2/3; neg: tp1 fp1 fn1 -> 1/2
    assert metrics.macro_f1(pred, gold, ["pos", "neg"]) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_rouge_l_and_exact_match():
    assert metrics.rouge_l("the cat sat", "the cat sat") == 1.0
    # LCS("the cat", "the big cat") = 2: P = 1, R = 2/3
    assert metrics.rouge_l("the cat", "the big cat") == pytest.approx(0.8)
    assert metrics.rouge_l("dog", "cat") == 0.0
    assert metrics.exact_match(["Hello  World"], ["hello world"]) == 1.0
    assert metrics.json_valid(['{"a": 1}', "{nope"]) == 0.5


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_n():
    small = metrics.bootstrap(metrics.accuracy, [1, 0] * 10, [1] * 20, resamples=500)
    large = metrics.bootstrap(metrics.accuracy, [1, 0] * 500, [1] * 1000, resamples=500)
    for est in (small, large):
        assert est.ci_low <= est.value == 0.5 <= est.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 3


def _est(v):
    return {"value": v, "ci_low": v - 0.02, "ci_high": v + 0.02}


def test_verdict_passes_and_fails_against_the_bar():
    models = {"teacher": {"accuracy": _est(0.86), "latency_p50_ms": 300.0},
              "student_sft": {"accuracy": _est(0.80), "latency_p50_ms": 60.0},
              "student_dpo": {"accuracy": _est(0.83), "latency_p50_ms": 61.0}}
    v = verdict(models, "accuracy", 0.95)
    assert v["passes"] and v["student"] == "student_dpo" and v["ship"] == "student_dpo"
    assert v["latency_ratio"] == pytest.approx(61 / 300)
    v = verdict(models, "accuracy", 0.99)
    assert not v["passes"] and v["ship"] == "student_base"
    assert "does not clear the bar" in v["text"]
    assert verdict({"teacher": {"accuracy": _est(0.9)}}, "accuracy", 0.9)["passes"] is None


def test_report_renders_from_stage_outputs(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "main_metric": "accuracy",
        "models": {"teacher": {"accuracy": _est(0.86)}, "student_dpo": {"accuracy": _est(0.84)}},
    }))
    manifest = {"run_id": "r1", "config": {"task": {"name": "t"}},
                "summaries": {"prompts": {"train_prompts": 100},
                              "generate": {"completions": 300},
                              "curate": {"funnel": [{"step": "vote: agreement",
                                                     "unit": "examples", "in": 100,
                                                     "dropped": 12, "out": 88,
                                                     "note": "agreement rows 30"}]}}}
    report = build_report(tmp_path, manifest, 0.95)
    assert report["verdict"]["passes"]
    assert [f["rows"] for f in report["funnel"]] == [100, 300, 88]
    md = render_markdown(report)
    assert "| vote: agreement | examples | 12 | 88 | agreement rows 30 |" in md
    assert "| student SFT+DPO | 0.840 [0.820, 0.860]" in md
    page = render_html(report, {"quality": "AAAA"})
    assert 'id="verdict"' in page and "data:image/png;base64,AAAA" in page


def test_no_verdict_against_a_teacher_that_failed_its_check(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "check").mkdir()
    majority = {"answer": "world", "metric": "accuracy", "accuracy": _est(0.25),
                "teacher_vs_majority": {"method": "exact McNemar", "p_value": 0.61}}
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "main_metric": "accuracy", "majority_baseline": majority,
        "models": {"teacher": {"accuracy": _est(0.23)}, "student_dpo": {"accuracy": _est(0.24)}},
    }))
    (tmp_path / "check" / "teacher_check.json").write_text(json.dumps({
        "passed": False, "accepted": True, "gold": True, "n": 60, "metric": "accuracy",
        "teacher": _est(0.22), "majority": {"answer": "world", **_est(0.2)},
        "teacher_vs_majority": {"p_value": 0.4}, "failures": ["..."], "warnings": [],
        "answers": {"teacher": ["world"] * 60}}))
    manifest = {"run_id": "r2", "config": {"task": {"name": "t"}},
                "summaries": {"prompts": {"train_prompts": 100},
                              "curate": {"labels": {"teacher": {"world": 98, "sports": 2},
                                                    "gold": {"world": 20, "sports": 80},
                                                    "kept": {"world": 20, "sports": 2}}}}}
    report = build_report(tmp_path, manifest, 0.95)
    v = report["verdict"]
    # The student is above 0.95 x teacher, but the teacher is at chance: no ship decision.
    assert v["passes"] is False and v["ship"] is None and v["teacher_failed_check"]
    assert v["text"].startswith("No verdict against the teacher: it failed its check "
                                "(accuracy 0.220 [0.20, 0.24] on 60 training prompts vs 0.200 "
                                "for always answering 'world'")
    assert "always answering 'world' scores 0.250 (gap -0.020" in v["text"]
    assert "answers" not in report["teacher_check"]
    assert report["funnel"][1]["step"] == "teacher check (sample)"
    assert "check FAILED" in render_markdown(report)
    from distill.report import plots

    images = plots(report, {})
    assert "labels" in images and "funnel" in images
    assert "<li>check FAILED" in render_html(report, images)


def test_every_verdict_states_the_teacher_against_the_majority_label():
    models = {"teacher": {"accuracy": _est(0.80)}, "student_dpo": {"accuracy": _est(0.79)}}
    majority = {"answer": "positive", "metric": "accuracy", "accuracy": _est(0.5),
                "teacher_vs_majority": {"method": "exact McNemar", "p_value": 0.0001}}
    v = verdict(models, "accuracy", 0.95, {"passed": True}, majority)
    assert v["passes"] and "always answering 'positive' scores 0.500 (gap +0.300" in v["text"]


def test_free_text_report_has_the_judge_the_reference_and_cut_answers(tmp_path):
    judged = {"n": 40, "win": 0.25, "tie": 0.5, "loss": 0.25,
              "counts": {"win": 10, "tie": 20, "loss": 10}, "score": _est(0.5), "verdicts": 80,
              "unparseable": 3}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "main_metric": "rouge_l", "reference": "teacher", "examples": 40,
        "models": {"teacher": {"rouge_l": _est(0.98)}, "student_sft": {"rouge_l": _est(0.61)}},
        "truncated": {"max_tokens": 128, "models": {
            "teacher": {"cut": 0, "of": 40, "max_tokens": 128},
            "student_sft": {"cut": 7, "of": 40, "max_tokens": 128}}},
        "judge": {"judge": "packaged:tiny (the teacher)", "against": "teacher",
                  "reference": "none", "rubric": None, "models": {"student_sft": judged}},
    }))
    manifest = {"run_id": "r3", "config": {"task": {"name": "t", "type": "free_text"}}}
    report = build_report(tmp_path, manifest, 0.95)
    assert report["main_metric"] == "rouge_l" and report["higher_is_better"]
    md = render_markdown(report)
    assert "| model | rouge_l (95% CI, higher is better) | cut at 128 tok |" in md
    assert "| student SFT | 0.610 [0.590, 0.630] | 7/40 |" in md
    assert "No gold answers for this task: the teacher's answer is the reference." in md
    assert "Answers cut at 128 tokens (scored as they are, not dropped): teacher 0/40, " \
           "student SFT 7/40." in md
    assert "| student SFT | 25.0% | 50.0% | 25.0% | 0.500 [0.480, 0.520] | 40 | 3/80 |" in md
    assert "with no reference answer" in md
    from distill.report import plots

    images = plots(report, {})
    assert "judge" in images
    page = render_html(report, images)
    assert 'id="judge"' in page and "No gold answers for this task" in page


def test_json_report_names_field_f1_from_the_task(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "reference": "gold", "examples": 10,
        "models": {"teacher": {"field_f1": _est(0.9)}, "student_dpo": {"field_f1": _est(0.88)}}}))
    manifest = {"run_id": "r4", "config": {"task": {"name": "t", "type": "json"}}}
    report = build_report(tmp_path, manifest, 0.95)
    assert report["main_metric"] == "field_f1" and report["verdict"]["passes"]
    md = render_markdown(report)
    assert "field_f1 (95% CI, higher is better)" in md and "cut at" not in md
    assert "Scored against the gold answers of 10 held-out rows" in md
