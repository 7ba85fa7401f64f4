"""Label normalisation, each row filter, and the agreement vote."""

from __future__ import annotations

from collections import Counter

import pytest

from curation_helpers import LABELS, gen_row, make_config, samples
from distill.core.config import FiltersConfig, TaskConfig
from distill.core.errors import ConfigError
from distill.curation.filters import (apply_row_filters, build_row_filters, repair_json_rows,
                                     vote_all)
from distill.curation.labels import majority_vote, normalize_label


@pytest.mark.parametrize("text,want", [
    (" Positive.", "positive"), ("negative\n", "negative"), ("NEGATIVE!!", "negative"),
    ("Negative, not positive", "negative"), ("Answer: positive", "positive"),
    ("neg", None), ("positively", None), ("", None), (None, None),
])
def test_normalize_label(text, want):
    assert normalize_label(text, LABELS) == want


def test_normalize_label_multiword_and_case():
    labels = ["very good", "good", "Bad"]
    assert normalize_label("It is VERY good.", labels) == "very good"
    assert normalize_label("good", labels) == "good"
    assert normalize_label("bad", labels) == "Bad"


def test_majority_vote_ratio_counts_invalid_samples_and_ties_have_no_winner():
    v = majority_vote(["a", "a", None, "b"])
    assert (v.winner, v.count, v.total, v.ratio) == ("a", 2, 4, 0.5)
    tie = majority_vote(["a", "b"])
    assert tie.winner is None and tie.tied == ("a", "b")


def test_each_filter_drops_exactly_its_rows():
    cfg = FiltersConfig(min_chars=3, max_chars=40, min_tokens=1, max_tokens=6,
                        must_match=[r"\w"], must_not_match=[r"\bhttp"], drop_refusals=True)
    task = make_config("/tmp/x").task
    planted = {
        "truncated": gen_row("t1", "positive", finish="length"),
        "min_chars": gen_row("t2", "ok"),
        "max_chars": gen_row("t3", "positive " + "x" * 40),
        "min_tokens": gen_row("t4", "positive", tokens=0),
        "max_tokens": gen_row("t5", "positive", tokens=7),
        "must_match": gen_row("t6", "???..."),
        "must_not_match": gen_row("t7", "positive http://x"),
        "refusal": gen_row("t8", "I'm sorry, no."),
        "invalid_answer": gen_row("t9", "neutral"),
    }
    good = [gen_row("g1", " Positive."), gen_row("g2", "negative")]
    rows = list(planted.values()) + good
    kept, rejected, counts = apply_row_filters(rows, build_row_filters(cfg, task))
    assert [r["row_id"] for r in kept] == [r["row_id"] for r in good]
    assert counts == {name: 1 for name in planted}
    assert {r.filter: r.row_id for r in rejected} == {k: v["row_id"] for k, v in planted.items()}
    assert all(r.detail for r in rejected)


def test_disabled_filters_drop_nothing():
    cfg = FiltersConfig(drop_truncated=False, drop_refusals=False, require_valid_answer=False)
    task = make_config("/tmp/x").task
    rows = [gen_row("a", "I'm sorry", finish="length"), gen_row("b", "neutral")]
    kept, rejected, counts = apply_row_filters(rows, build_row_filters(cfg, task))
    assert len(kept) == 2 and not rejected and counts == {}


def test_bad_regex_is_a_config_error():
    with pytest.raises(ConfigError, match=r"filters.must_match.0"):
        build_row_filters(FiltersConfig(must_match=["("]), make_config("/tmp/x").task)


def test_json_answer_validity_against_schema():
    task = TaskConfig(name="j", type="json", instruction="x",
                      json_schema={"type": "object", "required": ["a"],
                                   "properties": {"a": {"type": "integer"}}})
    rows = [gen_row("1", '{"a": 1}'), gen_row("2", '{"a": "x"}'), gen_row("3", "not json")]
    # The row filters leave JSON to the repair step, which rejects with the reason.
    kept, rejected, _ = apply_row_filters(rows, build_row_filters(FiltersConfig(), task))
    assert kept == rows and rejected == []
    kept, rejected, stats = repair_json_rows(rows, task)
    assert [r["completion"] for r in kept] == ['{"a":1}']
    assert [r.filter for r in rejected] == ["json_schema", "json_invalid"]
    assert rejected[0].detail.startswith("json_schema: a: ")
    assert rejected[1].detail.startswith("json_invalid: ")
    assert stats.rejected == {"json_schema": 1, "json_invalid": 1}
    kept, rejected, _ = repair_json_rows(rows, task, reject=False)
    assert len(kept) == 3 and rejected == []


def _vote(rows, min_agreement=None, task=None, n=None):
    task = task or make_config("/tmp/x").task
    counts = Counter(r["example_id"] for r in rows) if n is None else n
    return vote_all(rows, counts, task, min_agreement)


def test_vote_majority_becomes_target_and_minority_is_rejected():
    rows = samples("film one", ["Positive.", "positive", "positive", "negative", "positive"])
    examples, rejected = _vote(rows, min_agreement=0.8)
    assert len(examples) == 1
    ex = examples[0]
    assert (ex.target, ex.agreement) == ("positive", 0.8)
    assert ex.row_ids == [rows[i]["row_id"] for i in (0, 1, 2, 4)]
    assert [(r.row_id, r.filter) for r in rejected] == [(rows[3]["row_id"], "minority")]


def test_vote_below_min_agreement_and_ties_drop_the_example():
    low = samples("film two", ["positive", "positive", "negative", "negative", "positive"])
    tie = samples("film three", ["positive", "negative"])
    examples, rejected = _vote(low + tie, min_agreement=0.7)
    assert examples == []
    assert Counter(r.filter for r in rejected) == {"agreement": 7}
    assert any("0.60 < 0.7" in r.detail for r in rejected)
    assert any(r.detail == "tie: negative vs positive" for r in rejected)


def test_vote_ratio_counts_samples_dropped_by_filters():
    rows = samples("film four", ["positive", "positive", "positive", "positive"])
    # 4 of 6 generated samples survived the row filters: agreement is 4/6
    examples, _ = _vote(rows, min_agreement=0.7, n={rows[0]["example_id"]: 6})
    assert examples == []
    examples, _ = _vote(rows, min_agreement=0.6, n={rows[0]["example_id"]: 6})
    assert examples[0].agreement == pytest.approx(4 / 6, abs=1e-4)


def test_free_text_vote_picks_the_medoid():
    task = TaskConfig(name="f", type="free_text", instruction="x")
    rows = samples("q", ["the cat sat on the mat", "a cat sat on the mat", "dogs bark loudly"])
    examples, rejected = _vote(rows, task=task)
    assert examples[0].target in {"the cat sat on the mat", "a cat sat on the mat"}
    assert {r.filter for r in rejected} == {"not_representative"}
    examples, rejected = _vote(rows, task=task, min_agreement=0.9)
    assert examples == [] and {r.filter for r in rejected} == {"agreement"}
