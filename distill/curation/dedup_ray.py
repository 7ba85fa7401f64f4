"""Near-dedup end to end on Ray Data: the driver holds counts and small metadata, never documents.

The same decisions as `dedup.near_dedup` (same candidate pairs, exact Jaccard, clusters and keep
rule; a test compares the kept sets), as Ray Data operations over any number of documents:

1. docs: `map_batches` shingles, MinHashes and band-hashes each block of new documents; the
   persistent index's documents (read from its Parquet shards in parallel) join them by `union`;
2. candidates: one row per (band, band hash, document); a hash shuffle by that band key puts
   each bucket in one block, where pairs are enumerated vectorised (buckets over
   MAX_BUCKET_ALL_PAIRS documents link every member to the smallest id only, as locally);
3. verification: two shuffles by document id bring each pair's shingle sets together (a hash
   join written as union + repartition by key: Ray's own `join` needs polars, not installed);
   copies of a pair found in several bands meet in the first one and are dropped there;
4. clusters: the verified pairs grow with the duplicates, not the documents, so up to
   ONE_TASK_PAIRS candidates their connected components come from one Ray task (scipy);
   above, min-label propagation, one shuffle per round, until no label changes (rounds ~
   cluster diameter + 2). A label is the keep rule's priority (`_priority`), so a cluster's
   winner is its minimum label.

Document ids: the index's documents are 0..n_old-1 in index order, new ones n_old + position,
the positions the local path uses, so ties break the same way in both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from distill.curation.dedup import MAX_BUCKET_ALL_PAIRS, KeepRule, signatures_local
from distill.curation.minhash import MinHashParams, fmix64

_U64 = np.uint64
_NEW_BIT = 62  # priority: (is_new << 62) | (rank << 32) | id; an indexed document always wins
_RANK_MAX = (1 << 30) - 1
_ID_MASK = (1 << 32) - 1
_BAND_SALT = _U64(0x9E3779B97F4A7C15)  # puts the band number into the band key
# Up to this many candidate pairs (40 bytes each; a few times that at the task's peak), their
# clusters are found in one Ray task instead of label rounds: ~1 GB of worker memory at most.
ONE_TASK_PAIRS = 4_000_000
JOIN_SCHEMA_FIELDS = ("node", "other", "prio", "shingles")  # both sides of the id join


@dataclass
class RayDedupResult:
    nodes: object  # materialized Dataset: one row per document in a cluster (see _finish)
    candidates: object  # materialized Dataset: a, b, j for every candidate pair
    docs: object  # materialized Dataset: id, prio, bands, shingles of every document
    candidate_pairs: int
    verified_pairs: int
    clusters: int
    dropped: int
    against_index: int
    rounds: int


def _priority(ids: np.ndarray, chars: np.ndarray, keep: KeepRule, new: bool) -> np.ndarray:
    """The keep rule as one int64: smaller wins (indexed first, then the rule, then the id)."""
    if ids.size and int(ids.max()) > _ID_MASK:
        raise ValueError(f"document id {int(ids.max())} does not fit the 32-bit id space")
    rank = np.zeros(len(ids), dtype=np.int64)
    if new and keep != "first":
        c = np.minimum(chars.astype(np.int64), _RANK_MAX)
        rank = _RANK_MAX - c if keep == "longest" else c
    return (np.int64(int(new)) << _NEW_BIT) | (rank << 32) | ids.astype(np.int64)


def _doc_table(ids, prio, bands, shingles):
    import pyarrow as pa

    return pa.table({"id": pa.array(ids, pa.int64()), "prio": pa.array(prio, pa.int64()),
                     "bands": bands, "shingles": shingles})


def _new_docs(batch, params: MinHashParams, keep: KeepRule, n_old: int):
    """Text rows (idx, text) -> document rows (id, prio, bands, shingles)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = batch.column("text")
    s = signatures_local(text.to_pylist(), params)
    ids = batch.column("idx").to_numpy().astype(np.int64) + n_old
    chars = pc.utf8_length(text.fill_null("")).to_numpy(zero_copy_only=False)
    bands = pa.FixedSizeListArray.from_arrays(pa.array(s.bands.reshape(-1), pa.uint64()),
                                              params.bands)
    shingles = pa.ListArray.from_arrays(pa.array(s.shingle_offsets.astype(np.int32)),
                                        pa.array(s.shingle_values, pa.uint32()))
    return _doc_table(ids, _priority(ids, chars, keep, True), bands, shingles)


def _old_docs(batch, keep: KeepRule):
    """Index rows (id, bands, shingles, chars) -> document rows."""
    ids = batch.column("id").to_numpy()
    prio = _priority(ids, batch.column("chars").to_numpy(), keep, False)
    return _doc_table(ids, prio, batch.column("bands").combine_chunks(),
                      batch.column("shingles").combine_chunks())


def _band_rows(batch, n_bands: int):
    """One row per (document, band): key = the band hash salted with the band number."""
    ids = batch.column("id").to_numpy()
    bands = batch.column("bands").combine_chunks().flatten().to_numpy().reshape(-1, n_bands)
    keys = fmix64(bands ^ (np.arange(n_bands, dtype=_U64) * _BAND_SALT))
    new = (batch.column("prio").to_numpy() >> _NEW_BIT) == 1
    return {"key": keys.reshape(-1), "id": np.repeat(ids, n_bands), "new": np.repeat(new, n_bands)}


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and sizes of runs of equal values in a sorted array."""
    cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    return starts, np.concatenate([cut, [len(keys)]]) - starts


def _bucket_pairs(batch):
    """A block holding whole buckets -> candidate pairs (a < b), at least one of them new."""
    key, ids, new = batch["key"], batch["id"], batch["new"]
    if len(key) == 0:
        return {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)}
    order = np.lexsort((ids, key))
    key, ids, new = key[order], ids[order], new[order]
    starts, sizes = _groups(key)
    s2 = starts[sizes == 2]  # nearly every bucket: vectorised; larger ones in the loop
    keep = new[s2] | new[s2 + 1]
    a_parts, b_parts = [ids[s2][keep]], [ids[s2 + 1][keep]]
    for s, n in zip(starts[sizes > 2], sizes[sizes > 2]):
        members, mnew = ids[s:s + n], new[s:s + n]
        if not mnew.any():
            continue
        if n <= MAX_BUCKET_ALL_PAIRS:
            ii, jj = np.triu_indices(n, k=1)
        else:
            ii, jj = np.zeros(n - 1, np.int64), np.arange(1, n)
        ok = mnew[ii] | mnew[jj]
        a_parts.append(members[ii][ok])
        b_parts.append(members[jj][ok])
    return {"a": np.concatenate(a_parts), "b": np.concatenate(b_parts)}


def _join_table(node, other, prio, shingles):
    import pyarrow as pa

    if shingles is None:  # pair rows carry no shingles yet: empty lists cost only offsets
        shingles = pa.ListArray.from_arrays(pa.array(np.zeros(len(node) + 1, np.int32)),
                                            pa.array([], pa.uint32()))
    return pa.table({"node": pa.array(node, pa.int64()), "other": pa.array(other, pa.int64()),
                     "prio": pa.array(prio, pa.int64()), "shingles": shingles})


def _docs_as_join_rows(batch):
    n = batch.num_rows
    return _join_table(batch.column("id"), np.full(n, -1, np.int64), batch.column("prio"),
                       batch.column("shingles").combine_chunks())


def _pairs_by_b(batch):
    return _join_table(batch["b"], batch["a"], np.zeros(len(batch["a"]), np.int64), None)


def _split_join_block(batch):
    """A block with whole keys: sorted rows, and for each pair row the row of its document."""
    node = batch.column("node").to_numpy()
    other = batch.column("other").to_numpy()
    order = np.lexsort((other, node))  # the document row (other = -1) first within a node
    batch = batch.take(order)
    node, other = node[order], other[order]
    starts, sizes = _groups(node)
    doc_row = np.repeat(starts, sizes)
    is_pair = other >= 0
    if (other[doc_row[is_pair]] >= 0).any():
        raise RuntimeError("dedup join: a candidate pair names a document that is not in the input")
    return batch, node, other, doc_row, is_pair


def _attach_b(batch):
    """Rows keyed by b: drop copies of a pair, attach b's priority and shingles, re-key by a."""
    batch, node, other, doc_row, is_pair = _split_join_block(batch)
    first = np.ones(len(node), dtype=bool)
    first[1:] = (node[1:] != node[:-1]) | (other[1:] != other[:-1])
    rows = np.flatnonzero(is_pair & first)
    src = doc_row[rows]
    return _join_table(other[rows], node[rows], batch.column("prio").to_numpy()[src],
                       batch.column("shingles").take(src))


def _list_jaccard(x, y) -> np.ndarray:
    """Exact Jaccard of two aligned columns of sorted unique uint32 sets, vectorised."""
    import pyarrow.compute as pc

    lx = pc.list_value_length(x).to_numpy(zero_copy_only=False).astype(np.int64)
    ly = pc.list_value_length(y).to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(lx)
    pair = np.concatenate([np.repeat(np.arange(n, dtype=_U64), lx),
                           np.repeat(np.arange(n, dtype=_U64), ly)])
    vals = np.concatenate([x.flatten().to_numpy(), y.flatten().to_numpy()]).astype(_U64)
    keys = np.sort((pair << _U64(32)) | vals)
    both = keys[1:][keys[1:] == keys[:-1]]  # a value in both sets (each set is unique)
    inter = np.bincount((both >> _U64(32)).astype(np.int64), minlength=n).astype(np.float64)
    union = lx + ly - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((lx > 0) & (ly > 0), inter / np.maximum(union, 1), 0.0)


def _attach_a_and_verify(batch):
    """Rows keyed by a: attach a's shingles, exact Jaccard of every candidate pair."""
    batch, node, other, doc_row, is_pair = _split_join_block(batch)
    rows = np.flatnonzero(is_pair)
    src = doc_row[rows]
    shingles = batch.column("shingles")
    jac = _list_jaccard(shingles.take(src).combine_chunks(), shingles.take(rows).combine_chunks())
    prio = batch.column("prio").to_numpy()
    return {"a": node[rows], "b": other[rows], "j": jac, "pa": prio[src], "pb": prio[rows]}


def _directed_edges(batch, threshold: float):
    """Verified pairs -> both directions, each row carrying both endpoints' labels."""
    ok = batch["j"] >= threshold
    a, b, j, pa_, pb_ = (batch[k][ok] for k in ("a", "b", "j", "pa", "pb"))
    cat = np.concatenate
    return {"u": cat([a, b]), "v": cat([b, a]), "j": cat([j, j]), "pu": cat([pa_, pb_]),
            "pv": cat([pb_, pa_]), "lu": cat([pa_, pb_]), "lv": cat([pb_, pa_])}


def _propagate(batch):
    """One round, block keyed by u: u's new label is the minimum it sees; sent to each neighbour.

    Round one sees u's own label too, later rounds its neighbours' labels, so after r rounds a
    label is the minimum over the radius-r ball: non-increasing, and no row changing means every
    component carries its minimum (bipartite swaps cannot persist, as labels never increase).
    """
    order = np.argsort(batch["u"], kind="stable")
    b = {k: v[order] for k, v in batch.items()}
    if len(b["u"]) == 0:
        return {**b, "changed": np.zeros(0, np.int64)}
    starts, sizes = _groups(b["u"])
    low = np.repeat(np.minimum.reduceat(np.minimum(b["lu"], b["lv"]), starts), sizes)
    changed = ((b["lu"] != low) | (b["lv"] != low)).astype(np.int64)
    return {"u": b["v"], "v": b["u"], "j": b["j"], "pu": b["pv"], "pv": b["pu"],
            "lu": low, "lv": low, "changed": changed}


def _finish(batch):
    """Block keyed by label (whole clusters) -> one row per document in a cluster.

    Columns: id, rep (the kept document's id), size (documents in the cluster), j and nb (the
    document's most similar neighbour, ties: smallest id), dropped (new and not the rep),
    rep_indexed (the rep came from the index).
    """
    label, u, v, j, pu = batch["lu"], batch["u"], batch["v"], batch["j"], batch["pu"]
    order = np.lexsort((v, -j, u, label))  # per node: best neighbour first
    label, u, v, j, pu = label[order], u[order], v[order], j[order], pu[order]
    first = np.ones(len(u), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (label[1:] != label[:-1])
    label, u, v, j, pu = label[first], u[first], v[first], j[first], pu[first]
    starts, sizes = _groups(label)
    size = np.repeat(sizes, sizes)
    is_new = (pu >> _NEW_BIT) == 1
    return {"id": u, "rep": label & _ID_MASK, "size": size, "j": j, "nb": v,
            "dropped": is_new & (pu != label), "is_rep": pu == label,
            "rep_indexed": (label >> _NEW_BIT) == 0}


def _partitions(n_rows: int, per: int = 100_000) -> int:
    return int(min(64, max(2, -(-n_rows // per))))


def near_dedup_ray(new, params: MinHashParams, threshold: float, keep: KeepRule, old=None,
                   n_old: int = 0, batch_size: int = 2048, max_rounds: int = 50,
                   docs_out: bool = False, one_task_pairs: int | None = None) -> RayDedupResult:
    """Near-duplicate clusters of `new` (a Dataset of idx, text) and against `old`.

    `old`: the index as a Dataset of (id, bands, shingles, chars) with ids 0..n_old-1
    (`DiskIndex.read_ray`). Only new documents are ever dropped. `docs_out` keeps the
    documents' signatures in the result (held in the object store) for an index update.
    `one_task_pairs`: up to this many candidate pairs, clusters in one Ray task, above it by
    label rounds (default `ONE_TASK_PAIRS`; tests set 0 to run the rounds).
    """
    one_task_pairs = ONE_TASK_PAIRS if one_task_pairs is None else one_task_pairs
    ds_new = new.map_batches(_new_docs, fn_kwargs={"params": params, "keep": keep,
                                                   "n_old": n_old},
                             batch_format="pyarrow", batch_size=batch_size)
    docs = ds_new if old is None else ds_new.union(
        old.map_batches(_old_docs, fn_kwargs={"keep": keep}, batch_format="pyarrow"))
    docs = docs.materialize()
    n_docs = docs.count()
    parts = _partitions(n_docs)
    pairs = (docs.map_batches(_band_rows, fn_kwargs={"n_bands": params.bands},
                              batch_format="pyarrow")
             .repartition(_partitions(n_docs * params.bands, 1_000_000), keys=["key"])
             .map_batches(_bucket_pairs, batch_size=None, batch_format="numpy"))
    join_docs = docs.map_batches(_docs_as_join_rows, batch_format="pyarrow")
    by_a = (pairs.map_batches(_pairs_by_b, batch_format="numpy").union(join_docs)
            .repartition(parts, keys=["node"])
            .map_batches(_attach_b, batch_size=None, batch_format="pyarrow"))
    candidates = (by_a.union(join_docs).repartition(parts, keys=["node"])
                  .map_batches(_attach_a_and_verify, batch_size=None, batch_format="pyarrow")
                  ).materialize()
    n_cand = candidates.count()
    if not n_cand:
        nodes, n_edges, stats, rounds = None, 0, {}, 0
    elif n_cand <= one_task_pairs:
        nodes, n_edges, stats = _clusters_in_task(candidates, threshold)
        rounds = 0
    else:
        nodes, n_edges, stats, rounds = _clusters_by_rounds(candidates, threshold, n_cand,
                                                            max_rounds)
    stats = {"dropped": 0, "is_rep": 0, "against": 0, **stats}
    return RayDedupResult(nodes, candidates, docs if docs_out else None, n_cand, n_edges // 2,
                          stats["is_rep"], stats["dropped"], stats["against"], rounds)


def _clusters_in_task(candidates, threshold: float):
    """(nodes, directed edges, stats): the verified pairs' components in one Ray task.

    Label rounds cost a Ray Data execution each (seconds of start-up, ~4 s on 2 CPUs even for
    a few MB of edges); the verified pairs grow with the duplicates, not the corpus, so up to
    `ONE_TASK_PAIRS` candidates they fit one worker. The driver holds only object refs.
    """
    import ray

    task = ray.remote(num_returns=3)(_components_of_blocks)
    table_ref, n_edges_ref, stats_ref = task.remote(threshold, *candidates.to_arrow_refs())
    n_edges, stats = ray.get([n_edges_ref, stats_ref])
    return (ray.data.from_arrow_refs([table_ref]) if n_edges else None), n_edges, stats


def _components_of_blocks(threshold: float, *tables):
    """Candidate blocks -> (node rows as `_finish` makes them, directed edges, stats)."""
    import pyarrow as pa

    from distill.curation.dedup import components

    t = pa.concat_tables([x for x in tables if x.num_rows], promote_options="permissive")
    e = _directed_edges({k: t.column(k).to_numpy() for k in ("a", "b", "j", "pa", "pb")},
                        threshold)
    if not len(e["u"]):
        return None, 0, {}
    ids, u = np.unique(e["u"], return_inverse=True)  # every node is some edge's u
    v = np.searchsorted(ids, e["v"])
    comp = components(len(ids), np.stack([u, v], axis=1))
    prio = np.empty(len(ids), np.int64)
    prio[u] = e["pu"]
    low = np.full(int(comp.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(low, comp, prio)  # a cluster's label: its best priority, as the rounds reach
    nodes = _finish({**e, "lu": low[comp[u]]})
    return pa.table(nodes), len(e["u"]), _counts(nodes)


NODE_COUNT_COLUMNS = ("dropped", "is_rep", "rep_indexed")  # what `_counts` reads


def _counts(nodes) -> dict[str, int]:
    d = nodes["dropped"]
    return {"dropped": int(d.sum()), "is_rep": int(nodes["is_rep"].sum()),
            "against": int((d & nodes["rep_indexed"]).sum())}


def _clusters_by_rounds(candidates, threshold: float, n_cand: int, max_rounds: int):
    """(nodes, directed edges, stats, rounds): min-label propagation, one shuffle per round."""
    edges = candidates.map_batches(_directed_edges, fn_kwargs={"threshold": threshold},
                                   batch_format="numpy")
    edge_parts = _partitions(2 * n_cand)  # directed edges: at most two per candidate
    rounds, n_edges = 0, None
    while n_edges != 0:  # the first round also counts the edges (no execution of its own)
        rounds += 1
        edges = (edges.repartition(edge_parts, keys=["u"])
                 .map_batches(_propagate, batch_size=None, batch_format="numpy")).materialize()
        n_edges = edges.count()
        if not _block_sums(edges, _changed, ("changed",))["changed"]:
            break
        if rounds >= max_rounds:
            raise RuntimeError(f"dedup clusters: labels still changing after {rounds} rounds")
        edges = edges.drop_columns(["changed"])
    if not n_edges:
        return None, 0, {}, rounds
    nodes = (edges.repartition(edge_parts, keys=["lu"])
             .map_batches(_finish, batch_size=None, batch_format="numpy")).materialize()
    return nodes, n_edges, _block_sums(nodes, _counts, NODE_COUNT_COLUMNS), rounds


def _block_sums(ds, count: Callable[[dict], dict[str, int]], columns: tuple[str, ...]
                ) -> dict[str, int]:
    """`count` (numpy columns -> ints) summed over the blocks of a materialized Dataset: one
    small Ray task per block, ints back (a Counter: 0 for a key no block had).

    A Ray Data aggregate (or a map + take_all) would start a whole execution, seconds each
    on a small cluster, once per label round; plain tasks on the blocks take milliseconds.
    """
    import ray

    task = ray.remote(num_cpus=0.5)(_count_block)
    totals: Counter = Counter()
    for part in ray.get([task.remote(ref, count, columns) for ref in ds.to_arrow_refs()]):
        totals.update(part)
    return totals


def _count_block(table, count, columns: tuple[str, ...]) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    return count({k: table.column(k).to_numpy(zero_copy_only=False) for k in columns})


def _changed(edges) -> dict[str, int]:
    return {"changed": int(edges["changed"].sum())}


def texts_dataset(texts, batch_size: int = 2048):
    """A list of texts as a Dataset of (idx, text) blocks (for callers that hold texts already)."""
    import pyarrow as pa
    import ray

    table = pa.table({"idx": pa.array(np.arange(len(texts), dtype=np.int64)),
                      "text": pa.array(list(texts), pa.large_string())})
    n = len(texts)
    return ray.data.from_arrow([table.slice(i, batch_size) for i in range(0, n, batch_size)]
                               or [table])


# --- the curate stage's use: texts in the driver already, the index on disk -------------------


def near_dedup_texts(texts, keys: list[str], old_keys: list[str], index, exclude: str | None,
                     params: MinHashParams, threshold: float, keep: KeepRule, batch_size: int):
    """`near_dedup_ray` for the curate stage: (NearDedupResult, the pending index update).

    `old_keys` are the indexed documents' keys in index order (curate loads them for exact
    dedup anyway); only the dropped documents come back to the driver.
    """
    from distill.curation.dedup import Dropped, NearDedupResult

    old_ds, n_old = index.read_ray(exclude)
    if n_old != len(old_keys):
        raise RuntimeError(f"dedup index changed while reading: {n_old} != {len(old_keys)} rows")
    res = near_dedup_ray(texts_dataset(texts, batch_size), params, threshold, keep, old_ds,
                         n_old, batch_size, docs_out=True)

    def key(i: int) -> str:
        return old_keys[i] if i < n_old else keys[i - n_old]

    dropped: list[Dropped] = []
    if res.nodes is not None:
        rows = res.nodes.map_batches(_only_dropped, batch_format="numpy").to_pandas()
        for r in rows.sort_values("id").itertuples():
            where = "indexed earlier run" if r.rep_indexed else "this run"
            detail = f"cluster of {r.size} ({where}); J={r.j:.3f} with {key(int(r.nb))}"
            dropped.append(Dropped(int(r.id) - n_old, key(int(r.rep)), detail))
    out = NearDedupResult(dropped, res.clusters, res.candidate_pairs, res.verified_pairs,
                          res.against_index)
    return out, RayIndexUpdate(index, exclude or "", res.docs, n_old, keys, texts)


def _only_dropped(batch):
    return {k: v[batch["dropped"]] for k, v in batch.items()}


class RayIndexUpdate:
    """The kept documents' signatures, written to the index as Parquet shards by Ray Data."""

    def __init__(self, index, segment: str, docs, n_old: int, keys: list[str], texts):
        from distill.curation.minhash import exact_key

        self.index, self.segment, self.docs, self.n_old = index, segment, docs, n_old
        self.keys = keys
        self.exact = [exact_key(t) for t in texts]
        self.chars = np.array([len(t) for t in texts], dtype=np.int64)

    def commit(self, final):
        ids = {e.example_id for e in final}
        kept = np.array([i for i, k in enumerate(self.keys) if k in ids], dtype=np.int64)
        rows = self.docs.map_batches(
            _index_rows, batch_format="pyarrow",
            fn_kwargs={"n_old": self.n_old, "kept": kept, "keys": self.keys,
                       "exact": self.exact, "chars": self.chars})
        return self.index.write_ray(self.segment, rows)


def _index_rows(batch, n_old: int, kept: np.ndarray, keys, exact, chars):
    """Document rows -> index rows for the kept new documents."""
    import pyarrow as pa

    pos = batch.column("id").to_numpy() - n_old
    take = np.flatnonzero((pos >= 0) & np.isin(pos, kept))
    p = pos[take]
    return pa.table({"key": pa.array([keys[i] for i in p], pa.string()),
                     "exact": pa.array([exact[i] for i in p], pa.string()),
                     "bands": batch.column("bands").take(take).combine_chunks(),
                     "shingles": batch.column("shingles").take(take).combine_chunks(),
                     "chars": pa.array(chars[p], pa.int64())})
