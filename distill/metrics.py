"""Task metrics with bootstrap confidence intervals. Pure functions over predictions."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def accuracy(pred: Sequence, gold: Sequence) -> float:
    return float(np.mean([p == g for p, g in zip(pred, gold)])) if gold else 0.0


def macro_f1(pred: Sequence, gold: Sequence, labels: Sequence[str]) -> float:
    """Mean F1 over the task's labels; an unparseable prediction counts against every label."""
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(pred, gold))
        fp = sum(p == label and g != label for p, g in zip(pred, gold))
        fn = sum(p != label and g == label for p, g in zip(pred, gold))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def exact_match(pred: Sequence[str], gold: Sequence[str]) -> float:
    return accuracy([" ".join(p.split()).lower() for p in pred],
                    [" ".join(g.split()).lower() for g in gold])


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1 on lower-cased whitespace tokens."""
    p, g = pred.lower().split(), gold.lower().split()
    if not p or not g:
        return float(p == g)
    lcs = _lcs(p, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(pred: Sequence[str], gold: Sequence[str]) -> float:
    return float(np.mean([rouge_l(p, g) for p, g in zip(pred, gold)])) if gold else 0.0


def json_valid(pred: Sequence[str], gold: Sequence | None = None) -> float:
    ok = 0
    for p in pred:
        try:
            json.loads(p)
            ok += 1
        except (json.JSONDecodeError, TypeError):
            pass
    return ok / len(pred) if pred else 0.0


def bootstrap(metric: Callable[[list, list], float], pred: Sequence, gold: Sequence,
              resamples: int = 1000, seed: int = 0) -> Estimate:
    """Point estimate plus a 95% percentile-bootstrap interval over examples."""
    pred, gold = list(pred), list(gold)
    value = metric(pred, gold)
    if len(gold) < 2:
        return Estimate(value, value, value)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gold), size=(resamples, len(gold)))
    stats = [metric([pred[i] for i in row], [gold[i] for i in row]) for row in idx]
    low, high = np.percentile(stats, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# --- JSON extraction: schema validity and field-level correctness -----------------------------
#
# A JSON answer is compared with the gold one as a multiset of (key, value) pairs:
# - nested objects are flattened to dotted keys: {"a": {"b": 1}} is the pair ("a.b", 1);
# - a list is one pair per item, under the list's key, so lists compare as multisets (order
#   ignored, duplicates counted); an item that is itself an object or a list is one value;
# - an empty object or list is one pair (key, {} / []), so "tags": [] is a field to get right;
# - strings are whitespace-collapsed and casefolded; a string that reads as a number
#   ("2,000", " 2000.0 ") is that number, and numbers compare by value (2000 == 2000.0);
#   booleans and null stay themselves (true is not 1);
# - the answer of an invalid JSON text has no pairs: every gold pair is missed.

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _number(x: float) -> tuple[str, float]:
    return ("num", float(f"{float(x):.12g}"))  # 0.1 + 0.2 == 0.3 at 12 significant digits


def normalize_json_value(value: Any) -> Hashable:
    """A hashable canonical form of a JSON value, by the rules above."""
    if isinstance(value, bool) or value is None:
        return ("lit", value)
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        text = " ".join(value.split()).casefold()
        bare = text.replace(",", "") if _THOUSANDS.fullmatch(text) else text
        return _number(float(bare)) if _NUMBER.fullmatch(bare) else ("str", text)
    if isinstance(value, dict):
        return ("obj", tuple(sorted((k, normalize_json_value(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(sorted(Counter(normalize_json_value(v) for v in value).items(),
                                     key=repr)))
    return ("str", str(value))


def json_pairs(value: Any, key: str = "") -> Counter:
    """The (dotted key, normalised value) pairs of a parsed JSON value, as a multiset."""
    pairs: Counter = Counter()
    if isinstance(value, dict) and value:
        for k, v in value.items():
            pairs += json_pairs(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list) and value:
        for item in value:
            pairs[(key, normalize_json_value(item))] += 1
    else:
        pairs[(key, normalize_json_value(value))] += 1
    return pairs


def parse_json(text: str | None) -> tuple[bool, Any]:
    """(is it JSON, the value)."""
    try:
        return True, json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False, None


@dataclass(frozen=True)
class FieldCounts:
    """One row's field-level tally: pairs right, pairs predicted, gold pairs, and per gold
    field (dotted key) whether the prediction has exactly the gold's values for it."""

    right: int
    predicted: int
    gold: int
    fields: tuple[tuple[str, bool], ...] = ()


def field_counts(pred_text: str | None, gold_text: str | None) -> FieldCounts:
    ok, pred_value = parse_json(pred_text)
    pred = json_pairs(pred_value) if ok else Counter()
    gold_ok, gold_value = parse_json(gold_text)
    gold = json_pairs(gold_value) if gold_ok else Counter()
    by_key: dict[str, Counter] = {}
    for (k, v), n in pred.items():
        by_key.setdefault(k, Counter())[v] += n
    gold_by_key: dict[str, Counter] = {}
    for (k, v), n in gold.items():
        gold_by_key.setdefault(k, Counter())[v] += n
    fields = tuple((k, by_key.get(k, Counter()) == values)
                   for k, values in sorted(gold_by_key.items()))
    return FieldCounts(sum((pred & gold).values()), sum(pred.values()), sum(gold.values()),
                       fields)


def field_f1_of(counts: Sequence[FieldCounts]) -> float:
    """Micro F1 over rows: precision = right / predicted pairs, recall = right / gold pairs."""
    right = sum(c.right for c in counts)
    predicted = sum(c.predicted for c in counts)
    gold = sum(c.gold for c in counts)
    return 2 * right / (predicted + gold) if predicted + gold else 0.0


def field_precision_of(counts: Sequence[FieldCounts]) -> float:
    predicted = sum(c.predicted for c in counts)
    return sum(c.right for c in counts) / predicted if predicted else 0.0


def field_recall_of(counts: Sequence[FieldCounts]) -> float:
    gold = sum(c.gold for c in counts)
    return sum(c.right for c in counts) / gold if gold else 0.0


def field_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Field-level micro F1 of JSON answers against gold JSON (see the rules above)."""
    return field_f1_of([field_counts(p, g) for p, g in zip(pred, gold)])


def field_exact_match(counts: Sequence[FieldCounts]) -> dict[str, dict[str, float]]:
    """Per gold field (dotted key): the share of rows having it where the answer has exactly
    its values, and how many rows have it."""
    hits: dict[str, list[bool]] = {}
    for c in counts:
        for key, ok in c.fields:
            hits.setdefault(key, []).append(ok)
    return {k: {"value": sum(v) / len(v), "n": len(v)} for k, v in sorted(hits.items())}


def json_equal(pred_text: str | None, gold_text: str | None) -> bool:
    """The whole answer equals the gold under the normalisation above (invalid: never)."""
    ok, pred = parse_json(pred_text)
    gold_ok, gold = parse_json(gold_text)
    return ok and gold_ok and normalize_json_value(pred) == normalize_json_value(gold)


def schema_valid(text: str | None, schema: dict | None) -> bool:
    """JSON that validates against `schema` (JSON Schema, via the jsonschema package)."""
    ok, value = parse_json(text)
    if not ok:
        return False
    if schema is None:
        return True
    from jsonschema.validators import validator_for

    return validator_for(schema)(schema).is_valid(value)  # the draft the schema names


def mean(values: Sequence[float], _gold: Sequence | None = None) -> float:
    """Mean of per-row scores (0.0 for none); the signature fits `bootstrap`."""
    return float(np.mean(values)) if len(values) else 0.0


# The main metric of each task type, and which way each metric is better (all: higher).
MAIN_METRIC = {"classification": "accuracy", "free_text": "rouge_l", "json": "field_f1"}
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "field_f1": True, "rouge_l": True,
                    "exact_match": True, "json_valid": True, "schema_valid": True,
                    "judge_score": True}
