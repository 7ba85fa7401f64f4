"""Exact and near-duplicate removal in one process: MinHash signatures, LSH bands, exact Jaccard.

Near-dedup, in four steps (text-dedup / NeMo Curator style, see the design notes section 6):
1. signatures: documents are shingled and MinHashed a batch at a time (vectorised numpy,
   bit-identical to datasketch's affine32 MinHash); each yields one hash per LSH band;
2. candidates: documents sharing a band hash are candidate pairs. The bands are chosen for a
   *lower* `candidate_threshold` than the decision threshold, because LSH at the threshold
   itself misses most pairs just above it (notes section 8);
3. verification: each candidate's exact Jaccard on its shingle sets must reach `threshold`
   (`verify: estimate` uses the MinHash estimate instead);
4. clusters: connected components of the verified pairs; one document per cluster is kept.

Which document is kept: a document already in the persistent index (an earlier run) always
wins, so new data never displaces data that was trained on before; otherwise `keep: first`
keeps the earliest in input order, `longest`/`shortest` the one with most/fewest characters
(ties: earliest). Clusters are transitive: A~B and B~C puts A, B, C in one cluster.
The same steps on Ray Data, for inputs of any size, are in `dedup_ray`; both keep the same.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from distill.curation.dedup_index import DiskIndex, IndexedDocs
from distill.curation.minhash import (
    MinHashParams, band_hashes, exact_key, lsh_params, minhash_batch, shingle_batch,
)

KeepRule = Literal["first", "longest", "shortest"]
MAX_BUCKET_ALL_PAIRS = 64  # larger buckets link every member to the first one only (star)


# --- signatures ------------------------------------------------------------------------------


@dataclass
class Signatures:
    bands: np.ndarray  # (n, bands) uint64
    sig: np.ndarray  # (n, num_perm) uint32
    shingle_values: np.ndarray
    shingle_offsets: np.ndarray


def signatures_local(texts: Sequence[str], params: MinHashParams) -> Signatures:
    values, offsets = shingle_batch(texts, params.shingle, params.ngram)
    sig = minhash_batch(values, offsets, params.num_perm, params.seed)
    return Signatures(band_hashes(sig, params.bands, params.rows), sig, values, offsets)


# --- candidates, verification, clusters ------------------------------------------------------


def candidate_pairs(bands: np.ndarray, is_new: np.ndarray | None = None) -> np.ndarray:
    """(k, 2) int64 pairs i < j sharing at least one band hash, at least one of them new."""
    n = bands.shape[0]
    if is_new is None:
        is_new = np.ones(n, dtype=bool)
    codes: list[np.ndarray] = []
    for j in range(bands.shape[1]):
        order = np.argsort(bands[:, j], kind="stable")
        col = bands[order, j]
        cut = np.flatnonzero(col[1:] != col[:-1]) + 1
        starts = np.concatenate([[0], cut])
        sizes = np.concatenate([cut, [n]]) - starts
        # Buckets of two are nearly all of them: vectorised; larger ones in the loop below.
        s2 = starts[sizes == 2]
        a, b = np.minimum(order[s2], order[s2 + 1]), np.maximum(order[s2], order[s2 + 1])
        keep = is_new[a] | is_new[b]
        codes.append(a[keep] * n + b[keep])
        for s, e in zip(starts[sizes > 2], (starts + sizes)[sizes > 2]):
            members = np.sort(order[s:e])
            if not is_new[members].any():
                continue
            if len(members) <= MAX_BUCKET_ALL_PAIRS:
                ii, jj = np.triu_indices(len(members), k=1)
                a, b = members[ii], members[jj]
            else:
                a, b = np.full(len(members) - 1, members[0]), members[1:]
            keep = is_new[a] | is_new[b]
            codes.append(a[keep] * n + b[keep])
    if not codes:
        return np.zeros((0, 2), dtype=np.int64)
    uniq = np.unique(np.concatenate(codes))
    return np.stack([uniq // n, uniq % n], axis=1)


def exact_jaccard(values: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Jaccard of the shingle sets of each pair (sets are sorted unique arrays)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for k, (i, j) in enumerate(pairs):
        a = values[offsets[i]:offsets[i + 1]]
        b = values[offsets[j]:offsets[j + 1]]
        if len(a) == 0 or len(b) == 0:
            out[k] = 0.0
            continue
        inter = np.intersect1d(a, b, assume_unique=True).size
        out[k] = inter / (len(a) + len(b) - inter)
    return out


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros(0)
    return (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label per node (scipy connected components over the verified pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _pick(members: list[int], chars: np.ndarray, keep: KeepRule) -> int:
    if keep == "longest":
        return min(members, key=lambda i: (-chars[i], i))
    if keep == "shortest":
        return min(members, key=lambda i: (chars[i], i))
    return min(members)


# --- exact dedup -----------------------------------------------------------------------------


@dataclass
class Dropped:
    index: int  # position in the input
    kept_key: str  # key of the document it duplicates
    detail: str


def exact_dedup(texts: Sequence[str], doc_keys: Sequence[str], chars: np.ndarray, keep: KeepRule,
                indexed: dict[str, str] | None = None) -> tuple[list[str], list[Dropped]]:
    """Drop documents whose normalised text equals an earlier (or indexed) one.

    `indexed` maps exact keys of previously indexed documents to their keys. Returns the exact
    key of every input and the dropped documents.
    """
    keys = [exact_key(t) for t in texts]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    dropped: list[Dropped] = []
    for k, members in groups.items():
        if indexed and k in indexed:
            dropped += [Dropped(i, indexed[k], "same text as indexed earlier run") for i in members]
            continue
        if len(members) > 1:
            rep = _pick(members, chars, keep)
            dropped += [Dropped(i, doc_keys[rep], "same normalised text")
                        for i in members if i != rep]
    return keys, dropped


# --- near dedup ------------------------------------------------------------------------------


@dataclass
class NearDedupResult:
    dropped: list[Dropped]
    clusters: int  # clusters with two or more documents (new or indexed)
    candidate_pairs: int
    verified_pairs: int
    against_index: int
    pairs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2), np.int64))
    jaccard: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def near_dedup(
    new: IndexedDocs, sig: np.ndarray | None, threshold: float, keep: KeepRule,
    old: IndexedDocs | None = None, verify: Literal["exact", "estimate"] = "exact",
) -> NearDedupResult:
    """Near-duplicate clusters among `new` and against `old` (the persistent index).

    Indices in the result refer to positions in `new`. `sig` (signatures of `new`) is needed
    only for `verify="estimate"`, which then cannot compare against the index (it stores no
    signatures) and falls back to exact Jaccard for those pairs.
    """
    old = old if old is not None else IndexedDocs.empty(new.bands.shape[1])
    n_old = len(old)
    docs = IndexedDocs.concat(old, new)
    is_new = np.zeros(len(docs), dtype=bool)
    is_new[n_old:] = True
    pairs = candidate_pairs(docs.bands, is_new)
    if verify == "estimate" and sig is not None:
        both_new = (pairs[:, 0] >= n_old) & (pairs[:, 1] >= n_old)
        jac = np.empty(len(pairs))
        jac[both_new] = estimated_jaccard(sig, pairs[both_new] - n_old)
        jac[~both_new] = exact_jaccard(docs.shingle_values, docs.shingle_offsets, pairs[~both_new])
    else:
        jac = exact_jaccard(docs.shingle_values, docs.shingle_offsets, pairs)
    ok = jac >= threshold
    edges, edge_j = pairs[ok], jac[ok]
    labels = components(len(docs), edges)
    best: dict[int, tuple[float, int]] = {}
    for (a, b), j in zip(edges.tolist(), edge_j.tolist()):
        for x, y in ((a, b), (b, a)):
            if j > best.get(x, (-1.0, -1))[0]:
                best[x] = (j, y)
    members: dict[int, list[int]] = defaultdict(list)
    for node in np.unique(edges):
        members[labels[node]].append(int(node))
    dropped: list[Dropped] = []
    against_index = 0
    for group in members.values():
        olds = [m for m in group if m < n_old]
        rep = min(olds) if olds else _pick(group, docs.chars, keep)
        for m in group:
            if m < n_old or m == rep:
                continue
            j, nb = best[m]
            where = "indexed earlier run" if olds else "this run"
            detail = f"cluster of {len(group)} ({where}); J={j:.3f} with {docs.keys[nb]}"
            dropped.append(Dropped(m - n_old, docs.keys[rep], detail))
            against_index += bool(olds)
    return NearDedupResult(dropped, len(members), len(pairs), len(edges), against_index,
                           pairs, jac)


def resolve_params(cfg) -> tuple[MinHashParams, float]:
    """MinHash params and candidate threshold from a DedupConfig."""
    cand = cfg.candidate_threshold
    if cand is None:
        cand = max(0.05, cfg.threshold - 0.2)
    if cfg.bands is not None:
        bands, rows = cfg.bands, cfg.rows
    else:
        bands, rows = lsh_params(cand, cfg.num_perm)
    return MinHashParams(cfg.num_perm, cfg.seed, cfg.shingle, cfg.ngram, bands, rows), cand


def open_index(cfg, default_dir) -> DiskIndex:
    params, _ = resolve_params(cfg)
    index = DiskIndex(cfg.index_dir or default_dir, params, list(cfg.fields))
    index.check_meta()
    return index
