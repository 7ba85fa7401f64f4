"""JSON answers repaired where the intent is plain, or rejected with the reason.

Teachers wrap JSON in ``` fences and prose, leave trailing commas, or write Python dicts
('single quotes', True/False/None). `repair_json` fixes exactly those, in that order, on the
first {...} object of the answer; what still does not parse is rejected, never guessed at.
A repaired answer is stored canonical (sorted keys, no spaces), like every JSON target.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from distill.curation.labels import canonical_json

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}


@dataclass
class JsonAnswer:
    """One sample's JSON: `canonical` when usable, else `reason` says why it is rejected."""

    canonical: str | None
    repairs: list[str] = field(default_factory=list)  # what was fixed, in order
    reason: str | None = None  # "json_invalid: ..." or "json_schema: <path>: <message>"

    @property
    def repaired(self) -> bool:
        return self.canonical is not None and bool(self.repairs)


def _first_object(text: str) -> str | None:
    """The first balanced {...} in `text`, braces inside (single or double) quotes skipped."""
    start = text.find("{")
    if start < 0:
        return None
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _single_quoted(text: str, i: int) -> tuple[str, int]:
    """The single-quoted string starting at text[i], as a JSON string, and the index after it."""
    out, j = [], i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text):
            nxt = text[j + 1]
            out.append("'" if nxt == "'" else ch + nxt)
            j += 2
            continue
        if ch == "'":
            return '"' + "".join(out).replace('"', '\\"') + '"', j + 1
        out.append(ch)
        j += 1
    raise ValueError("unterminated string")


def _normalize_tokens(text: str) -> tuple[str, list[str]]:
    """Trailing commas dropped, 'strings' double-quoted, True/False/None made JSON, all outside
    double-quoted strings (whose content is never touched)."""
    out: list[str] = []
    fixes: set[str] = set()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            j, escaped = i + 1, False
            while j < len(text) and (escaped or text[j] != '"'):
                escaped = not escaped and text[j] == "\\"
                j += 1
            out.append(text[i:j + 1])
            i = j + 1
        elif ch == "'":
            s, i = _single_quoted(text, i)
            out.append(s)
            fixes.add("single_quotes")
        elif ch == ",":
            rest = text[i + 1:].lstrip()
            if rest[:1] in ("}", "]"):
                fixes.add("trailing_comma")
            else:
                out.append(ch)
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word in _PY_WORDS:
                fixes.add("python_literals")
            out.append(_PY_WORDS.get(word, word))
            i = j
        else:
            out.append(ch)
            i += 1
    order = ("trailing_comma", "single_quotes", "python_literals")
    return "".join(out), [f for f in order if f in fixes]


def repair_json(text: str) -> JsonAnswer:
    """`text` parsed as JSON, repaired where safe (see the module docstring)."""
    stripped = (text or "").strip()
    if (canon := canonical_json(stripped)) is not None:
        return JsonAnswer(canon)
    repairs: list[str] = []
    fenced = _FENCE.search(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
        repairs.append("fence")
        if (canon := canonical_json(stripped)) is not None:
            return JsonAnswer(canon, repairs)
    obj = _first_object(stripped)
    if obj is None:
        why = ("the first {...} object never closes (unbalanced braces or quotes)"
               if "{" in stripped else "no {...} object in the answer")
        return JsonAnswer(None, repairs, f"json_invalid: {why}")
    if obj != stripped:
        repairs.append("prose")
    if (canon := canonical_json(obj)) is not None:
        return JsonAnswer(canon, repairs)
    try:
        fixed, fixes = _normalize_tokens(obj)
        value = json.loads(fixed)
    except ValueError as exc:
        return JsonAnswer(None, repairs, f"json_invalid: {exc}"[:300])
    return JsonAnswer(canonical_json(json.dumps(value)), repairs + fixes)


def schema_problem(canonical: str, schema: dict[str, Any] | None) -> str | None:
    """None when the JSON satisfies `schema`, else "json_schema: <path>: <message>"."""
    if schema is None:
        return None
    import jsonschema  # a dependency of distill (pyproject), as for the answer filter

    try:
        jsonschema.validate(json.loads(canonical), schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"json_schema: {path}: {exc.message}"[:300]
    return None


def check_json_answer(text: str, schema: dict[str, Any] | None) -> JsonAnswer:
    """Repair, then validate against the task's schema; a failure keeps its reason."""
    answer = repair_json(text)
    if answer.canonical is not None and (problem := schema_problem(answer.canonical, schema)):
        return JsonAnswer(None, answer.repairs, problem)
    return answer
