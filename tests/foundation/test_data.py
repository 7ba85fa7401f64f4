"""Task data: loaders, bad rows with line numbers, dedup, seeded stratified split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from distill.core.config import load_config
from distill.data import collect, load_rows, read_examples, stratified_split
from distill.core.errors import DataError
from distill.pipeline import run_stage
from distill.core.rundir import Run

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, data: dict, **extra) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["prompts"] = data
    cfg.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [json.dumps({"text": f"review number {i}", "label": "positive" if i % 3 else "negative"})
        for i in range(30)]


def test_jsonl_bad_rows_are_named_by_line(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", GOOD[:3] + [
        "{not json",                                  # line 4
        json.dumps({"txt": "typo in field"}),        # line 5
        json.dumps({"text": "x", "label": "meh"}),   # line 6
        json.dumps({"text": 42}),                    # line 7
    ])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "skip")
    assert len(kept) == 3
    assert [(b.line, b.reason.split(" (")[0]) for b in bad] == [
        (4, "not valid JSON"),
        (5, "missing field 'text'"),
        (6, "label 'meh' is not one of ['positive', 'negative']"),
        (7, "field 'text' must be text, got int"),
    ]
    with pytest.raises(DataError, match=r"p\.jsonl:4: not valid JSON"):
        collect(load_rows(cfg), "fail")


def test_csv_and_parquet_and_directory(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "a.csv").write_text("text,label\ngreat film,positive\nawful,negative\n"
                                  "too,many,cells\n")
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(folder), "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "skip")
    assert [k.text for k in kept] == ["great film", "awful"]
    assert [(b.line, b.reason) for b in bad] == [(4, "wrong number of columns")]

    import pyarrow as pa
    pq.write_table(pa.table({"review": ["fine", "bad"], "y": ["positive", "negative"]}),
                   tmp_path / "p.parquet")
    cfg = load_config(_config(tmp_path, {"source": "parquet", "path": str(tmp_path / "p.parquet"),
                                         "text_field": "review", "label_field": "y",
                                         "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "fail")
    assert [(k.text, k.label, k.line) for k in kept] == [("fine", "positive", 1),
                                                          ("bad", "negative", 2)]


def test_unlabelled_prompts_are_fine(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "q1"}), json.dumps({"prompt": "q2"})])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src),
                                         "text_field": "prompt", "label_field": None,
                                         "test_size": 1}))
    kept, _, _ = collect(load_rows(cfg), "fail")
    assert [k.label for k in kept] == [None, None]


def test_duplicates_are_counted_not_silently_dropped(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", GOOD[:2] + [GOOD[0].replace("review", "review ")])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1}))
    kept, bad, dups = collect(load_rows(cfg), "fail")
    assert (len(kept), len(bad), dups) == (2, 0, 1)


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", GOOD)
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 9}))
    kept, _, _ = collect(load_rows(cfg), "fail")
    train, test = stratified_split(kept, 9, seed=0)
    again, test_again = stratified_split(list(reversed(kept)), 9, seed=0)
    assert [e.example_id for e in test] == [e.example_id for e in test_again]
    assert {e.example_id for e in train} & {e.example_id for e in test} == set()
    assert len(train) + len(test) == 30 and len(test) == 9
    # 10 of 30 rows are negative: a third of the test set
    assert sum(e.label == "negative" for e in test) == 3
    _, other = stratified_split(kept, 9, seed=1)
    assert {e.example_id for e in other} != {e.example_id for e in test}


def test_prompts_stage_writes_parquet_and_manifest(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", GOOD + ["{broken"])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 6,
                                         "max_train_prompts": 20, "on_bad_row": "skip"}))
    run = Run(cfg)
    summary = run_stage(run, "prompts")
    assert summary["bad_rows"] == 1 and summary["train_prompts"] == 20
    assert len(read_examples(run.dir / "prompts" / "test.parquet")) == 6
    bad = [json.loads(l) for l in (run.dir / "prompts" / "bad_rows.jsonl").read_text().splitlines()]
    assert bad[0]["line"] == 31
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["status"] == "done"
    assert manifest["summaries"]["prompts"]["test_examples"] == 6
    assert manifest["config"]["prompts"]["test_size"] == 6
    assert "pyarrow" in manifest["packages"]


def test_failed_stage_is_recorded(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", GOOD + ["{broken"])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 6}))
    run = Run(cfg)
    with pytest.raises(DataError, match=r"p\.jsonl:31"):
        run_stage(run, "prompts")
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["stages"]["prompts"]["status"] == "failed"
    assert not (run.dir / "prompts" / "train.parquet").exists()


def test_rotten_tomatoes_builtin(tmp_path):
    cfg = load_config(_config(tmp_path, {"source": "rotten_tomatoes", "test_size": 400}))
    kept, bad, dups = collect(load_rows(cfg), "fail")
    assert len(kept) > 12000 and not bad and dups > 0
    assert {k.label for k in kept} == {"positive", "negative"}
    train, test = stratified_split(kept, 400, seed=0)
    assert len(test) == 400 and abs(sum(e.label == "positive" for e in test) / 400 - 0.58) < 0.02


def _unique_references(n: int) -> list:
    from distill.data import Example

    return [Example(f"id{i:04d}", f"document {i}", f"a reference answer number {i}", "f", i)
            for i in range(n)]


@pytest.mark.parametrize("stratify", [False, True])
def test_unique_references_still_give_exactly_test_size_held_out_rows(stratify):
    """Free-text references are nearly all unique: stratifying by them used to leave 1 row."""
    examples = _unique_references(1000)
    train, test = stratified_split(examples, 100, seed=0, stratify=stratify)
    assert len(test) == 100 and len(train) == 900
    assert {e.example_id for e in train} | {e.example_id for e in test} == \
        {e.example_id for e in examples}
    assert [e.example_id for e in stratified_split(examples, 100, 0, stratify)[1]] == \
        [e.example_id for e in test]


def test_the_prompts_stage_stratifies_only_class_labels(tmp_path):
    rows = [json.dumps({"text": f"doc {i} " + "w " * (i % 7), "label": f"summary {i}"})
            for i in range(200)]
    src = tmp_path / "free.jsonl"
    src.write_text("\n".join(rows) + "\n")
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 50}),
                      ["task.type=free_text", "task.labels=null"])
    summary = run_stage(Run(cfg), "prompts")
    assert summary["test_examples"] == 50 and summary["train_prompts"] == 150


def _bytes(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_non_utf8_jsonl_row_is_a_bad_row(tmp_path):
    # Latin-1 "é" (0xe9) in line 2 only: that row is bad, the others load.
    src = _bytes(tmp_path / "p.jsonl", [GOOD[0].encode(), b'{"text": "caf\xe9 review"}',
                                        GOOD[1].encode()])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "skip")
    assert [k.text for k in kept] == ["review number 0", "review number 1"]
    assert [str(b) for b in bad] == [
        f"{src}:2: not UTF-8: byte e9 at column 14 (save the file as UTF-8)"]
    with pytest.raises(DataError, match=r"p\.jsonl:2: not UTF-8: byte e9 .*on_bad_row: skip"):
        collect(load_rows(cfg), "fail")


def test_non_utf8_csv_row_is_a_bad_row_and_later_lines_keep_their_numbers(tmp_path):
    src = _bytes(tmp_path / "p.csv", [b"text,label", b"great film,positive",
                                      b'"a caf\xe9 scene,\nover two lines",negative',
                                      b"awful,negative", b"\xff,positive", b"fine,positive"])
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(src), "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "skip")
    assert [(k.text, k.line) for k in kept] == [("great film", 2), ("awful", 5), ("fine", 7)]
    assert [(b.line, b.reason) for b in bad] == [
        (3, "not UTF-8: byte e9 at column 7 (save the file as UTF-8)"),
        (6, "not UTF-8: byte ff at column 1 (save the file as UTF-8)")]


def test_non_utf8_csv_header_stops_with_the_file(tmp_path):
    src = _bytes(tmp_path / "p.csv", [b"t\xe9xt,label", b"great film,positive"])
    cfg = load_config(_config(tmp_path, {"source": "csv", "path": str(src), "test_size": 1}))
    with pytest.raises(DataError, match=r"p\.csv:1: the header is not UTF-8: byte e9"):
        collect(load_rows(cfg), "skip")


@pytest.mark.parametrize("name, lines", [
    ("p.csv", [b"text,label", b"great film,positive", b"awful,negative"]),
    ("p.jsonl", [GOOD[1].encode(), GOOD[0].encode()]),
])
def test_utf8_bom_is_dropped(tmp_path, name, lines):
    # Excel and Notepad write a BOM; it must not become part of the first header or JSON line.
    src = _bytes(tmp_path / name, [b"\xef\xbb\xbf" + lines[0], *lines[1:]])
    source = name.split(".")[1]
    cfg = load_config(_config(tmp_path, {"source": source, "path": str(src), "test_size": 1}))
    kept, bad, _ = collect(load_rows(cfg), "fail")
    assert len(kept) == 2 and not bad
    assert not any("\ufeff" in k.text for k in kept)


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"])
def test_empty_prompt_file_is_named(tmp_path, content):
    suffix = "csv" if "," in content else "jsonl"
    src = tmp_path / f"empty.{suffix}"
    src.write_text(content)
    cfg = load_config(_config(tmp_path, {"source": suffix, "path": str(src), "test_size": 1}))
    with pytest.raises(DataError) as exc:
        run_stage(Run(cfg), "prompts")
    assert str(exc.value) == (f"{src}: no usable examples: no rows in {src} "
                              "(is the file empty?)")


def test_all_rows_bad_points_at_the_bad_rows_file(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", ["{broken", "[1]"])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1,
                                         "on_bad_row": "skip"}))
    run = Run(cfg)
    with pytest.raises(DataError, match=r"p\.jsonl: no usable examples: all 2 rows are bad "
                                        r"\(listed in .*bad_rows\.jsonl\)"):
        run_stage(run, "prompts")
    assert len((run.dir / "prompts" / "bad_rows.jsonl").read_text().splitlines()) == 2


def test_same_id_different_text_is_a_bad_row(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "text": "first text", "label": "positive"}),
        json.dumps({"id": "b", "text": "other", "label": "negative"}),
        json.dumps({"id": "a", "text": "first  text", "label": "positive"}),  # same text: a dup
        json.dumps({"id": "a", "text": "second text", "label": "negative"}),  # line 4: clash
    ])
    cfg = load_config(_config(tmp_path, {"source": "jsonl", "path": str(src), "test_size": 1,
                                         "id_field": "id"}))
    kept, bad, dups = collect(load_rows(cfg), "skip")
    assert [(k.example_id, k.text) for k in kept] == [("a", "first text"), ("b", "other")]
    assert dups == 1
    assert [str(b) for b in bad] == [
        f"{src}:4: duplicate id 'a' with a different text (first at {src}:1)"]
    with pytest.raises(DataError, match=r"p\.jsonl:4: duplicate id 'a'"):
        collect(load_rows(cfg), "fail")
