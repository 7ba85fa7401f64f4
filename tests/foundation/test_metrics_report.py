"""Metrics with bootstrap CIs, and the report's verdict logic (pure functions)."""

from __future__ import annotations

import json

import pytest

import pyarrow as pa
import pyarrow.parquet as pq

from distill import decision as D
from distill import metrics
from distill.core.config import RunConfig
from distill.report import build_report, render_html, render_markdown, verdict



def report_config(task_type: str = "classification") -> RunConfig:
    """The config build_report reads (task type, decision rule, prices)."""
    task = {"name": "t", "type": task_type, "instruction": "?",
            "labels": ["positive", "negative"] if task_type == "classification" else None,
            "json_schema": {"type": "object"} if task_type == "json" else None}
    return RunConfig.model_validate({
        "run_name": "t", "output_dir": "/tmp/unused", "task": task,
        "teacher": {"model": "x"}, "student": {"model": "y"},
        "cost": {"teacher": {"per_hour_usd": 2.0}, "student": {"per_hour_usd": 1.0}}})


CFG = report_config()


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


def _correct(n: int, total: int = 200) -> dict[str, float]:
    return {f"x{i:03d}": float(i < n) for i in range(total)}


def _predictions(run_dir, **correct: int) -> None:
    """eval/predictions.parquet with the first `correct[model]` of 200 items right."""
    rows = [{"example_id": f"x{i:03d}", "model": m, "answer": "", "gold": "positive",
             "parsed": "positive" if i < n else "negative"}
            for m, n in correct.items() for i in range(200)]
    (run_dir / "eval").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), run_dir / "eval" / "predictions.parquet")


def test_verdict_is_the_decision_with_latency_and_cost():
    models = {"teacher": {"accuracy": _est(0.80), "latency_p50_ms": 300.0,
                          "cost_per_1k_requests": 0.5},
              "student_dpo": {"accuracy": _est(0.80), "latency_p50_ms": 61.0,
                              "cost_per_1k_requests": 0.1}}
    decision = D.decide({"teacher": _correct(160), "student_base": _correct(120),
                         "student_dpo": _correct(160)}, {}, D.Rule(), "accuracy")
    cost = {"one_off": {"items": [], "total_usd": 12.0, "complete": True},
            "student": "student_dpo", **D.break_even(12.0, 0.5, 0.1)}
    v = verdict(models, "accuracy", decision, cost)
    assert v["passes"] and v["ship"] == "student_dpo" and v["branch"] == "ship_student"
    assert v["latency_ratio"] == pytest.approx(61 / 300) and v["cost_ratio"] == pytest.approx(0.2)
    assert v["text"].endswith("Distilling cost $12.00 once; the SFT+DPO student saves $0.4000 "
                              "per 1k requests against the teacher, so it pays for itself after "
                              "30,000 requests.")
    incomplete = D.decide({"teacher": _correct(160)}, {}, D.Rule(), "accuracy")
    assert verdict({"teacher": {"accuracy": _est(0.9)}}, "accuracy", incomplete)["passes"] is None


def test_report_renders_from_stage_outputs(tmp_path):
    _predictions(tmp_path, teacher=160, student_base=120, student_dpo=160)
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "main_metric": "accuracy",
        "models": {"teacher": {"accuracy": _est(0.80)}, "student_base": {"accuracy": _est(0.6)},
                   "student_dpo": {"accuracy": _est(0.80)}},
    }))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"models": {
        "teacher": {"cost_per_1k_requests": 0.5}, "student_dpo": {"cost_per_1k_requests": 0.1}}}))
    manifest = {"run_id": "r1", "config": {"task": {"name": "t"}},
                "summaries": {"prompts": {"train_prompts": 100},
                              "generate": {"completions": 300},
                              "curate": {"funnel": [{"step": "vote: agreement",
                                                     "unit": "examples", "in": 100,
                                                     "dropped": 12, "out": 88,
                                                     "note": "agreement rows 30"}]},
                              "sft": {"seconds": 3600, "world_size": 1}}}
    report = build_report(tmp_path, manifest, CFG)
    v = report["verdict"]
    assert v["passes"] and v["ship"] == "student_dpo"
    assert v["students"]["student_dpo"]["vs_base"]["p_value"] == pytest.approx(0.5 ** 40, rel=.01)
    assert v["cost"]["one_off"]["total_usd"] == 1.0 and v["cost"]["break_even_requests"] == 2500
    assert "pays for itself after 2,500 requests" in v["text"]
    assert [f["rows"] for f in report["funnel"]] == [100, 300, 88]
    md = render_markdown(report)
    assert "| vote: agreement | examples | 12 | 88 | agreement rows 30 |" in md
    assert "| student SFT+DPO | 0.800 [0.780, 0.820]" in md
    assert ("| student SFT+DPO - base student | +0.200 [+0.145, +0.255] | 9.09e-13 |  | "
            "exact McNemar | yes |") in md
    assert "| student SFT+DPO - teacher | +0.000 [+0.000, +0.000] | 1 | 0.0217 |" in md
    assert "| break-even (requests) |  |  |  | 2500 |" in md
    page = render_html(report, {"quality": "AAAA"})
    assert 'id="verdict"' in page and "data:image/png;base64,AAAA" in page
    assert "<td>student SFT+DPO - base student</td>" in page and "Cost of distilling" in page


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
    report = build_report(tmp_path, manifest, CFG)
    v = report["verdict"]
    # The teacher is at chance: no ship decision against it.
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
    decision = D.decide({"teacher": _correct(160), "student_base": _correct(120),
                         "student_dpo": _correct(160)}, {}, D.Rule(), "accuracy")
    v = verdict(models, "accuracy", decision, None, {"passed": True}, majority)
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
    report = build_report(tmp_path, manifest, report_config("free_text"))
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
    report = build_report(tmp_path, manifest, report_config("json"))
    assert report["main_metric"] == "field_f1"
    md = render_markdown(report)
    assert "field_f1 (95% CI, higher is better)" in md and "cut at" not in md
    assert "Scored against the gold answers of 10 held-out rows" in md


def test_opd_and_on_policy_dpo_students_sit_side_by_side_with_what_each_took(tmp_path):
    """SFT, SFT+DPO (on-policy pairs) and SFT+OPD in one report: each row, each in the decision,
    and what each took: teacher tokens (OPD adds what the teacher scored) and training seconds
    counting SFT (on-policy DPO adds the student's sampling)."""
    _predictions(tmp_path, teacher=160, student_base=120, student_sft=150, student_dpo=155,
                 student_opd=158)
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "main_metric": "accuracy", "models": {
            "teacher": {"accuracy": _est(0.80)}, "student_base": {"accuracy": _est(0.60)},
            "student_sft": {"accuracy": _est(0.75)}, "student_dpo": {"accuracy": _est(0.775)},
            "student_opd": {"accuracy": _est(0.79)}}}))
    manifest = {"run_id": "r2", "config": {"task": {"name": "t"}}, "summaries": {
        "generate": {"prompt_tokens": 9000, "completion_tokens": 1000, "wall_s": 100},
        "sft": {"seconds": 200.0, "train_examples": 90, "stage_peak_rss_mb": 4100.0},
        "policy_pairs": {"seconds": 30.0, "samples": 360, "pairs": 40},
        "dpo": {"seconds": 50.0, "pairs": 40, "pairs_from": "on_policy",
                "stage_peak_rss_mb": 3900.0},
        "opd": {"seconds": 120.0, "steps": 20, "train_tokens": 4000,
                "stage_peak_rss_mb": 6200.0}}}
    report = build_report(tmp_path, manifest, CFG)
    assert set(report["models"]) == {"teacher", "student_base", "student_sft", "student_dpo",
                                     "student_opd"}
    made = report["student_costs"]
    assert made["student_sft"] == {"teacher_tokens": 10000, "seconds": 200.0,
                                   "peak_rss_mb": 4100.0, "data": "90 teacher examples"}
    # the highest peak of the stages a student is made by
    assert made["student_dpo"]["peak_rss_mb"] == 4100.0
    assert made["student_opd"]["peak_rss_mb"] == 6200.0
    assert made["student_dpo"]["seconds"] == 280.0 and made["student_dpo"]["teacher_tokens"] == 10000
    assert made["student_dpo"]["data"] == "40 on-policy pairs (360 student samples)"
    assert made["student_opd"]["teacher_tokens"] == 14000 and made["student_opd"]["seconds"] == 320.0
    assert set(report["verdict"]["students"]) >= {"student_sft", "student_dpo", "student_opd"}
    items = [x["item"] for x in report["verdict"]["cost"]["one_off"]["items"]]
    assert items == ["teacher generation", "on-policy pairs", "SFT training", "DPO training",
                     "OPD training"]
    md = render_markdown(report)
    assert "| student SFT+OPD | 0.790 [0.770, 0.810]" in md
    assert "| student SFT+OPD | 14,000 | 320 | 6,200 | 20 steps of student samples scored by " \
           "the teacher |" in md
    assert 'id="students"' in render_html(report, {})


def test_a_student_that_answers_one_label_everywhere_is_named_in_the_verdict():
    from distill.eval import label_collapse

    gold = ["positive"] * 116 + ["negative"] * 84
    parsed = {"teacher": gold[:100] + ["negative"] * 100,  # mixed: not collapsed
              "student_sft": ["positive"] * 200,           # the run-1 pruned student
              "student_dpo": ["negative"] * 120 + ["positive"] * 80}
    found = label_collapse(CFG, parsed, gold)
    assert found["student_sft"]["level"] == "stop" and found["teacher"]["level"] == "ok"
    assert found["student_dpo"]["level"] == "ok"  # 60% 'negative': below collapse_warn
    decision = D.decide({"teacher": _correct(160), "student_base": _correct(0),
                         "student_sft": _correct(116)}, {}, D.Rule(), "accuracy")
    v = verdict({"teacher": {"accuracy": _est(0.8)}}, "accuracy", decision, None, None, None, found)
    assert v["collapsed"] == ["SFT student answered 'positive' on 200 of 200 held-out rows (the "
                              "gold has it for 58%): it has collapsed to one label"]
    assert v["text"].endswith("Warning: " + v["collapsed"][0] + ".")
