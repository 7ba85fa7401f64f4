"""Curation for generative tasks: JSON repair or reject, the target choice (vote, medoid, judge,
rule), judge pairs that reuse curate's judge scores, and the config that refuses old keys.

The judges in the pure-logic tests are FAKE callables (named fake_*): a model's scores can't
be set on demand. The last test runs the real packaged teacher on vLLM as the judge.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation_helpers import gen_row, make_config, read, samples, write_shards
from distill.core.config import RULE_NAMES, PairsConfig, TaskConfig, load_config
from distill.core.errors import ConfigError
from distill.curate import run_curate
from distill.curation.filters import vote_all
from distill.curation.json_repair import check_json_answer, repair_json
from distill.curation.scorers import RULES, JudgeCache
from distill.pairs import PairStats, pairs_for_example, run_pairs

SCHEMA = {"type": "object", "required": ["name", "year"],
          "properties": {"name": {"type": "string"}, "year": {"type": "integer"}}}
JSON_TASK = {"name": "films", "type": "json", "instruction": "Name and year as JSON.",
             "json_schema": SCHEMA}
TEXT_TASK = {"name": "summary", "type": "free_text", "instruction": "Summarise in one sentence."}


# --- JSON repair -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, canonical, repairs", [
    ('{"year": 1999, "name": "Matrix"}', '{"name":"Matrix","year":1999}', []),
    ('```json\n{"name": "Matrix", "year": 1999}\n```', '{"name":"Matrix","year":1999}',
     ["fence"]),
    ('Here you go: {"name": "Matrix", "year": 1999} Hope that helps!',
     '{"name":"Matrix","year":1999}', ["prose"]),
    ('{"name": "Matrix", "year": 1999,}', '{"name":"Matrix","year":1999}', ["trailing_comma"]),
    ('{"tags": ["a", "b",], "n": 1}', '{"n":1,"tags":["a","b"]}', ["trailing_comma"]),
    ("{'name': 'Matrix', 'year': 1999}", '{"name":"Matrix","year":1999}', ["single_quotes"]),
    ("```\n{'ok': True, 'x': None, 'no': False}\n```", '{"no":false,"ok":true,"x":null}',
     ["fence", "single_quotes", "python_literals"]),
    # commas, quotes and Python words inside double-quoted strings are content, not errors
    ('{"name": "True, None, it\'s,}", "year": 1}', '{"name":"True, None, it\'s,}","year":1}', []),
])
def test_json_repair_fixes_the_common_slips(raw, canonical, repairs):
    answer = repair_json(raw)
    assert (answer.canonical, answer.repairs, answer.reason) == (canonical, repairs, None)
    assert answer.repaired == bool(repairs)


@pytest.mark.parametrize("raw, reason", [
    ("I could not find that film.", "json_invalid: no {...} object in the answer"),
    ("{'name': 'it's', 'year': 1}", "json_invalid: the first {...} object never closes"),
    ('{name: "Matrix", year: 1999}', "json_invalid: Expecting property name"),
    ('{"name": "Matrix" "year": 1999}', "json_invalid: Expecting ','"),
])
def test_hopeless_json_is_rejected_with_the_reason(raw, reason):
    answer = repair_json(raw)
    assert answer.canonical is None and answer.reason.startswith(reason), answer.reason


def test_schema_failure_names_the_path_and_message():
    bad_year = check_json_answer('```json\n{"name": "Matrix", "year": "1999"}\n```', SCHEMA)
    assert bad_year.canonical is None
    assert bad_year.reason == "json_schema: year: '1999' is not of type 'integer'"
    missing = check_json_answer('{"name": "Matrix"}', SCHEMA)
    assert missing.reason == "json_schema: (root): 'year' is a required property"
    repaired = check_json_answer("{'name': 'M', 'year': 1,}", SCHEMA)
    assert repaired.canonical == '{"name":"M","year":1}'


def test_curate_repairs_json_stores_it_canonical_and_rejects_with_reasons(make_run):
    run = make_run(task=JSON_TASK, decontam={"enabled": False})
    rows = samples("The Matrix came out in 1999.", [
        '```json\n{"name": "The Matrix", "year": 1999}\n```',   # fenced
        "{'name': 'The Matrix', 'year': 1999,}",                 # Python dict, trailing comma
        '{"name": "The Matrix", "year": "1999"}',                # schema: year is a string
    ])
    rows += samples("Alien is from 1979.", ["no idea, sorry", '{"name": "Alien", "year": 1979}'])
    write_shards(run, rows)
    summary = run_curate(run)
    train = {r["text"]: r for r in read(run.paths.curated)}
    assert train["The Matrix came out in 1999."]["target"] == '{"name":"The Matrix","year":1999}'
    assert train["The Matrix came out in 1999."]["agreement"] == pytest.approx(2 / 3, abs=1e-3)
    rejects = {r["row_id"]: r for r in read(run.paths.rejects)}
    assert rejects[rows[2]["row_id"]]["filter"] == "json_schema"
    assert rejects[rows[2]["row_id"]]["detail"] == (
        "json_schema: year: '1999' is not of type 'integer'")
    assert rejects[rows[3]["row_id"]]["filter"] == "json_invalid"
    funnel = {s["step"]: s for s in summary["funnel"]}
    assert funnel["json repaired"]["dropped"] == 0 and funnel["json repaired"]["in"] == 5
    assert funnel["json repaired"]["note"].startswith("2 repaired: fence 1")
    assert funnel["json rejected"]["dropped"] == 2
    assert funnel["json rejected"]["note"] == "json_invalid 1, json_schema 1"
    assert summary["json"]["repaired"] == 2 and summary["json"]["rejected_by"] == {
        "json_invalid": 1, "json_schema": 1}


# --- the target choice -----------------------------------------------------------------------


def test_rule_target_takes_the_best_scored_sample_not_the_majority(make_run):
    run = make_run(curate={"target": "rule", "target_rule": "exact_format"},
                   decontam={"enabled": False})
    rows = samples("a fine film", ["I think it is positive", "It is positive", "Negative."])
    write_shards(run, rows)
    summary = run_curate(run)
    [ex] = read(run.paths.curated)
    # exact_format: "Negative." is the bare label (1.0), the majority's answers carry prose (0.5)
    assert (ex["target"], ex["target_by"], ex["target_score"]) == ("negative", "rule", 1.0)
    assert ex["row_ids"] == [rows[2]["row_id"]]
    assert ex["agreement"] == pytest.approx(1 / 3, abs=1e-3)
    rejects = read(run.paths.rejects)
    assert {r["filter"] for r in rejects} == {"not_chosen"}
    assert "rule scored 0.50; target" in rejects[0]["detail"]
    assert summary["target"]["mode"] == "rule" and summary["target"]["by"] == {"rule": 1}
    assert any(s["step"] == "target: rule" for s in summary["funnel"])


def test_auto_keeps_the_vote_and_the_medoid_and_records_how(make_run):
    run = make_run(decontam={"enabled": False})
    write_shards(run, samples("a fine film", ["positive", "Positive.", "negative"]))
    run_curate(run)
    [ex] = read(run.paths.curated)
    assert (ex["target"], ex["target_by"]) == ("positive", "vote")
    assert ex["target_score"] == ex["agreement"] == pytest.approx(2 / 3, abs=1e-3)

    text = make_run("text", task=TEXT_TASK, decontam={"enabled": False})
    write_shards(text, samples("plot of a film", ["a spy saves the city", "a spy saves the town",
                                                  "cooking show recap"]))
    run_curate(text)
    [ex] = read(text.paths.curated)
    assert ex["target_by"] == "medoid" and ex["target"].startswith("a spy saves the")
    assert ex["target_score"] == ex["agreement"]


def test_judge_ties_are_broken_by_the_medoid_order():
    task = TaskConfig(**TEXT_TASK)
    rows = samples("plot", ["a cat sat on a mat", "a cat sat on the mat today", "dogs bark"])
    scores = {rows[0]["row_id"]: 0.8, rows[1]["row_id"]: 0.8, rows[2]["row_id"]: 0.8}
    [ex], rejected = vote_all(rows, Counter({rows[0]["example_id"]: 3}), task, None, "judge",
                              scores)
    # all equal: the medoid ("a cat sat on a mat" is closest to the others) wins
    assert ex.target == "a cat sat on a mat" and ex.target_by == "judge"
    scores[rows[2]["row_id"]] = 0.9
    [ex], _ = vote_all(rows, Counter({rows[0]["example_id"]: 3}), task, None, "judge", scores)
    assert ex.target == "dogs bark" and ex.target_score == 0.9


def _fake_judge_prefers_detail(calls: list):
    """FAKE judge: scores by length (longer = more detail), counting what it is asked."""
    def fake_judge(text: str, completion: str) -> float:
        calls.append(completion)
        return min(len(completion) / 40, 1.0)
    return fake_judge


def test_judge_target_then_judge_pairs_reuse_the_scores(make_run):
    run = make_run(task=TEXT_TASK, decontam={"enabled": False}, curate={"target": "judge"},
                   pairs={"scorer": "judge", "min_margin": 0.3})
    short, mid, long = "A spy.", "A spy saves a city.", "A retired spy saves her city from a flood."
    rows = samples("plot one", [short, long, mid])
    rows += samples("plot two", ["Two cooks.", "Two cooks argue."])  # margin 0.15 < 0.3
    write_shards(run, rows)
    calls: list[str] = []
    fake_judge = _fake_judge_prefers_detail(calls)
    summary = run_curate(run, judge=fake_judge)
    train = {r["text"]: r for r in read(run.paths.curated)}
    assert train["plot one"]["target"] == long and train["plot one"]["target_by"] == "judge"
    assert train["plot one"]["target_score"] == 1.0
    assert sorted(calls) == sorted(r["completion"] for r in rows)  # one score per sample
    assert summary["target"]["judge"]["asked"] == 5
    cached = JudgeCache(run.paths.judge_scores, "unused").path.read_text().splitlines()
    assert len(cached) == 5 and json.loads(cached[0])["example_id"] == rows[0]["example_id"]

    pairs_summary = run_pairs(run, judge=fake_judge)
    assert len(calls) == 5, "pairs asked the judge again for scores curate already had"
    assert pairs_summary["judge"] == {"asked": 0, "reused": 5}
    [pair] = read(run.paths.pairs)
    assert (pair["chosen"], pair["rejected"]) == (long, short)
    assert pair["margin"] == pytest.approx(1.0 - len(short) / 40, abs=1e-6)
    assert pairs_summary["below_margin"] == 1  # plot two: best - worst under min_margin


def test_judge_pairs_on_json_compare_repaired_answers():
    """The margin rule on judge scores for a JSON task, chosen = best, rejected = worst."""
    task = TaskConfig(**JSON_TASK)
    cfg = PairsConfig(scorer="judge", min_margin=0.5)
    ex = {"example_id": "e", "text": "t", "label": None, "target": None}
    comps = ['{"name":"M","year":1999}', '{"name":"M","year":2001}', '{"name":"M","year":1998}']
    pairs = pairs_for_example(ex, comps, [0.9, 0.2, 0.6], task, cfg, None, PairStats())
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        (comps[0], comps[1], pytest.approx(0.7))]
    stats = PairStats()
    assert pairs_for_example(ex, comps, [0.9, 0.5, 0.6], task, cfg, None, stats) == []
    assert stats.below_margin == 1


# --- config ----------------------------------------------------------------------------------


def _config_file(tmp_path, **curate_or_pairs) -> str:
    import yaml

    cfg = make_config(tmp_path / "run").model_dump(mode="json", exclude_defaults=True)
    for section, values in curate_or_pairs.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _line(path: str, text: str) -> int:
    return next(i for i, line in enumerate(open(path), 1) if text in line)


def test_rule_names_match_the_config_and_unknown_rules_fail_at_load(tmp_path):
    assert set(RULES) == set(RULE_NAMES)
    path = _config_file(tmp_path, curate={"target": "rule", "target_rule": "longest"})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        f"line {_line(path, 'target_rule:')}: curate.target_rule: unknown rule 'longest': the "
        "built-in rules are valid_answer, exact_format"]
    with pytest.raises(ConfigError, match="curate.target: rule needs curate.target_rule"):
        load_config(_config_file(tmp_path, curate={"target": "rule"}))
    with pytest.raises(ConfigError, match="only used with curate.target: rule"):
        load_config(_config_file(tmp_path, curate={"target_rule": "exact_format"}))
    cfg = load_config(_config_file(tmp_path, curate={"target": "rule",
                                                     "target_rule": "exact_format"}))
    assert cfg.curate.target_rule == "exact_format"


def test_moved_judge_keys_are_refused_with_their_new_place(tmp_path):
    path = _config_file(tmp_path, pairs={"judge_rubric": "be strict", "judge_max_tokens": 4})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems[0].startswith(
        f"line {_line(path, 'judge_rubric:')}: pairs.judge_rubric: this key is now `judge.rubric`")
    assert err.value.problems[1].startswith(
        f"line {_line(path, 'judge_max_tokens:')}: pairs.judge_max_tokens: this key is now "
        "`judge.max_tokens`")


# --- the real judge --------------------------------------------------------------------------


@pytest.mark.slow
def test_judge_target_with_the_real_teacher_on_vllm(make_run):
    """curate.target: judge with the packaged teacher (vLLM, CPU) as the judge; then the
    same curation again, and judge pairs, find every score in the run's cache (no engine)."""
    run = make_run(task=TEXT_TASK, decontam={"enabled": False}, curate={"target": "judge"},
                   teacher={"max_model_len": 512}, judge={"max_tokens": 4},
                   pairs={"scorer": "judge", "min_margin": 0.1})
    rows = samples("The film follows a chef who opens a small restaurant in Paris.", [
        "A chef opens a restaurant in Paris.", "Banana.", "It is about cooking in Paris."])
    rows += samples("A detective hunts a thief across Tokyo in the rain.", [
        "A detective chases a thief through rainy Tokyo.", "Detective, thief, Tokyo.",
        "The weather is nice."])
    write_shards(run, rows)
    summary = run_curate(run)
    judge = summary["target"]["judge"]
    assert judge["asked"] == 6 and judge["engine_opened"] is True
    cache = [json.loads(line) for line in run.paths.judge_scores.read_text().splitlines()]
    assert len(cache) == 6 and all(0.0 <= c["score"] <= 1.0 for c in cache)
    best = {}
    for c in cache:
        best[c["example_id"]] = max(best.get(c["example_id"], 0.0), c["score"])
    # the real judge separates answers: the off-topic ones are not the targets
    assert len({c["score"] for c in cache}) > 1
    train = read(run.paths.curated)
    assert len(train) == 2
    assert not {"Banana.", "The weather is nice."} & {e["target"] for e in train}
    for ex in train:
        assert ex["target_by"] == "judge" and ex["target_score"] == best[ex["example_id"]]
        answers = {r["completion"] for r in rows if r["example_id"] == ex["example_id"]}
        assert ex["target"] in answers

    again = run_curate(run)  # same judge, same samples: all from the cache, no engine
    assert again["target"]["judge"] == {**judge, "asked": 0, "reused": 6, "engine_opened": False}
    assert read(run.paths.curated) == train
    assert run_pairs(run)["judge"] == {"asked": 0, "reused": 6}
