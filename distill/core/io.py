"""Atomic file writes and content hashes: the one place that knows how files are committed.

Every file a stage writes goes to a temporary name beside its destination and is renamed onto
it only when complete, so a killed process never leaves a half-written file behind, and a
reader sees either the old version or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process (two writers never share a temp file)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Yield temp paths; rename them all onto `paths` only if the block succeeds.

    With several paths, they are renamed in the order given: put the file whose presence
    means "done" last.
    """
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    tmps = [temp_path(p) for p in paths]
    try:
        yield tmps
        for tmp, final in zip(tmps, paths):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_outputs(path) as (tmp,):
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str))


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in records))


def write_parquet_atomic(path: Path, table) -> None:
    """A pyarrow Table to Parquet, renamed into place when complete."""
    import pyarrow.parquet as pq

    with atomic_outputs(path) as (tmp,):
        pq.write_table(table, tmp)


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
