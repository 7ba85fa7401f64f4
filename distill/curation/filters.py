"""Quality filters over teacher completions, and the agreement vote across the n samples.

Every filter has a name. A dropped row is recorded with the name of the first filter that
dropped it and a short detail, so any row missing from the training set can be explained.
Filters look at the completion (the prompt was vetted by the prompts stage).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from distill.core.config import FiltersConfig, TaskConfig
from distill.core.errors import ConfigError
from distill.curation.labels import canonical_json, majority_vote, normalize_label, validate_json

Row = dict[str, Any]
# A row filter returns None to keep the row, or the reason it is dropped.
RowCheck = Callable[[Row], "str | None"]

DEFAULT_REFUSAL_PATTERNS = (
    r"\bI(?:'m| am) sorry\b",
    r"\bI (?:cannot|can't|can not|won't|will not) (?:help|assist|provide|answer|comply|do that)",
    r"\bI(?:'m| am) (?:unable|not able) to\b",
    r"\bas an AI\b",
    r"\bas a (?:large )?language model\b",
    r"\bI apologi[sz]e\b",
    r"\bI don't have (?:access|the ability)\b",
)


@dataclass(frozen=True)
class RowFilter:
    name: str
    check: RowCheck


@dataclass
class Rejected:
    row_id: str
    example_id: str
    filter: str
    detail: str

    def as_row(self) -> dict[str, str]:
        return {"row_id": self.row_id, "example_id": self.example_id, "filter": self.filter,
                "detail": self.detail}


def _compile(patterns: Iterable[str], key: str) -> list[re.Pattern]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE | re.MULTILINE))
        except re.error as exc:
            raise ConfigError("config", [f"{key}.{i}: not a valid regex {pattern!r}: {exc}"])
    return compiled


def _bound(name: str, column: str, limit: int, low: bool) -> RowFilter:
    def measure(row: Row) -> int:
        value = row[column]
        return len(value or "") if column == "completion" else int(value or 0)

    def check(row: Row) -> str | None:
        n = measure(row)
        if (n < limit) if low else (n > limit):
            return f"{n} {'<' if low else '>'} {limit}"
        return None

    return RowFilter(name, check)


def build_row_filters(cfg: FiltersConfig, task: TaskConfig) -> list[RowFilter]:
    """The configured row filters, in the order they are applied."""
    filters: list[RowFilter] = []
    if cfg.drop_truncated:
        filters.append(RowFilter(
            "truncated",
            lambda r: f"finish_reason={r['finish_reason']}" if r["finish_reason"] == "length"
            else None,
        ))
    for name, column, limit, low in (
        ("min_chars", "completion", cfg.min_chars, True),
        ("max_chars", "completion", cfg.max_chars, False),
        ("min_tokens", "completion_tokens", cfg.min_tokens, True),
        ("max_tokens", "completion_tokens", cfg.max_tokens, False),
    ):
        if limit is not None:
            filters.append(_bound(name, column, limit, low))
    must = _compile(cfg.must_match, "curate.filters.must_match")
    if must:
        def check_must(row: Row) -> str | None:
            for rx in must:
                if not rx.search(row["completion"] or ""):
                    return f"no match for {rx.pattern!r}"
            return None
        filters.append(RowFilter("must_match", check_must))
    must_not = _compile(cfg.must_not_match, "curate.filters.must_not_match")
    if must_not:
        filters.append(RowFilter("must_not_match", _first_match(must_not)))
    if cfg.drop_refusals:
        patterns = DEFAULT_REFUSAL_PATTERNS if cfg.refusal_patterns is None else cfg.refusal_patterns
        filters.append(RowFilter("refusal", _first_match(_compile(patterns, "curate.filters.refusal_patterns"))))
    if cfg.require_valid_answer and task.type != "free_text":
        filters.append(RowFilter("invalid_answer", _answer_check(task)))
    return filters


def _first_match(patterns: list[re.Pattern]) -> RowCheck:
    def check(row: Row) -> str | None:
        for rx in patterns:
            m = rx.search(row["completion"] or "")
            if m:
                return f"matched {rx.pattern!r}: {m.group(0)!r}"
        return None
    return check


def _answer_check(task: TaskConfig) -> RowCheck:
    if task.type == "classification":
        labels = list(task.labels or [])

        def check_label(row: Row) -> str | None:
            if normalize_label(row["completion"], labels) is None:
                return f"no label of {labels} in {(row['completion'] or '')[:80]!r}"
            return None
        return check_label

    def check_json(row: Row) -> str | None:
        return validate_json(row["completion"] or "", task.json_schema)
    return check_json


def apply_row_filters(
    rows: list[Row], filters: list[RowFilter]
) -> tuple[list[Row], list[Rejected], dict[str, int]]:
    """Keep rows passing every filter; each dropped row is charged to the first that failed."""
    counts = {f.name: 0 for f in filters}
    kept: list[Row] = []
    rejected: list[Rejected] = []
    for row in rows:
        for f in filters:
            detail = f.check(row)
            if detail is not None:
                counts[f.name] += 1
                rejected.append(Rejected(row["row_id"], row["example_id"], f.name, detail))
                break
        else:
            kept.append(row)
    return kept, rejected, counts


# --- agreement across the n samples of one example -----------------------------------------


@dataclass
class Example:
    """One training example after the vote: the answer the student learns, and its lineage."""

    example_id: str
    text: str
    label: str | None
    target: str
    row_ids: list[str]
    agreement: float | None
    completions: list[str] = field(default_factory=list)  # the supporting raw completions

    def as_row(self) -> dict[str, Any]:
        return {"example_id": self.example_id, "text": self.text, "label": self.label,
                "target": self.target, "row_ids": self.row_ids, "agreement": self.agreement}


def answer_key(task: TaskConfig, completion: str) -> str | None:
    """What two samples must share to count as the same answer."""
    if task.type == "classification":
        return normalize_label(completion, task.labels or [])
    if task.type == "json":
        return canonical_json(completion)
    return completion.strip()


def _word_set(text: str) -> set[str]:
    return set(text.casefold().split())


def _medoid(completions: list[str]) -> tuple[int, float | None]:
    """The sample most similar (word Jaccard) to the others, and its mean similarity."""
    if len(completions) == 1:
        return 0, None
    sets = [_word_set(c) for c in completions]
    best, best_score = 0, -1.0
    for i, a in enumerate(sets):
        sims = [len(a & b) / len(a | b) if a | b else 1.0 for j, b in enumerate(sets) if j != i]
        score = sum(sims) / len(sims)
        if score > best_score:
            best, best_score = i, score
    return best, best_score


def vote(
    samples: list[Row], n_total: int, task: TaskConfig, min_agreement: float | None
) -> tuple[Example | None, list[Rejected]]:
    """Combine the surviving samples of one example into its training target.

    Classification/json: the majority answer becomes the target; the ratio is over all
    `n_total` samples generated for the example, so samples dropped by filters count against
    agreement. Minority samples are rejected as "minority". A tie for first is rejected as
    "agreement". Free text: the medoid completion is the target; agreement is its mean word
    Jaccard to the other samples; the other samples are rejected as "not_representative".
    """
    first = samples[0]
    base = {"example_id": first["example_id"], "text": first["text"], "label": first["label"]}
    if task.type == "free_text":
        idx, agreement = _medoid([s["completion"] for s in samples])
        if min_agreement is not None and agreement is not None and agreement < min_agreement:
            return None, _reject_all(samples, "agreement",
                                     f"mean similarity {agreement:.2f} < {min_agreement}")
        rep = samples[idx]
        others = [Rejected(s["row_id"], s["example_id"], "not_representative",
                           f"representative is {rep['row_id']}") for s in samples if s is not rep]
        return Example(**base, target=rep["completion"].strip(), row_ids=[rep["row_id"]],
                       agreement=agreement, completions=[rep["completion"]]), others

    keys = [answer_key(task, s["completion"]) for s in samples]
    result = majority_vote(keys, total=max(n_total, len(samples)))
    if result.winner is None:
        tied = " vs ".join(result.tied) or "no valid answer"
        return None, _reject_all(samples, "agreement", f"tie: {tied}")
    if min_agreement is not None and result.ratio < min_agreement:
        return None, _reject_all(
            samples, "agreement",
            f"{result.winner!r} has {result.count}/{result.total} = {result.ratio:.2f} "
            f"< {min_agreement}",
        )
    rejected = [
        Rejected(s["row_id"], s["example_id"], "minority", f"voted {k!r}, majority {result.winner!r}")
        for s, k in zip(samples, keys) if k != result.winner
    ]
    support = [s for s, k in zip(samples, keys) if k == result.winner]
    return Example(**base, target=result.winner, row_ids=[s["row_id"] for s in support],
                   agreement=round(result.ratio, 4),
                   completions=[s["completion"] for s in support]), rejected


def _reject_all(samples: list[Row], name: str, detail: str) -> list[Rejected]:
    return [Rejected(s["row_id"], s["example_id"], name, detail) for s in samples]


def vote_all(
    rows: list[Row], n_by_example: Counter, task: TaskConfig, min_agreement: float | None
) -> tuple[list[Example], list[Rejected]]:
    """`vote` for every example, in the order examples first appear in `rows`."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["example_id"], []).append(row)
    examples: list[Example] = []
    rejected: list[Rejected] = []
    for example_id, samples in groups.items():
        ex, rej = vote(samples, n_by_example[example_id], task, min_agreement)
        rejected.extend(rej)
        if ex is not None:
            examples.append(ex)
    return examples, rejected
