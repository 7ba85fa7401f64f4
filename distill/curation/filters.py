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
from distill.curation.json_repair import check_json_answer
from distill.curation.labels import canonical_json, majority_vote, normalize_label

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
    # JSON answers are repaired or rejected with their reason by `repair_json_rows`, next.
    if cfg.require_valid_answer and task.type == "classification":
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
    labels = list(task.labels or [])

    def check_label(row: Row) -> str | None:
        if normalize_label(row["completion"], labels) is None:
            return f"no label of {labels} in {(row['completion'] or '')[:80]!r}"
        return None
    return check_label


@dataclass
class JsonStats:
    repaired: Counter = field(default_factory=Counter)  # repair kind -> rows
    rejected: Counter = field(default_factory=Counter)  # json_invalid / json_schema -> rows
    rows_repaired: int = 0


def repair_json_rows(rows: list[Row], task: TaskConfig,
                     reject: bool = True) -> tuple[list[Row], list[Rejected], JsonStats]:
    """JSON tasks: each sample repaired where safe and stored canonical, or rejected with the
    reason (`json_invalid: ...`, `json_schema: <path>: <message>`). With `reject` False
    (`curate.filters.require_valid_answer: false`) unusable samples stay as they are."""
    stats = JsonStats()
    kept: list[Row] = []
    rejected: list[Rejected] = []
    for row in rows:
        answer = check_json_answer(row["completion"] or "", task.json_schema)
        if answer.canonical is None:
            if reject:
                stats.rejected[answer.reason.split(":")[0]] += 1
                rejected.append(Rejected(row["row_id"], row["example_id"],
                                         answer.reason.split(":")[0], answer.reason))
            else:
                kept.append(row)
            continue
        if answer.repaired:
            stats.rows_repaired += 1
            stats.repaired.update(answer.repairs)
        kept.append({**row, "completion": answer.canonical})
    return kept, rejected, stats


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
    """One training example after the target choice: the answer the student learns, its
    lineage, and how it was chosen (`target_by`: vote, medoid, judge or rule; `target_score`:
    that choice's measure: vote share, mean similarity, judge or rule score)."""

    example_id: str
    text: str
    label: str | None
    target: str
    row_ids: list[str]
    agreement: float | None
    completions: list[str] = field(default_factory=list)  # the supporting raw completions
    target_by: str = "vote"
    target_score: float | None = None

    def as_row(self) -> dict[str, Any]:
        return {"example_id": self.example_id, "text": self.text, "label": self.label,
                "target": self.target, "row_ids": self.row_ids, "agreement": self.agreement,
                "target_by": self.target_by, "target_score": self.target_score}


def answer_key(task: TaskConfig, completion: str) -> str | None:
    """What two samples must share to count as the same answer."""
    if task.type == "classification":
        return normalize_label(completion, task.labels or [])
    if task.type == "json":
        return canonical_json(completion)
    return completion.strip()


def target_mode(task: TaskConfig, target: str) -> str:
    """`curate.target` resolved: auto is the vote for labels and JSON, the medoid for text."""
    if target == "auto":
        return "medoid" if task.type == "free_text" else "vote"
    return target


def _word_set(text: str) -> set[str]:
    return set(text.casefold().split())


def _similarities(completions: list[str]) -> list[float | None]:
    """Each sample's mean word Jaccard to the others (None for a lone sample)."""
    if len(completions) == 1:
        return [None]
    sets = [_word_set(c) for c in completions]
    out: list[float | None] = []
    for i, a in enumerate(sets):
        sims = [len(a & b) / len(a | b) if a | b else 1.0 for j, b in enumerate(sets) if j != i]
        out.append(sum(sims) / len(sims))
    return out


def _medoid(completions: list[str]) -> tuple[int, float | None]:
    """The sample most similar (word Jaccard) to the others, and its mean similarity."""
    sims = _similarities(completions)
    best = max(range(len(sims)), key=lambda i: (sims[i] or 0.0, -i))
    return best, sims[best]


def vote(
    samples: list[Row], n_total: int, task: TaskConfig, min_agreement: float | None,
    mode: str = "auto", scores: dict[str, float] | None = None,
) -> tuple[Example | None, list[Rejected]]:
    """Combine the surviving samples of one example into its training target.

    vote: the majority answer becomes the target; the ratio is over all `n_total` samples
    generated for the example, so samples dropped by filters count against agreement. Minority
    samples are rejected as "minority"; a tie for first is rejected as "agreement".
    medoid: the sample most similar to the others (mean word Jaccard, its agreement); the
    others are rejected as "not_representative".
    judge / rule: the sample `scores` (by row_id) rates best, ties broken by the medoid order;
    the others are rejected as "not_chosen".
    The target is the chosen answer's canonical form: the label, canonical JSON, the stripped
    text.
    """
    mode = target_mode(task, mode)
    if mode == "vote":
        return _by_vote(samples, n_total, task, min_agreement)
    keys = [answer_key(task, s["completion"]) for s in samples]
    cands = [i for i, k in enumerate(keys) if k]
    if not cands:
        return None, _reject_all(samples, "agreement", "no valid answer")
    sims = _similarities([samples[i]["completion"] for i in cands])
    order = {i: (sims[n] or 0.0, -n) for n, i in enumerate(cands)}  # medoid order, then input
    if mode == "medoid":
        best = max(cands, key=lambda i: order[i])
        agreement = sims[cands.index(best)]
        score = agreement
        loser, why = "not_representative", lambda s: f"representative is {samples[best]['row_id']}"
    else:
        if scores is None:
            raise ValueError(f"curate.target: {mode} needs the samples' scores")
        best = max(cands, key=lambda i: (scores[samples[i]["row_id"]], order[i]))
        score = scores[samples[best]["row_id"]]
        agreement = (sims[cands.index(best)] if task.type == "free_text"
                     else round(keys.count(keys[best]) / max(n_total, len(samples)), 4))
        loser = "not_chosen"

        def why(s: Row) -> str:
            got = scores.get(s["row_id"])
            mine = f"{mode} scored {got:.2f}" if got is not None else "not a valid answer"
            return f"{mine}; target {samples[best]['row_id']} scored {score:.2f}"
    if min_agreement is not None and agreement is not None and agreement < min_agreement:
        measure = "mean similarity" if task.type == "free_text" else "share of the samples"
        return None, _reject_all(samples, "agreement",
                                 f"{measure} {agreement:.2f} < {min_agreement}")
    rep = samples[best]
    others = [Rejected(s["row_id"], s["example_id"], loser, why(s)) for s in samples
              if s is not rep]
    return Example(rep["example_id"], rep["text"], rep["label"], target=keys[best],
                   row_ids=[rep["row_id"]], agreement=agreement, completions=[rep["completion"]],
                   target_by=mode, target_score=score), others


def _by_vote(samples: list[Row], n_total: int, task: TaskConfig,
             min_agreement: float | None) -> tuple[Example | None, list[Rejected]]:
    first = samples[0]
    base = {"example_id": first["example_id"], "text": first["text"], "label": first["label"]}
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
                   completions=[s["completion"] for s in support], target_by="vote",
                   target_score=round(result.ratio, 4)), rejected


def _reject_all(samples: list[Row], name: str, detail: str) -> list[Rejected]:
    return [Rejected(s["row_id"], s["example_id"], name, detail) for s in samples]


def vote_all(
    rows: list[Row], n_by_example: Counter, task: TaskConfig, min_agreement: float | None,
    mode: str = "auto", scores: dict[str, float] | None = None,
) -> tuple[list[Example], list[Rejected]]:
    """`vote` for every example, in the order examples first appear in `rows`."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["example_id"], []).append(row)
    examples: list[Example] = []
    rejected: list[Rejected] = []
    for example_id, samples in groups.items():
        ex, rej = vote(samples, n_by_example[example_id], task, min_agreement, mode, scores)
        rejected.extend(rej)
        if ex is not None:
            examples.append(ex)
    return examples, rejected
