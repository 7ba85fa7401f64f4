"""Templates that name several columns of a row, nested columns, and the packaged
aclsum references loader."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from distill.core.config import load_config
from distill.core.errors import ConfigError, DataError
from distill.core.messages import input_values, student_messages, teacher_messages
from distill.data import collect, load_rows

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "{instruction}\n\nTitle: {title}\n\nText: {body}"


def _config(tmp_path: Path, prompts: dict, task: dict | None = None) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["prompts"] = prompts
    cfg["task"].update(task or {"template": TEMPLATE})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_template_columns_reach_teacher_and_student(tmp_path):
    src = _csv(tmp_path / "d.csv", [
        {"title": "Great", "body": "A warm, funny film.", "label": "positive"},
        {"title": "Dull", "body": "", "label": "negative"},             # line 3: empty body
    ])
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(src), "test_size": 1}))
    assert cfg.task.input_fields == ["title", "body"]
    kept, bad, _ = collect(load_rows(cfg), "skip")
    assert [(b.line, b.reason) for b in bad] == [(3, "field 'body' is empty")]
    (ex,) = kept
    assert input_values(cfg.task, ex.text) == {"title": "Great", "body": "A warm, funny film."}
    teacher_turn = teacher_messages(cfg.task, ex.text)[-1]["content"]
    assert "Title: Great\n\nText: A warm, funny film." in teacher_turn
    assert teacher_turn.startswith(cfg.task.instruction)
    student_turn = student_messages(cfg.task, ex.text)[-1]["content"]
    assert student_turn.startswith(cfg.task.student_instruction)
    assert "Title: Great" in student_turn


def test_missing_column_is_named_with_the_row_columns(tmp_path):
    src = _csv(tmp_path / "d.csv", [{"title": "t", "text": "x", "label": "positive"}])
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(src), "test_size": 1}))
    with pytest.raises(DataError, match=r"d\.csv:2: missing field 'body' \(the row has: label, "
                                        r"text, title\)"):
        collect(load_rows(cfg), "fail")


def test_nested_columns_and_joined_lists(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"meta": {"title": "Paper"}, "sents": {"abstract": ["One.", "Two."]},
                               "summary": {"outcome": "It works."}}) + "\n")
    cfg = load_config(_config(
        tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1,
                   "fields": {"title": "meta.title", "body": "sents.abstract"},
                   "label_field": "summary.outcome"},
        {"template": TEMPLATE, "type": "free_text", "labels": None}))
    (ex,), bad, _ = collect(load_rows(cfg), "fail")
    assert input_values(cfg.task, ex.text) == {"title": "Paper", "body": "One. Two."}
    assert ex.label == "It works."


def test_column_rules_are_checked_when_the_config_loads(tmp_path):
    src = _csv(tmp_path / "d.csv", [{"title": "t", "body": "b", "label": "positive"}])
    with pytest.raises(ConfigError, match=r"prompts.fields maps \['abstract'\]"):
        load_config(_config(tmp_path, {"source": "csv", "path": str(src),
                                       "fields": {"abstract": "sents"}}))
    with pytest.raises(ConfigError, match="names no input column"):
        load_config(_config(tmp_path, {"source": "csv", "path": str(src)},
                            {"template": "{instruction} only"}))
    with pytest.raises(ConfigError, match=r"placeholder \{a.b\} must be a plain column name"):
        load_config(_config(tmp_path, {"source": "csv", "path": str(src)},
                            {"template": "{instruction} {a.b}"}))
    with pytest.raises(ConfigError, match=r"task.few_shot.0.input: the template names"):
        load_config(_config(tmp_path, {"source": "csv", "path": str(src)},
                            {"template": TEMPLATE,
                             "few_shot": [{"input": "plain", "output": "positive"}]}))
    with pytest.raises(ConfigError, match="no installed package 'no_such_pkg'"):
        load_config(_config(tmp_path, {"source": "csv", "path": "package:no_such_pkg/data"}))


def test_plain_text_where_columns_are_expected_is_a_named_error(tmp_path):
    src = _csv(tmp_path / "d.csv", [{"title": "t", "body": "b", "label": "positive"}])
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(src)}))
    with pytest.raises(DataError, match=r"reads the columns \['title', 'body'\]"):
        student_messages(cfg.task, "just text")


def test_aclsum_references_gold_fields(tmp_path):
    cfg = load_config(_config(tmp_path, {"source": "aclsum_references", "test_size": 10},
                              {"template": "{instruction}\n\n{input}", "type": "json",
                               "labels": None, "json_schema": {"type": "object"}}))
    kept, bad, dups = collect(load_rows(cfg), "fail")
    assert len(kept) > 5000 and not bad
    assert dups > 0  # the same reference cited by several papers is one example
    gold = json.loads(kept[0].label)
    assert set(gold) == {"title", "year", "first_author"} and isinstance(gold["year"], int)
    assert not any("- " in ex.text and "im- plicit" in ex.text for ex in kept)
