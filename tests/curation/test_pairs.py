"""Preference pairs: margin rule, ties, label swaps, judge callables, on-policy, length bias."""

from __future__ import annotations

import pytest

from curation_helpers import make_config, read, samples, write_shards
from distill.core.config import PairsConfig, TaskConfig
from distill.curate import run_curate
from distill.core.errors import ConfigError
from distill.pairs import (
    JudgeScorer, PairStats, example_scorer, length_bias, make_on_policy_pairs, make_pairs,
    pairs_for_example, run_pairs, verifier,
)

TASK = make_config("/tmp/x").task
EX = {"example_id": "e1", "text": "a fine film", "label": None, "target": "positive"}


def test_verifier_uses_gold_label_before_the_vote():
    score = verifier(TASK)
    assert score(EX, " Positive.") == 1.0 and score(EX, "negative") == 0.0
    assert score({**EX, "label": "negative"}, "negative") == 1.0
    assert score(EX, "no idea") == 0.0


def test_margin_rule_keeps_only_pairs_at_or_above_min_margin():
    cfg = PairsConfig(min_margin=0.5, max_pairs_per_prompt=3, synthesize_rejected=False)
    stats = PairStats()
    comps = ["good", "okay", "bad", "worse"]
    scores = [0.9, 0.6, 0.3, 0.3]
    task = TaskConfig(name="f", type="free_text", instruction="x")
    pairs = pairs_for_example(EX, comps, scores, task, cfg, None, stats)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("good", "worse"), ("good", "bad")]
    assert all(p["margin"] >= 0.5 and p["origin"] == "teacher" for p in pairs)
    # only ties: nothing; margin too small: nothing
    assert pairs_for_example(EX, ["a", "b"], [0.5, 0.5], task, cfg, None, stats) == []
    assert pairs_for_example(EX, ["a", "b"], [0.6, 0.5], task, cfg, None, stats) == []
    assert (stats.ties, stats.below_margin, stats.teacher) == (1, 1, 2)


def test_classification_answers_are_normalised_and_duplicates_merged():
    cfg = PairsConfig(synthesize_rejected=False)
    stats = PairStats()
    comps = [" Positive.", "positive", "Negative"]
    pairs = pairs_for_example(EX, comps, [verifier(TASK)(EX, c) for c in comps], TASK, cfg,
                              verifier(TASK), stats)
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("positive", "negative", 1.0)]
    raw = pairs_for_example(EX, comps, [1.0, 1.0, 0.0], TASK,
                            PairsConfig(normalize_answers=False), verifier(TASK), stats)
    assert raw[0]["rejected"] == "Negative" and raw[0]["chosen"] in {"Positive.", "positive"}


def test_label_swap_when_all_samples_agree():
    score = verifier(TASK)
    stats = PairStats()
    pairs = pairs_for_example(EX, ["positive"] * 3, [1.0] * 3, TASK, PairsConfig(), score, stats)
    assert [(p["chosen"], p["rejected"], p["origin"]) for p in pairs] == [
        ("positive", "negative", "label_swap")]
    keep_case = pairs_for_example(EX, [" Positive."] * 2, [1.0] * 2, TASK,
                                  PairsConfig(normalize_answers=False), score, stats)
    assert keep_case[0]["rejected"] == "Negative."
    assert pairs_for_example(EX, ["positive"] * 3, [1.0] * 3, TASK,
                             PairsConfig(synthesize_rejected=False), score, stats) == []


def test_judge_is_any_callable_and_judge_scorer_parses_replies():
    # a pluggable judge: here a plain rule (prefers answers naming the gold sentiment word)
    def judge(text: str, completion: str) -> float:
        return 1.0 if "positive" in completion.lower() else 0.2

    cfg = PairsConfig(scorer="judge", synthesize_rejected=False)
    score = example_scorer(cfg, TASK, judge)
    pairs, stats = make_pairs([EX], {"e1": ["positive", "negative"]}, TASK, cfg, score)
    assert [(p["chosen"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [
        ("positive", 1.0, 0.2)]

    seen = []

    def chat(batch):  # stands in for the vLLM engine's batch chat call
        seen.extend(batch)
        return ["8", "score: 3/10", "no number"]

    js = JudgeScorer(chat)
    assert js.score_batch([("t", "a"), ("t", "b"), ("t", "c")]) == [0.8, 0.3, 0.0]
    assert "Answer to rate:\na" in seen[0][0]["content"]
    assert "What a good answer is" not in seen[0][0]["content"]
    # judge.rubric says what a good answer is; braces in inputs (JSON) are left alone
    JudgeScorer(chat, rubric="Short and polite.").score_batch([("{t}", '{"a": 1}')] * 3)
    assert "What a good answer is:\nShort and polite." in seen[3][0]["content"]
    assert 'Task input:\n{t}' in seen[3][0]["content"] and '{"a": 1}' in seen[3][0]["content"]


def test_rule_scorer_and_unknown_rule():
    cfg = PairsConfig(scorer="rule", rule="exact_format", synthesize_rejected=False)
    score = example_scorer(cfg, TASK)
    assert score(EX, "Positive.") == 1.0 and score(EX, "It is positive") == 0.5
    assert score(EX, "hmm") == 0.0
    with pytest.raises(ValueError, match="unknown rule 'nope'"):  # refused with the config
        PairsConfig(scorer="rule", rule="nope")
    with pytest.raises(ConfigError, match="pairs.rule"):  # a library caller skipping it
        example_scorer(PairsConfig.model_construct(scorer="rule", rule="nope"), TASK)


def test_on_policy_pairs_from_student_answers():
    examples = [EX, {**EX, "example_id": "e2", "target": "negative"},
                {**EX, "example_id": "e3", "target": "negative"}]
    pairs = make_on_policy_pairs(examples, ["Negative.", "negative", "unsure"], TASK)
    assert [(p["example_id"], p["chosen"], p["rejected"], p["origin"]) for p in pairs] == [
        ("e1", "positive", "negative", "on_policy"), ("e3", "negative", "unsure", "on_policy")]
    by_id = make_on_policy_pairs(examples, {"e2": ["positive", "positive"]}, TASK)
    assert len(by_id) == 1 and by_id[0]["rejected"] == "positive"
    with pytest.raises(ValueError):
        make_on_policy_pairs(examples, ["x"], TASK)


def test_length_bias_report():
    bias = length_bias([{"chosen": "aaaa", "rejected": "a"}, {"chosen": "a", "rejected": "aa"},
                        {"chosen": "ab", "rejected": "cd"}])
    assert bias["mean_diff_chars"] == pytest.approx((7 - 5) / 3, abs=0.01)
    assert bias["frac_chosen_longer"] == pytest.approx(1 / 3, abs=1e-3)
    assert bias["frac_same_length"] == pytest.approx(1 / 3, abs=1e-3)


def test_run_pairs_stage(make_run):
    run = make_run(decontam={"enabled": False}, pairs={"min_margin": 0.5})
    rows = samples("one good film with great acting", ["positive", "positive", "negative"])
    rows += samples("a dull tedious mess of a movie", ["negative"] * 3)
    rows += samples("gold label says negative here", ["positive", "positive", "negative"],
                    label="negative")
    write_shards(run, rows)
    run_curate(run)
    summary = run_pairs(run)
    pairs = read(run.dir / "pairs" / "pairs.parquet")
    assert summary["pairs"] == len(pairs) == 3
    assert summary["by_origin"] == {"teacher": 2, "label_swap": 1}
    gold = next(p for p in pairs if p["text"].startswith("gold"))
    assert (gold["chosen"], gold["rejected"]) == ("negative", "positive")  # gold beats the vote
    assert all(p["margin"] >= 0.5 for p in pairs)
    assert summary["length_bias"]["pairs"] == 3


def test_json_verifier_gives_partial_credit_by_field():
    from distill.core.config import TaskConfig

    task = TaskConfig(name="refs", type="json", instruction="?", json_schema={"type": "object"})
    score = verifier(task)
    example = {"label": '{"title": "A", "year": 2020, "first_author": "Li"}'}
    assert score(example, '{"title": "a", "year": 2020, "first_author": "Li"}') == 1.0
    assert score(example, '{"title": "B", "year": 2020, "first_author": "Li"}') \
        == pytest.approx(2 / 3)
    assert score(example, "not json") == 0.0
