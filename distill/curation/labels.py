"""Turn a model's free-form answer into one of the task's labels, and vote over samples.

Curation, pairs and eval all read answers through `normalize_label`, so " Positive." counts as
"positive" everywhere, and an answer that names no label is invalid everywhere.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)


def _canon(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def normalize_label(text: str | None, labels: Iterable[str]) -> str | None:
    """The first task label that the answer starts with or contains as whole words.

    Case-insensitive; punctuation and whitespace are ignored. An answer that starts with a label
    wins over one mentioned later, so "Negative, not positive" is "negative". Returns None when
    no label is present. Multi-word labels match as a word sequence.
    """
    if text is None:
        return None
    answer = _canon(text)
    if not answer:
        return None
    words = answer.split()
    best: tuple[int, int, str] | None = None  # (position, -length, label)
    for label in labels:
        canon = _canon(label)
        if not canon:
            continue
        target = canon.split()
        for pos in range(len(words) - len(target) + 1):
            if words[pos : pos + len(target)] == target:
                cand = (pos, -len(target), label)
                if best is None or cand < best:
                    best = cand
                break
    return best[2] if best else None


def canonical_json(text: str) -> str | None:
    """A canonical form of a JSON answer (sorted keys, no spaces), or None if it is not JSON."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def validate_json(text: str, schema: dict[str, Any] | None) -> str | None:
    """None when `text` is JSON valid against `schema`, else the reason it is not."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        return f"not JSON: {exc}"
    if schema is None:
        return None
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"schema: {path}: {exc.message}"[:300]
    return None


@dataclass(frozen=True)
class Vote:
    winner: str | None  # None on a tie for first place
    count: int
    total: int
    runner_up: str | None = None
    tied: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        return self.count / self.total if self.total else 0.0


def majority_vote(answers: Iterable[str | None], total: int | None = None) -> Vote:
    """Majority over normalised answers; None answers count only toward `total`.

    `total` defaults to the number of answers, so invalid samples dilute the agreement ratio
    instead of vanishing from it. A tie for first place has no winner.
    """
    answers = list(answers)
    counts = Counter(a for a in answers if a is not None)
    total = len(answers) if total is None else total
    if not counts:
        return Vote(None, 0, total)
    ranked = counts.most_common()
    top, top_n = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == top_n:
        tied = tuple(sorted(a for a, n in ranked if n == top_n))
        return Vote(None, top_n, total, runner_up=ranked[1][0], tied=tied)
    return Vote(top, top_n, total, runner_up=ranked[1][0] if len(ranked) > 1 else None)
