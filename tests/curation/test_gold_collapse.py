"""Paired tests, the collapse rule and gold-aware curation, on fixed numbers and real Parquet."""

from __future__ import annotations

import pytest
from curation_helpers import make_config, read, samples, write_shards, write_test_set

from distill.core.errors import TeacherCheckError
from distill.core.rundir import Run
from distill.curate import run_curate
from distill.curation.collapse import check_labels
from distill.stats import compare, mcnemar, paired_bootstrap, wilson

LABELS = ["positive", "negative"]


def test_mcnemar_counts_only_discordant_items():
    a = [1] * 30 + [0] * 10 + [1] * 10
    b = [1] * 30 + [0] * 10 + [0] * 10  # A alone right on 10 items, B alone on none
    t = mcnemar(a, b)
    assert (t.a_only, t.b_only, t.n) == (10, 0, 50)
    assert t.p_value == pytest.approx(0.5 ** 10)  # exact binomial, one-sided
    assert t.diff == pytest.approx(0.2) and t.ci_low < 0.2 < t.ci_high
    same = mcnemar(a, a)
    assert same.p_value == 1.0 and same.diff == 0.0
    assert mcnemar(b, a).p_value == 1.0  # B is not better than A


def test_paired_bootstrap_and_dispatch():
    a = [0.9, 0.8, 0.85, 0.95, 0.7, 0.9] * 5
    b = [x - 0.2 for x in a]
    t = paired_bootstrap(a, b, resamples=500)
    assert t.diff == pytest.approx(0.2) and t.p_value < 0.01
    assert compare(a, b).method == "paired bootstrap"
    assert compare([1, 0, 1], [0, 0, 1]).method == "exact McNemar"
    low, high = wilson(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2


def test_collapse_needs_a_big_share_that_squeezes_the_other_labels():
    gold = ["a"] * 20 + ["b"] * 20 + ["c"] * 60
    mostly_c = ["c"] * 75 + ["a"] * 15 + ["b"] * 10  # others 25% vs 40% in the gold
    assert check_labels(mostly_c, gold, ["a", "b", "c"], 0.6, 0.9).level == "ok"
    only_c = check_labels(["c"] * 100, gold, ["a", "b", "c"], 0.6, 0.9)
    assert only_c.level == "stop"  # a majority label, but the others vanished
    collapsed = check_labels(["a"] * 95 + ["b"] * 5, gold, ["a", "b", "c"], 0.6, 0.9)
    assert (collapsed.level, collapsed.label, collapsed.reference_share) == ("stop", "a", 0.2)
    assert check_labels(["a"] * 70 + ["b"] * 30, gold, ["a", "b", "c"], 0.6, 0.9).level == "warn"
    one_label_gold = check_labels(["a"] * 10, ["a"] * 10, ["a", "b"], 0.6, 0.9)
    assert one_label_gold.level == "ok"  # the gold itself is one label: nothing to flag
    binary = ["p"] * 20 + ["n"] * 12
    assert check_labels(["p"] * 32, binary, ["p", "n"], 0.6, 0.9).level == "stop"
    assert check_labels(["p"] * 28 + ["n"] * 4, binary, ["p", "n"], 0.6, 0.9).level == "ok"
    no_gold = check_labels(["a"] * 100, None, ["a", "b"], 0.6, 0.9)
    assert no_gold.level == "stop" and no_gold.reference == "uniform prior"
    # Without gold the prior is a guess: 95% one label is only a warning, 100% a stop.
    assert check_labels(["a"] * 95 + ["b"] * 5, None, ["a", "b"], 0.6, 0.9).level == "warn"


def _texts(n: int) -> list[str]:
    return [f"review number {i} with its own distinct words w{i} x{i * 7} y{i * 13}"
            for i in range(n)]


def _rows(answers: list[str], gold: list[str]) -> list[dict]:
    rows = []
    for text, answer, label in zip(_texts(len(answers)), answers, gold):
        rows += samples(text, [answer, answer], label=label)
    return rows


@pytest.mark.parametrize("mode", ["filter", "keep"])
def test_gold_disagreements_are_rejected_with_reasons_or_counted(tmp_path, mode):
    gold = ["positive", "negative"] * 10
    answers = ["positive"] * 8 + gold[8:]  # wrong on the 4 negatives among the first 8
    run = Run(make_config(tmp_path, curate={"gold": mode}, decontam={"enabled": False}))
    write_shards(run, _rows(answers, gold))
    summary = run_curate(run)
    assert summary["gold"] == {"mode": mode, "checked": 20, "agree": 16, "disagree": 4,
                               "agreement": 0.8}
    step = next(s for s in summary["funnel"] if s["step"] == "gold: teacher vs gold")
    assert step["note"].startswith("teacher = gold on 16/20")
    rejects = [r for r in read(run.paths.rejects) if r["filter"] == "gold"]
    if mode == "filter":
        assert step["dropped"] == 4 and summary["examples_out"] == 16
        assert len(rejects) == 8  # both samples of each wrong example
        assert rejects[0]["detail"] == "teacher answered 'positive', gold is 'negative'"
        assert all(r["label"] == r["target"] for r in read(run.paths.curated))
    else:
        assert step["dropped"] == 0 and summary["examples_out"] == 20 and not rejects
    assert summary["labels"]["teacher"] == {"positive": 14, "negative": 6}
    assert "warning" not in summary["labels"]  # 70% positive vs 50%: negatives not halved


def test_a_collapse_after_the_vote_warns_or_stops(tmp_path):
    gold = ["positive"] * 3 + ["negative"] * 17
    run = Run(make_config(tmp_path, decontam={"enabled": False}, curate={"gold": "keep"},
                          check={"collapse_warn": 0.6, "collapse_stop": 0.95}))
    write_shards(run, _rows(["positive"] * 14 + ["negative"] * 6, gold))
    summary = run_curate(run)  # 70% positive vs 15% in the gold: a warning
    assert summary["labels"]["warning"].startswith("label collapse: after the vote: the teacher "
                                                   "answered 'positive' for 14 of 20 (70%)")
    stop = Run(make_config(tmp_path / "stop", decontam={"enabled": False}))
    write_shards(stop, _rows(["positive"] * 20, gold))
    with pytest.raises(TeacherCheckError, match="label collapse"):
        run_curate(stop)
    assert not stop.paths.curated.exists()
