"""How far live inputs are from the training prompts: pure functions over two lists of texts.

- lengths: the two-sample Kolmogorov-Smirnov statistic of input lengths in words (scipy);
- n-grams: the Jensen-Shannon distance (base 2, 0 = same, 1 = disjoint) between the word
  unigram+bigram frequencies, the share of live words never seen in training (OOV), and the
  n-grams whose share moved most;
- near-duplicates: the share of live inputs with a training prompt at MinHash Jaccard >=
  threshold, through the curation's own signatures and LSH (distill/curation/dedup.py).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def length_shift(train: Sequence[str], live: Sequence[str]) -> dict:
    from scipy.stats import ks_2samp

    a = np.array([len(words(t)) for t in train])
    b = np.array([len(words(t)) for t in live])
    test = ks_2samp(a, b)
    return {"ks": float(test.statistic), "p_value": float(test.pvalue),
            "train_median": float(np.median(a)), "live_median": float(np.median(b)),
            "train": a.tolist(), "live": b.tolist()}


def ngram_counts(texts: Sequence[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        w = words(text)
        counts.update(w)
        counts.update(" ".join(pair) for pair in zip(w, w[1:]))
    return counts


def ngram_shift(train: Sequence[str], live: Sequence[str], top: int = 12) -> dict:
    from scipy.spatial.distance import jensenshannon

    a, b = ngram_counts(train), ngram_counts(live)
    vocab = sorted(set(a) | set(b))
    p = np.array([a[g] for g in vocab], dtype=float)
    q = np.array([b[g] for g in vocab], dtype=float)
    p, q = p / max(p.sum(), 1), q / max(q.sum(), 1)
    train_words = {g for g in a if " " not in g}
    live_words = [g for t in live for g in words(t)]
    oov = sum(w not in train_words for w in live_words) / max(len(live_words), 1)
    moved = np.argsort(-(q - p))[:top]
    return {"js_distance": float(jensenshannon(p, q, base=2)), "oov_rate": float(oov),
            "rising": [{"ngram": vocab[i], "train_share": float(p[i]), "live_share": float(q[i])}
                       for i in moved if q[i] > p[i]]}


def near_duplicate_share(live: Sequence[str], indexed, params, threshold: float) -> float:
    """Share of `live` texts with a near-duplicate among `indexed` (IndexedDocs: the persistent
    dedup index, or the training prompts' own signatures)."""
    from distill.curation.dedup import candidate_pairs, exact_jaccard, signatures_local
    from distill.curation.dedup_index import IndexedDocs

    if not live:
        return 0.0
    s = signatures_local(list(live), params)
    n_old = len(indexed)
    mine = IndexedDocs([str(i) for i in range(len(live))], [""] * len(live), s.bands,
                       s.shingle_values, s.shingle_offsets, np.zeros(len(live), np.int64))
    docs = IndexedDocs.concat(indexed, mine)
    is_new = np.zeros(len(docs), dtype=bool)
    is_new[n_old:] = True
    pairs = candidate_pairs(docs.bands, is_new)
    pairs = pairs[(pairs[:, 0] < n_old) & (pairs[:, 1] >= n_old)]  # training x live only
    jac = exact_jaccard(docs.shingle_values, docs.shingle_offsets, pairs)
    hit = {int(j) for j, ok in zip(pairs[:, 1], jac >= threshold) if ok}
    return len(hit) / len(live)
