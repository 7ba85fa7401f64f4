"""Task metrics with bootstrap confidence intervals. Pure functions over predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

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
