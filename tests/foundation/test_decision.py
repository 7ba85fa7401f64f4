"""The ship decision (distill/decision.py): paired tests checked against hand-computed values,
the rule's four outcomes on synthetic score tables, and the cost arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from distill import decision as D
from distill import stats
from distill.core.config import RunConfig


def _items(correct: int, n: int = 200) -> dict[str, float]:
    """Per-item 0/1 scores: the first `correct` items right (so tables nest: paired)."""
    return {f"x{i:03d}": float(i < correct) for i in range(n)}


# --- the tests themselves, by hand -----------------------------------------------------------


def test_mcnemar_by_hand():
    # 8 items only A gets right, 1 only B, 11 both wrong: p = P(Bin(9, 1/2) >= 8) = 10/512
    a = [1] * 8 + [0] * 1 + [0] * 11
    b = [0] * 8 + [1] * 1 + [0] * 11
    t = stats.mcnemar(a, b)
    assert (t.a_only, t.b_only, t.n) == (8, 1, 20)
    assert t.p_value == pytest.approx(10 / 512)
    assert t.diff == pytest.approx(7 / 20)
    se = math.sqrt((9 / 20 - 0.35 ** 2) / 20)
    assert (t.ci_low, t.ci_high) == pytest.approx((0.35 - 1.96 * se, 0.35 + 1.96 * se))


def test_paired_bootstrap_by_hand():
    # d = [0.3, -0.1]: resampled means 0.3 (1/4), 0.1 (1/2), -0.1 (1/4), so P(mean <= 0) = 1/4
    t = stats.paired_bootstrap([0.5, 0.2], [0.2, 0.3], resamples=4000, seed=1)
    assert t.diff == pytest.approx(0.1)
    assert t.p_value == pytest.approx(0.25, abs=0.03)
    assert (t.ci_low, t.ci_high) == pytest.approx((-0.1, 0.3))


def test_paired_tests_see_what_overlapping_unpaired_cis_hide():
    # 100 items: B right on 50, A right on the same 50 and 10 more.
    a, b = list(_items(60, 100).values()), list(_items(50, 100).values())
    a_ci, b_ci = stats.wilson(60, 100), stats.wilson(50, 100)
    assert a_ci[0] < b_ci[1]  # the unpaired 95% CIs overlap ...
    t = D.compare(a, b)
    assert t["method"] == "exact McNemar" and t["p_value"] == pytest.approx(0.5 ** 10, rel=1e-3)
    # ... and continuous scores the same way: item difficulty spreads the means, not the gain
    base = np.linspace(0.0, 1.0, 50)
    tuned = base + 0.05 + np.random.default_rng(0).normal(0, 0.01, 50)
    lo_t, _ = stats.mean_ci(tuned)
    _, hi_b = stats.mean_ci(base)
    assert lo_t < hi_b
    t = D.compare(list(tuned), list(base))
    assert t["method"] == "paired bootstrap" and t["p_value"] < 0.001 and t["ci_low"] > 0.04


def test_tango_non_inferiority_by_hand():
    # No discordant items: Z = sqrt(n d / (1 - d)); n = 200, d = 0.02 -> Z = 2.0203
    same = [1.0] * 150 + [0.0] * 50
    assert stats.tango(same, same, 0.02) == pytest.approx(sps.norm.sf(math.sqrt(4 / 0.98)))
    # margin 0 is McNemar's z: (8 - 2) / sqrt(10)
    a = [1] * 8 + [0] * 2 + [1] * 10
    b = [0] * 8 + [1] * 2 + [1] * 10
    assert stats.tango(a, b, 0.0) == pytest.approx(sps.norm.sf(6 / math.sqrt(10)))
    # few items cannot show anything: 6 identical answers are not evidence of non-inferiority
    assert stats.tango([1] * 6, [1] * 6, 0.02) > 0.3


# --- the rule ----------------------------------------------------------------------------------

RULE = D.Rule(alpha=0.05, margin=0.02, max_forgetting=0.05)
SAME_ABILITY = {"general_ability": {"student_base": 1.0, "student_sft": 1.0, "student_dpo": 1.0}}


def _decide(teacher, base, dpo, sft=None, evals=SAME_ABILITY):
    scores = {"teacher": _items(teacher), "student_base": _items(base), "student_dpo": _items(dpo)}
    if sft is not None:
        scores["student_sft"] = _items(sft)
    return D.decide(scores, evals, RULE, "accuracy")


def test_ship_the_tuned_student():
    v = _decide(teacher=160, base=120, dpo=160, sft=140)
    assert v["branch"] == "ship_student" and v["ship"] == "student_dpo" and v["passes"]
    dpo = v["students"]["student_dpo"]
    assert dpo["vs_base"]["diff"] == pytest.approx(0.2) and dpo["vs_base"]["a_only"] == 40
    assert dpo["vs_teacher"]["p_noninferior"] < 0.05
    assert not v["students"]["student_sft"]["noninferior_to_teacher"]  # 0.70 vs 0.80
    assert v["text"].startswith("Ship SFT+DPO student: the SFT+DPO student beats the base "
                                "student (prompted) by accuracy +0.200 [95% CI")


def test_ship_the_base_student_when_tuning_adds_nothing():
    v = _decide(teacher=160, base=160, dpo=160)
    assert v["branch"] == "ship_base" and v["ship"] == "student_base" and v["passes"] is False
    assert v["text"].startswith("Ship the base student (prompted): the SFT+DPO student is not "
                                "significantly better than the base student")
    assert "the base student (prompted) itself is within 0.02 of the teacher" in v["text"]


def test_keep_the_teacher_when_no_student_comes_close():
    v = _decide(teacher=180, base=120, dpo=150)
    assert v["branch"] == "keep_teacher" and v["ship"] == "teacher"
    dpo = v["students"]["student_dpo"]
    assert dpo["better_than_base"] and not dpo["noninferior_to_teacher"]
    assert v["text"].startswith("Keep the teacher: the SFT+DPO student is not shown within 0.02 "
                                "of the teacher (-0.150")
    assert "is not shown within 0.02 of the teacher either" in v["text"]


def test_forgetting_blocks_an_otherwise_shippable_student():
    paired = {"forgetting": {"items": 100, "source": "test",
                             "item_scores": {"student_base": [1] * 100,
                                             "student_dpo": [1] * 80 + [0] * 20}}}
    v = _decide(teacher=160, base=120, dpo=160, evals=paired)
    assert v["branch"] == "blocked_by_forgetting" and v["ship"] == "teacher"
    lost = v["students"]["student_dpo"]["forgetting"]
    assert lost["measured"] == "paired" and lost["value"] == pytest.approx(0.2)
    assert v["text"].startswith("Keep the teacher instead of SFT+DPO student: the SFT+DPO "
                                "student forgets too much: it lost +0.200 general ability")
    # point values only (general_ability), the same rule on the point loss
    points = {"general_ability": {"student_base": 1.0, "student_dpo": 0.75}}
    v = _decide(teacher=160, base=160 - 1, dpo=160, evals=points)
    assert v["students"]["student_dpo"]["forgetting"] == {
        "measured": "point", "value": 0.25, "max": 0.05, "within": False}
    # no loss on 100 paired items is shown within 0.05 (Tango: Z = sqrt(100 * .05 / .95))
    kept = {"forgetting": {"item_scores": {"student_base": [1] * 100, "student_dpo": [1] * 100}}}
    lost = D.forgetting(kept, "student_dpo", "student_base", RULE)
    assert lost["within"] and lost["p_within"] == pytest.approx(
        sps.norm.sf(math.sqrt(5 / 0.95)), rel=1e-2)


def test_no_verdict_without_predictions():
    v = D.decide({"teacher": _items(10)}, {}, RULE, "accuracy")
    assert v["passes"] is None and "student_base" in v["text"]


def test_item_scores_per_task_type():
    rows = [{"example_id": "a", "model": "m", "parsed": "pos", "gold": "pos"},
            {"example_id": "b", "model": "m", "parsed": None, "gold": "neg"}]
    assert D.item_scores("classification", rows) == {"m": {"a": 1.0, "b": 0.0}}
    rows = [{"example_id": "a", "model": "m", "parsed": "the cat", "gold": "the big cat"}]
    assert D.item_scores("free_text", rows)["m"]["a"] == pytest.approx(0.8)
    rows = [{"example_id": "a", "model": "m", "parsed": '{"a":1,"b":2}',
             "gold": '{"b": 2, "a": 1}'}]
    assert D.item_scores("json", rows) == {"m": {"a": 1.0}}
    rows = [{"example_id": "a", "model": "m", "parsed": '{"a":1,"b":3}', "gold": '{"b": 2, "a": 1}'}]
    assert D.item_scores("json", rows)["m"]["a"] == pytest.approx(0.5)  # one of two fields


def test_refresh_gate_uses_the_promoted_student_as_baseline():
    ok, reason, _ = D.gate(_items(150), _items(140), _items(150), {"measured": None,
                           "max": 0.05, "within": True}, RULE, "accuracy", "v0002",
                           "the promoted student (v0001)")
    assert ok and reason.startswith("v0002 beats the promoted student (v0001) by accuracy +0.050")
    ok, reason, _ = D.gate(_items(141), _items(140), _items(150), {"measured": None,
                           "max": 0.05, "within": True}, RULE, "accuracy", "v0002", "v0001")
    assert not ok and reason.startswith("v0002 is not significantly better than v0001")


# --- cost --------------------------------------------------------------------------------------


def test_break_even_arithmetic():
    assert D.break_even(12.0, 0.50, 0.10) == {"saving_per_1k_requests": 0.4,
                                              "break_even_requests": 30000}
    assert D.break_even(1.0, 0.4, 0.1)["break_even_requests"] == 3334  # 3333.3, rounded up
    assert D.break_even(5.0, 0.1, 0.3)["break_even_requests"] == "never"
    assert D.break_even(5.0, 0.1, 0.1)["break_even_requests"] == "never"
    assert D.break_even(5.0, None, 0.1)["break_even_requests"] is None


def _cfg(**cost) -> RunConfig:
    return RunConfig.model_validate({
        "run_name": "t", "output_dir": "/tmp/unused",
        "task": {"name": "t", "labels": ["a", "b"], "instruction": "?"},
        "teacher": {"model": "x"}, "student": {"model": "y"}, "pairs": {"scorer": "judge"},
        "cost": cost})


def test_one_off_cost_prices_what_the_stages_recorded():
    manifest = {"summaries": {"generate": {"wall_s": 3600, "prompt_tokens": 10,
                                           "completion_tokens": 5},
                              "sft": {"seconds": 1800, "world_size": 2, "train_tokens": 1000},
                              "dpo": {"seconds": 900, "world_size": 1, "train_tokens": 500}},
                "stages": {"pairs": {"seconds": 360}}}
    cfg = _cfg(teacher={"per_hour_usd": 2.0}, student={"per_hour_usd": 1.0})
    cost = D.one_off_cost(manifest, cfg)
    usd = {x["item"]: x["usd"] for x in cost["items"]}
    assert usd == {"teacher generation": 2.0, "judge calls (pairs)": 0.2, "SFT training": 1.0,
                   "DPO training": 0.25}
    assert cost["total_usd"] == pytest.approx(3.45) and cost["complete"]
    # an API teacher bills tokens; a fine-tuning API bills training tokens; the judge's tokens
    # are not recorded, so its line says so instead of pricing it at 0
    cfg = _cfg(teacher={"input_per_1m_usd": 1e5, "output_per_1m_usd": 2e5},
               training={"input_per_1m_usd": 1000.0})
    cost = D.one_off_cost(manifest, cfg)
    usd = {x["item"]: x["usd"] for x in cost["items"]}
    assert usd["teacher generation"] == pytest.approx(2.0) and usd["SFT training"] == 1.0
    assert usd["judge calls (pairs)"] is None and not cost["complete"]
    sentence = D.cost_sentence({"one_off": cost, **D.break_even(cost["total_usd"], 0.5, 0.1)},
                               "the SFT student", True)
    assert sentence == ("Distilling cost $3.50 once (some lines could not be priced); the SFT "
                        "student saves $0.4000 per 1k requests against the teacher, so it pays "
                        "for itself after 8,750 requests.")


def test_cost_prices_only_what_is_recorded():
    with pytest.raises(ValueError, match="cost.training bills training tokens"):
        _cfg(training={"output_per_1m_usd": 1.0})
    with pytest.raises(ValueError, match="cost.judge: give per_hour_usd"):
        _cfg(judge={"input_per_1m_usd": 1.0})
