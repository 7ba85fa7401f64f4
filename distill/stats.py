"""Paired tests on the same items: is system A better than system B, and by how much?

Both systems answer the same prompts, so the comparison is paired: per-item correctness goes
through an exact McNemar test (a binomial test on the discordant items), continuous per-item
scores (ROUGE-L, judge scores) through a paired bootstrap of the mean difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedTest:
    """A minus B on the same items: the mean difference, its 95% CI and a one-sided p-value
    for "A is better than B"."""

    method: str
    n: int
    a_mean: float
    b_mean: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    a_only: int | None = None  # McNemar: items only A got right
    b_only: int | None = None  # ... only B got right

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def is_binary(scores: Sequence[float]) -> bool:
    return all(s in (0, 1) for s in scores)


def mcnemar(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Exact one-sided McNemar test for per-item correctness (0/1) of A vs B."""
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a_only = int(np.sum(a_arr & ~b_arr))
    b_only = int(np.sum(~a_arr & b_arr))
    discordant = a_only + b_only
    p = stats.binomtest(a_only, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    n = len(a_arr)
    diff = (a_only - b_only) / n if n else 0.0
    # CI of a difference of paired proportions (Wald with the discordant counts).
    se = np.sqrt(max(discordant / n - diff ** 2, 0.0) / n) if n else 0.0
    return PairedTest("exact McNemar", n, float(a_arr.mean()) if n else 0.0,
                      float(b_arr.mean()) if n else 0.0, float(diff), float(diff - 1.96 * se),
                      float(diff + 1.96 * se), float(p), a_only, b_only)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000,
                     seed: int = 0) -> PairedTest:
    """Paired bootstrap of mean(A - B): percentile 95% CI, and the share of resampled
    differences <= 0 as the one-sided p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return PairedTest("paired bootstrap", 0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    p = float((np.sum(means <= 0) + 1) / (resamples + 1))
    return PairedTest("paired bootstrap", n, float(np.mean(a)), float(np.mean(b)),
                      float(d.mean()), float(np.percentile(means, 2.5)),
                      float(np.percentile(means, 97.5)), p)


def compare(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedTest:
    """McNemar for 0/1 scores, a paired bootstrap otherwise."""
    if is_binary(a) and is_binary(b):
        return mcnemar(a, b)
    return paired_bootstrap(a, b, seed=seed)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion (well-behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return 0.0, 0.0
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def mean_ci(scores: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% CI of a mean score: Wilson for 0/1 scores, percentile bootstrap otherwise."""
    arr = np.asarray(scores, dtype=float)
    if len(arr) == 0:
        return 0.0, 0.0
    if is_binary(arr):
        return wilson(int(arr.sum()), len(arr))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def tango(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """One-sided p-value of "A - B > -margin" for paired 0/1 scores: Tango's score test.

    The exact McNemar test only asks whether the difference is 0; a non-inferiority margin
    needs the variance under "A - B = -margin", from the restricted maximum-likelihood estimate
    of the share of items only B gets right (Tango 1998, Statistics in Medicine 17:891).
    """
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a_arr)
    if n == 0:
        return 1.0
    a_only = int(np.sum(a_arr & ~b_arr))
    b_only = int(np.sum(~a_arr & b_arr))
    d = margin
    # Under H0 the A-only share is q - d, the B-only share q; the likelihood's root in q:
    # 2n q^2 - [(a_only + b_only)(1 + d) + 2 d (n - a_only)] q + b_only d (1 + d) = 0
    lin = (a_only + b_only) * (1 + d) + 2 * d * (n - a_only)
    q = (lin + np.sqrt(max(lin ** 2 - 8 * n * b_only * d * (1 + d), 0.0))) / (4 * n)
    var = n * (2 * q - d * (1 + d))
    z_num = a_only - b_only + n * d
    if var <= 0:  # margin 0 and no discordant items: no evidence either way
        return 1.0 if z_num <= 0 else 0.0
    return float(stats.norm.sf(z_num / np.sqrt(var)))


def bootstrap_noninferiority(a: Sequence[float], b: Sequence[float], margin: float,
                             resamples: int = 2000, seed: int = 0) -> float:
    """One-sided p-value of "mean(A - B) > -margin" for paired continuous scores: the share of
    resampled mean differences at or below -margin (as `paired_bootstrap` does at 0)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float((np.sum(means <= -margin) + 1) / (resamples + 1))


def noninferiority(a: Sequence[float], b: Sequence[float], margin: float, seed: int = 0) -> float:
    """p-value of "A is at most `margin` worse than B": Tango for 0/1 scores, bootstrap else."""
    if is_binary(a) and is_binary(b):
        return tango(a, b, margin)
    return bootstrap_noninferiority(a, b, margin, seed=seed)
