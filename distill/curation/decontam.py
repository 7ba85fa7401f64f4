"""Decontamination: no training row may overlap the held-out test set.

`ngram`: a training text is contaminated if it shares any word n-gram with a test text (texts
shorter than n words are compared whole, after normalisation). `minhash`: if its shingle-set
Jaccard with some test text reaches `decontam.threshold` (MinHash LSH candidates, confirmed
exactly). Prompts and completions are both checked by default (`decontam.fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from distill.core.config import DecontamConfig
from distill.curation.minhash import MinHashParams, lsh_params, normalize


@dataclass
class Hit:
    index: int  # position among the training texts
    detail: str


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_hits(train: Sequence[str], test: Sequence[str], n: int) -> list[Hit]:
    """Training texts sharing a word n-gram with any test text."""
    owner: dict[tuple[str, ...], int] = {}
    for t_idx, text in enumerate(test):
        for g in _ngrams(text, n):
            owner.setdefault(g, t_idx)
    hits = []
    for i, text in enumerate(train):
        for g in _ngrams(text, n):
            if g in owner:
                hits.append(Hit(i, f"shares {' '.join(g)[:80]!r} with test row {owner[g]}"))
                break
    return hits


def minhash_hits(train: Sequence[str], test: Sequence[str], threshold: float,
                 params: MinHashParams | None = None) -> list[Hit]:
    """Training texts whose shingle Jaccard with a test text is >= threshold."""
    from distill.curation.dedup import candidate_pairs, exact_jaccard, signatures_local

    if not train or not test:
        return []
    if params is None:
        bands, rows = lsh_params(max(0.05, threshold - 0.2), 128)
        params = MinHashParams(bands=bands, rows=rows)
    s = signatures_local(list(test) + list(train), params)
    n_test = len(test)
    is_new = np.zeros(len(s.bands), dtype=bool)
    is_new[n_test:] = True
    pairs = candidate_pairs(s.bands, is_new)
    pairs = pairs[(pairs[:, 0] < n_test) & (pairs[:, 1] >= n_test)]  # test x train only
    jac = exact_jaccard(s.shingle_values, s.shingle_offsets, pairs)
    best: dict[int, tuple[float, int]] = {}
    for (t_idx, j_idx), j in zip(pairs.tolist(), jac.tolist()):
        if j >= threshold and j > best.get(j_idx - n_test, (0.0, 0))[0]:
            best[j_idx - n_test] = (j, t_idx)
    return [Hit(i, f"J={j:.3f} with test row {t}") for i, (j, t) in sorted(best.items())]


def contaminated(train_fields: Sequence[Sequence[str]], test: Sequence[str],
                 cfg: DecontamConfig) -> dict[int, str]:
    """Index -> detail for every training example overlapping the test set on any field."""
    out: dict[int, str] = {}
    for name, texts in zip(cfg.fields, train_fields):
        if cfg.method == "ngram":
            hits = ngram_hits(texts, test, cfg.ngram)
        else:
            hits = minhash_hits(texts, test, cfg.threshold)
        for h in hits:
            out.setdefault(h.index, f"{name}: {h.detail}")
    return out
