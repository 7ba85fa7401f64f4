"""JSON extraction metrics (field-level F1, schema validity) and the pairwise judge's order swap.

Pure Python: the judges here are plain functions standing in for a model (each says so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill import judge, metrics
from distill.core.config import TaskConfig
from distill.eval import score, truncated

ROOT = Path(__file__).resolve().parents[2]
GOLD = json.dumps({"name": "Ann Lee", "amount": 2000, "city": "Paris"})
SCHEMA = {"type": "object", "required": ["name", "amount"],
          "properties": {"name": {"type": "string"}, "amount": {"type": "number"},
                         "city": {"type": "string"}, "tags": {"type": "array"}}}


def counts(pred: str, gold: str = GOLD) -> tuple[int, int, int]:
    c = metrics.field_counts(pred, gold)
    return c.right, c.predicted, c.gold


def test_right_answer_scores_one():
    assert counts('{"city": "Paris", "amount": 2000, "name": "Ann Lee"}') == (3, 3, 3)
    assert metrics.field_f1([GOLD], [GOLD]) == 1.0
    assert metrics.json_equal(GOLD, GOLD)


def test_one_wrong_field_is_one_miss_each_way():
    pred = '{"name": "Ann Lee", "amount": 2000, "city": "Lyon"}'
    assert counts(pred) == (2, 3, 3)
    assert metrics.field_f1([pred], [GOLD]) == pytest.approx(2 / 3)
    fields = dict(metrics.field_counts(pred, GOLD).fields)
    assert fields == {"amount": True, "city": False, "name": True}


def test_missing_field_costs_recall_extra_field_costs_precision():
    missing = '{"name": "Ann Lee", "amount": 2000}'
    assert counts(missing) == (2, 2, 3)
    extra = '{"name": "Ann Lee", "amount": 2000, "city": "Paris", "zip": "75001"}'
    assert counts(extra) == (3, 4, 3)
    rows = [metrics.field_counts(missing, GOLD), metrics.field_counts(extra, GOLD)]
    # micro over both rows: right 5, predicted 6, gold 6
    assert metrics.field_precision_of(rows) == pytest.approx(5 / 6)
    assert metrics.field_recall_of(rows) == pytest.approx(5 / 6)
    assert metrics.field_f1_of(rows) == pytest.approx(5 / 6)


def test_invalid_json_predicts_nothing_and_misses_every_gold_pair():
    assert counts('{"name": "Ann Lee", amount: 2000') == (0, 0, 3)
    assert counts("") == (0, 0, 3)
    assert metrics.field_f1(["not json", GOLD], [GOLD, GOLD]) == pytest.approx(2 * 3 / (3 + 6))
    assert not metrics.schema_valid("not json", SCHEMA)


def test_numbers_case_and_whitespace_are_normalised():
    pred = '{"name": "  ann   LEE ", "amount": "2,000", "city": "PARIS"}'
    assert counts(pred) == (3, 3, 3)
    assert metrics.json_equal(pred, GOLD)
    assert counts('{"name": "Ann Lee", "amount": 2000.0, "city": "Paris"}') == (3, 3, 3)
    assert counts('{"name": "Ann Lee", "amount": "2000.00", "city": "Paris"}') == (3, 3, 3)
    # true is not 1, and "2,00" is not a number with thousands separators
    assert counts('{"a": true}', '{"a": 1}') == (0, 1, 1)
    assert counts('{"a": "2,00"}', '{"a": 200}') == (0, 1, 1)


def test_list_fields_are_multisets_and_nested_objects_dotted_keys():
    gold = '{"tags": ["a", "b", "b"], "addr": {"city": "Paris", "zip": "75001"}}'
    assert counts('{"tags": ["B", "a", "b"], "addr": {"zip": 75001, "city": "paris"}}',
                  gold) == (5, 5, 5)
    c = metrics.field_counts('{"tags": ["a", "b"], "addr": {"city": "Paris"}}', gold)
    assert (c.right, c.predicted, c.gold) == (3, 3, 5)
    assert dict(c.fields) == {"addr.city": True, "addr.zip": False, "tags": False}
    assert counts('{"tags": []}', '{"tags": []}') == (1, 1, 1)
    assert counts('{"tags": ["x"]}', '{"tags": []}') == (0, 1, 1)


def test_schema_validity_checks_the_task_schema():
    assert metrics.schema_valid(GOLD, SCHEMA)
    assert not metrics.schema_valid('{"name": "Ann"}', SCHEMA)  # amount required
    assert not metrics.schema_valid('{"name": "Ann", "amount": "lots"}', SCHEMA)
    assert metrics.schema_valid('{"anything": 1}', None)


def test_eval_scores_json_tasks_by_field_f1_with_a_ci():
    task = TaskConfig(name="t", type="json", instruction="x", json_schema=SCHEMA)
    answers = [GOLD, '{"name": "Ann Lee", "amount": 2000, "city": "Lyon"}', "nope",
               '{"name": "ann lee", "amount": "2,000"}']
    scores, parsed = score(task, answers, [GOLD] * 4, resamples=200, seed=0)
    f1 = scores["field_f1"]
    # right 3 + 2 + 0 + 2 = 7, predicted 3 + 3 + 0 + 2 = 8, gold 12
    assert f1["value"] == pytest.approx(2 * 7 / 20)
    assert f1["ci_low"] <= f1["value"] <= f1["ci_high"] and f1["ci_low"] < f1["ci_high"]
    assert scores["json_valid"]["value"] == 0.75
    assert scores["schema_valid"]["value"] == 0.5  # "2,000" is right, but not a JSON number
    assert scores["exact_match"]["value"] == 0.25
    assert scores["field_exact"]["city"] == {"value": 0.25, "n": 4}
    assert parsed[2] is None
    assert metrics.MAIN_METRIC["json"] == "field_f1"


def test_truncated_answers_are_counted_per_model_and_old_files_stay_readable():
    class Cfg:
        answer_tokens = 64

    found = truncated(Cfg(), {
        "teacher": {"task": ["a", "b"], "finish_reasons": ["stop", "length"], "max_tokens": 64},
        "student_sft": {"task": ["a", "b"]}})  # saved before finish reasons were kept
    assert found == {"max_tokens": 64, "models": {
        "teacher": {"cut": 1, "of": 2, "max_tokens": 64},
        "student_sft": {"cut": None, "of": 2, "max_tokens": None}}}


# --- the pairwise judge ---------------------------------------------------------------------


def _items(n: int = 6, reference: str | None = "gold answer") -> list[judge.Item]:
    return [judge.Item(f"ex{i}", f"request {i}", f"STUDENT answer {i}", f"TEACHER answer {i}",
                       reference) for i in range(n)]


def _answers(conversation) -> tuple[str, str]:
    user = conversation[-1]["content"]
    first = user.split("Answer A:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
    second = user.split("Answer B:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
    return first, second


def always_a(conversations):
    """A fake judge (no model): always prefers the answer in position A."""
    return ["A"] * len(conversations)


def prefers_student(conversations):
    """A fake judge (no model): always picks whichever position holds the student's text."""
    return ["A" if _answers(c)[0].startswith("STUDENT") else "**B**." for c in conversations]


def test_a_judge_that_prefers_position_a_gives_every_item_a_tie(tmp_path):
    result = judge.judge_model(_items(), always_a, None, tmp_path / "j.jsonl", resamples=100)
    assert result["counts"] == {"win": 0, "tie": 6, "loss": 0}
    assert result["tie"] == 1.0 and result["score"]["value"] == 0.5
    assert result["verdicts"] == 12 and result["unparseable"] == 0


def test_a_judge_that_prefers_the_student_gives_all_wins(tmp_path):
    result = judge.judge_model(_items(), prefers_student, "be correct", tmp_path / "j.jsonl",
                               resamples=100)
    assert result["win"] == 1.0 and result["loss"] == 0.0
    assert result["score"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}


def test_both_orders_are_asked_with_reference_and_rubric(tmp_path):
    seen = []

    def recorder(conversations):
        """A fake judge (no model): records what it is asked, answers tie."""
        seen.extend(conversations)
        return ["tie"] * len(conversations)

    judge.judge_model(_items(1), recorder, "be brief", tmp_path / "j.jsonl")
    assert [_answers(c) for c in seen] == [("STUDENT answer 0", "TEACHER answer 0"),
                                           ("TEACHER answer 0", "STUDENT answer 0")]
    assert all("gold answer" in c[-1]["content"] and "be brief" in c[-1]["content"]
               for c in seen)
    seen.clear()
    judge.judge_model(_items(1, reference=None), recorder, None, tmp_path / "k.jsonl")
    assert not any("Reference answer" in c[-1]["content"] for c in seen)


def test_unparseable_verdicts_count_as_ties_and_are_counted(tmp_path):
    def rambles(conversations):
        """A fake judge (no model): a reply naming neither answer."""
        return ["Both have merits."] * len(conversations)

    result = judge.judge_model(_items(3), rambles, None, tmp_path / "j.jsonl")
    assert result["unparseable"] == 6 and result["tie"] == 1.0


@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("b.", "B"), ("**B**", "B"), ("Tie", "tie"), ("Verdict: tie", "tie"),
    ("Answer B is better", "B"), ("It's a tie", "tie"), ("a tie", "tie"),
    ("The better answer is A", "A"), ("A and B are equal", "tie"), ("A or B", None),
    ("", None), ("I cannot decide", None)])
def test_verdicts_are_parsed_robustly(reply, verdict):
    assert judge.parse_verdict(reply) == verdict


def test_saved_verdicts_are_not_asked_again(tmp_path):
    cache = tmp_path / "judge" / "student_sft.jsonl"
    first = judge.judge_model(_items(4), prefers_student, None, cache)
    lines = cache.read_text().splitlines()
    assert len(lines) == 8 and all("messages" in json.loads(x) and "raw" in json.loads(x)
                                   for x in lines)

    def must_not_be_called(conversations):
        """A fake judge (no model): fails if anything is asked."""
        raise AssertionError(f"asked again: {len(conversations)}")

    assert judge.judge_model(_items(4), must_not_be_called, None, cache) == first
    # a torn last line (crash mid-write) is asked again; a changed answer is judged afresh
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    changed = _items(4)
    changed[0] = judge.Item("ex0", "request 0", "STUDENT new answer", "TEACHER answer 0",
                            "gold answer")
    asked = []

    def counting(conversations):
        """A fake judge (no model): prefers the student, counts the questions."""
        asked.extend(conversations)
        return prefers_student(conversations)

    assert judge.judge_model(changed, counting, None, cache)["win"] == 1.0
    assert len(asked) == 3  # two orders of the changed row, one torn line


# --- eval wiring: saved answers, a fake judge, results.json -----------------------------------


def _free_text_run(tmp_path, labelled: bool):
    import yaml

    from distill.core.config import load_config
    from distill.core.rundir import Run
    from distill.pipeline import run_stage

    rows = [{"text": f"question {i}", **({"label": f"answer {i}"} if labelled else {})}
            for i in range(12)]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"),
               prompts={"source": "jsonl", "path": str(src), "test_size": 4,
                        "label_field": "label" if labelled else None},
               task={"name": "qa", "type": "free_text", "instruction": "Answer.",
                     "max_answer_tokens": 16},
               judge={"rubric": "be right"}, eval={"forgetting_items": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = Run(load_config(path))
    run_stage(run, "prompts")
    from distill.data import read_examples

    n = len(read_examples(run.paths.test_prompts))
    # Saved answers stand in for the models (eval resumes from them: no engine is loaded);
    # the base student's file has no finish reasons, as one written before they were kept.
    run.paths.eval_answers("teacher").parent.mkdir(parents=True)
    run.paths.eval_answers("teacher").write_text(json.dumps(
        {"task": [f"TEACHER {i}" for i in range(n)], "max_tokens": 16,
         "finish_reasons": ["length"] + ["stop"] * (n - 1)}))
    run.paths.eval_answers("student_base").write_text(json.dumps(
        {"task": [f"STUDENT {i}" for i in range(n)], "general": []}))
    return run, n


@pytest.mark.parametrize("labelled", [True, False])
def test_eval_judges_each_student_and_a_rerun_asks_nothing(tmp_path, monkeypatch, labelled):
    from distill import eval as evaluate

    run, n = _free_text_run(tmp_path, labelled)
    asked = []

    def fake_judge(cfg, stack):
        """Stands in for the judge's engine (no model): prefers the student, records prompts."""
        def ask(conversations):
            asked.extend(conversations)
            return prefers_student(conversations)
        return ask

    monkeypatch.setattr(evaluate, "lazy_judge", fake_judge)
    evaluate.run_eval(run)
    results = json.loads(run.paths.eval_results.read_text())
    judged = results["judge"]
    assert list(judged["models"]) == ["student_base"]
    assert judged["models"]["student_base"]["win"] == 1.0
    assert judged["reference"] == ("gold" if labelled else "none")
    assert results["reference"] == ("gold" if labelled else "teacher")
    assert len(asked) == 2 * n and all("be right" in c[-1]["content"] for c in asked)
    assert all(("Reference answer" in c[-1]["content"]) == labelled for c in asked)
    assert results["truncated"]["max_tokens"] == run.cfg.answer_tokens
    assert results["truncated"]["models"]["teacher"]["cut"] == 1
    assert results["truncated"]["models"]["student_base"]["cut"] is None
    assert len(run.paths.eval_judge("student_base").read_text().splitlines()) == 2 * n

    def no_judge(cfg, stack):
        """Stands in for the judge's engine (no model): fails if a verdict is asked again."""
        return lambda conversations: pytest.fail("a saved verdict was asked again")

    monkeypatch.setattr(evaluate, "lazy_judge", no_judge)
    evaluate.run_eval(run)
    assert json.loads(run.paths.eval_results.read_text())["judge"] == judged
