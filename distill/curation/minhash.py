"""Vectorised shingling and MinHash signatures, identical to datasketch's `affine32` scheme.

datasketch's `MinHash.update` hashes one shingle at a time (SHA1 in Python, then numpy on a
num_perm-sized array), which is the slow part of a plain dedup loop. Here a whole batch of
documents is shingled into one uint32 array and permuted as one (shingles x num_perm) matrix.
The permutations are taken from datasketch itself, so for the same shingle hashes our
signatures equal `MinHash(num_perm, seed, hashfunc=identity).update_batch(...)` bit for bit
(tests check this), and datasketch stays usable as the oracle.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import xxhash

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_ARROW_NON_WORD = r"[^\p{L}\p{N}]+"  # RE2 spelling of _NON_WORD
_U64 = np.uint64
_MULT = _U64(0x9E3779B97F4A7C15)  # combines token hashes into an n-gram hash (wrapping uint64)
HASH_VERSION = 1  # bump when normalisation or shingle hashing changes: old indexes then refuse to load


@dataclass(frozen=True)
class MinHashParams:
    num_perm: int = 128
    seed: int = 1
    shingle: Literal["word", "char"] = "word"
    ngram: int = 3
    bands: int = 18
    rows: int = 7

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} > num_perm = {self.num_perm}")

    def to_meta(self) -> dict:
        return {**asdict(self), "scheme": "affine32", "hash_version": HASH_VERSION}


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows) choice for a threshold (equal weights on FP and FN)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance that a pair with this Jaccard shares at least one band (notes section 8)."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, whitespace collapsed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters (a odd, b), as uint32 rows."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32).reshape(1, -1), b.astype(np.uint32).reshape(1, -1)


def fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _normalized(texts: Sequence[str]):
    """`normalize` over a batch, in Arrow's C++ kernels (a Python regex per text is slower)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.utf8_lower(pc.utf8_normalize(pa.array(texts, type=pa.large_string()).fill_null(""),
                                          "NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, _ARROW_NON_WORD, " "))


def _tokens(texts: Sequence[str], shingle: str) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes (uint64) of all texts concatenated, and per-text token counts."""
    import pyarrow.compute as pc

    normed = _normalized(texts)
    if shingle == "char":
        arrays = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in normed.to_pylist()]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        codes = np.concatenate(arrays).astype(np.uint64) if arrays else np.zeros(0, np.uint64)
        return fmix64(codes + _U64(1)), lengths
    empty = pc.equal(pc.utf8_length(normed), 0).to_numpy(zero_copy_only=False)
    words = pc.split_pattern(normed, " ")
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths[empty] = 0  # "" splits into [""]
    flat = pc.list_flatten(words)
    if empty.any():
        flat = flat.filter(pc.not_equal(flat, ""))
    # Hash each distinct word once per batch; words repeat a lot (Zipf), tokens do not.
    encoded = pc.dictionary_encode(flat).combine_chunks() if hasattr(flat, "combine_chunks") \
        else pc.dictionary_encode(flat)
    vocab = encoded.dictionary.to_pylist()
    table = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in vocab), dtype=np.uint64,
                        count=len(vocab))
    return table[encoded.indices.to_numpy(zero_copy_only=False)], lengths


def shingle_batch(
    texts: Sequence[str], shingle: str = "word", ngram: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct uint32 shingle hashes per text: (values, offsets), values sorted per text.

    A text shorter than `ngram` tokens is one shingle (all of it); an empty text has none.
    """
    tokens, lengths = _tokens(texts, shingle)
    n_docs = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    hashes, owners = [], []
    if len(tokens) >= ngram:
        span = len(tokens) - ngram + 1
        h = np.zeros(span, dtype=np.uint64)
        for k in range(ngram):
            h = h * _MULT + tokens[k : k + span]
        ok = doc_of[:span] == doc_of[ngram - 1 : ngram - 1 + span]
        hashes.append(fmix64(h[ok]))
        owners.append(doc_of[:span][ok])
    for d in np.flatnonzero((lengths > 0) & (lengths < ngram)):
        h = np.zeros(1, dtype=np.uint64)
        for k in range(lengths[d]):
            h = h * _MULT + tokens[starts[d] + k : starts[d] + k + 1]
        hashes.append(fmix64(h))
        owners.append(np.array([d], dtype=np.int64))
    if not hashes:
        return np.zeros(0, np.uint32), np.zeros(n_docs + 1, np.int64)
    h32 = (np.concatenate(hashes) & _U64(0xFFFFFFFF)).astype(np.uint64)
    key = np.sort((np.concatenate(owners).astype(np.uint64) << _U64(32)) | h32)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    values = (key & _U64(0xFFFFFFFF)).astype(np.uint32)
    counts = np.bincount((key >> _U64(32)).astype(np.int64), minlength=n_docs)
    return values, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def minhash_batch(
    values: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, chunk: int = 1 << 13
) -> np.ndarray:
    """(n_docs, num_perm) uint32 signatures; an empty document gets all-max (never matches)."""
    a, b = permutations(num_perm, seed)
    n_docs = len(offsets) - 1
    sig = np.full((n_docs, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    mixed = fmix32(values.astype(np.uint32))
    doc = 0
    while doc < n_docs:
        # Take whole documents until about `chunk` shingles, to bound the matrix size.
        end = int(np.searchsorted(offsets, offsets[doc] + chunk, side="right")) - 1
        end = min(max(end, doc + 1), n_docs)
        lo, hi = offsets[doc], offsets[end]
        if hi > lo:
            phv = mixed[lo:hi, None] * a + b
            local = offsets[doc:end] - lo
            nonempty = np.flatnonzero(offsets[doc + 1 : end + 1] > offsets[doc:end])
            sig[doc + nonempty] = np.minimum.reduceat(phv, local[nonempty], axis=0)
        doc = end
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64: one hash per band; equal iff the band's rows are equal (w.h.p.)."""
    out = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    for j in range(bands):
        h = np.zeros(sig.shape[0], dtype=np.uint64)
        for c in range(j * rows, (j + 1) * rows):
            h = h * _MULT + sig[:, c].astype(np.uint64)
        out[:, j] = fmix64(h)
    return out


def exact_key(text: str) -> str:
    """Hash of the normalised text: exact duplicates up to case, punctuation and spacing."""
    return xxhash.xxh3_128_hexdigest(normalize(text).encode())


def datasketch_minhash(shingles: np.ndarray, params: MinHashParams):
    """The datasketch MinHash of the same shingle hashes: the oracle our signatures must equal."""
    from datasketch import MinHash

    m = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=int)
    m.update_batch(shingles.tolist())
    return m
