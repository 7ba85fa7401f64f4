"""MinHash signatures vs datasketch, dedup vs the datasketch oracle, exact Jaccard."""

from __future__ import annotations

import numpy as np
import pytest

from distill.curation import dedup as dd
from distill.curation.dedup_index import IndexedDocs
from distill.curation.minhash import (
    MinHashParams, candidate_probability, datasketch_minhash, lsh_params, shingle_batch,
)


def planted_corpus(n_base: int = 120, seed: int = 0):
    """Random documents plus edited copies: returns texts and the planted (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(vocab, rng.integers(30, 60))) for _ in range(n_base)]
    planted = []
    for src in range(0, n_base, 3):
        words = texts[src].split()
        for _ in range(int(rng.integers(0, 4))):
            words[int(rng.integers(len(words)))] = str(rng.choice(vocab))
        planted.append((src, len(texts)))
        texts.append(" ".join(words).upper() if src % 2 else " ".join(words))
    return texts, planted


def string_jaccard(a: str, b: str, n: int = 3) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def docs_of(texts, sigs):
    return IndexedDocs([str(i) for i in range(len(texts))], [""] * len(texts), sigs.bands,
                       sigs.shingle_values, sigs.shingle_offsets,
                       np.array([len(t) for t in texts]))


@pytest.mark.parametrize("shingle,ngram", [("word", 3), ("word", 1), ("char", 5)])
def test_signatures_equal_datasketch_on_the_same_shingles(shingle, ngram):
    texts, _ = planted_corpus(20)
    texts += ["", "one", "Hello, WORLD!"]
    params = MinHashParams(shingle=shingle, ngram=ngram)
    sigs = dd.signatures_local(texts, params)
    for i in range(len(texts)):
        sh = sigs.shingle_values[sigs.shingle_offsets[i]:sigs.shingle_offsets[i + 1]]
        if len(sh) == 0:
            assert (sigs.sig[i] == np.iinfo(np.uint32).max).all()
            continue
        assert np.array_equal(datasketch_minhash(sh, params).hashvalues, sigs.sig[i])


def test_shingle_sets_match_string_ngrams_and_normalisation():
    values, offsets = shingle_batch(["a b c d", "A, b. C d!", "a b"], "word", 3)
    sets = [set(values[offsets[i]:offsets[i + 1]].tolist()) for i in range(3)]
    assert len(sets[0]) == 2 and sets[0] == sets[1]  # case and punctuation do not matter
    assert len(sets[2]) == 1  # shorter than n: the whole text is one shingle


def test_lsh_maths_matches_the_notes():
    assert lsh_params(0.8, 128) == (9, 13)
    assert candidate_probability(0.8, 9, 13) == pytest.approx(0.40, abs=0.01)
    b, r = lsh_params(0.6, 128)
    assert candidate_probability(0.8, b, r) > 0.98  # why candidates are made below threshold


def test_dedup_equals_the_datasketch_oracle():
    from datasketch import LeanMinHash, MinHashLSH

    texts, planted = planted_corpus()
    b, r = lsh_params(0.6, 128)
    params = MinHashParams(bands=b, rows=r)
    sigs = local = dd.signatures_local(texts, params)

    # oracle: datasketch MinHashLSH with the same (b, r), fed datasketch MinHashes
    lsh = MinHashLSH(num_perm=128, params=(b, r))
    oracle_pairs = set()
    for i in range(len(texts)):
        sh = local.shingle_values[local.shingle_offsets[i]:local.shingle_offsets[i + 1]]
        m = LeanMinHash(datasketch_minhash(sh, params))
        oracle_pairs |= {(min(i, j), max(i, j)) for j in lsh.query(m)}
        lsh.insert(i, m)
    ours = {tuple(p) for p in dd.candidate_pairs(sigs.bands).tolist()}
    assert ours == oracle_pairs

    res = dd.near_dedup(docs_of(texts, sigs), sigs.sig, 0.8, "first")
    verified = {tuple(p) for p, j in zip(res.pairs.tolist(), res.jaccard) if j >= 0.8}
    for (i, j), jac in zip(res.pairs.tolist(), res.jaccard):
        assert jac == pytest.approx(string_jaccard(texts[i], texts[j]))  # exact Jaccard
    truth = {p for p in planted if string_jaccard(texts[p[0]], texts[p[1]]) >= 0.8}
    assert truth and truth <= verified
    dropped = {d.index for d in res.dropped}
    assert dropped == {j for i, j in verified}  # the later copy of each pair goes


def test_keep_rules_pick_first_longest_shortest():
    base = " ".join(f"w{i}" for i in range(40))
    texts = [base, base + " w41", base[:-4]]
    sigs = dd.signatures_local(texts, MinHashParams())
    for keep, kept in (("first", 0), ("longest", 1), ("shortest", 2)):
        res = dd.near_dedup(docs_of(texts, sigs), sigs.sig, 0.8, keep)
        assert {d.index for d in res.dropped} == {0, 1, 2} - {kept}
        assert res.clusters == 1


def test_exact_dedup_ignores_case_punctuation_and_spacing():
    texts = ["Hello,  world", "hello world!", "hello there"]
    keys, dropped = dd.exact_dedup(texts, ["a", "b", "c"], np.array([13, 12, 11]), "first")
    assert [(d.index, d.kept_key) for d in dropped] == [(1, "a")]
    _, dropped = dd.exact_dedup(texts, ["a", "b", "c"], np.array([13, 12, 11]), "first",
                                indexed={keys[2]: "old"})
    assert {(d.index, d.kept_key) for d in dropped} == {(1, "a"), (2, "old")}


def test_estimate_verification_uses_signature_agreement():
    texts, planted = planted_corpus(60)
    sigs = dd.signatures_local(texts, MinHashParams(bands=18, rows=7))
    res = dd.near_dedup(docs_of(texts, sigs), sigs.sig, 0.8, "first", verify="estimate")
    est = dd.estimated_jaccard(sigs.sig, res.pairs)
    assert np.allclose(res.jaccard, est)
