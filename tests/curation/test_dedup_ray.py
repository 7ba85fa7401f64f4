"""Near-dedup on Ray Data end to end: the same kept set as the single-process path."""

from __future__ import annotations

import numpy as np

from distill.curation import dedup as dd
from distill.curation.dedup_index import DiskIndex, IndexedDocs
from distill.curation.dedup_ray import _clusters_in_task, near_dedup_ray, texts_dataset
from distill.curation.minhash import MinHashParams, exact_key, lsh_params


def chained_corpus(n_base: int = 2500, seed: int = 1) -> list[str]:
    """Random texts, edited copies of some, copies of copies (chains: several label rounds),
    one bucket larger than MAX_BUCKET_ALL_PAIRS (the star rule) and a few empty texts."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(vocab, rng.integers(30, 70))) for _ in range(n_base)]

    def edit(text: str, k: int) -> str:
        words = text.split()
        for _ in range(k):
            op, pos = rng.integers(3), int(rng.integers(len(words)))
            if op == 0:
                words[pos] = str(rng.choice(vocab))
            elif op == 1:
                words.insert(pos, str(rng.choice(vocab)))
            else:
                del words[pos]
        return " ".join(words)

    for src in rng.choice(n_base, 400, replace=False):
        texts.append(edit(texts[src], int(rng.integers(0, 4))))
        if src % 3 == 0:  # a chain: copy of the copy
            texts.append(edit(texts[-1], 2))
    texts += [texts[7]] * 70 + ["", ""]
    order = rng.permutation(len(texts))
    return [texts[i] for i in order]


def test_ray_path_keeps_what_the_local_path_keeps(ray_local, tmp_path):
    texts = chained_corpus()
    b, r = lsh_params(0.6, 128)
    params = MinHashParams(bands=b, rows=r)
    n_old = 800  # the first documents were indexed by an earlier run
    sigs = dd.signatures_local(texts, params)
    chars = np.array([len(t) for t in texts], dtype=np.int64)
    docs = IndexedDocs([str(i) for i in range(len(texts))], [exact_key(t) for t in texts],
                       sigs.bands, sigs.shingle_values, sigs.shingle_offsets, chars)
    index = DiskIndex(tmp_path / "index", params, ["prompt"])
    index.check_meta()
    index.write("a", docs.take(np.arange(0, 500)))
    index.write_ray("b", ray_local.data.from_arrow(_table(docs.take(np.arange(500, n_old)))))
    old_ds, n_indexed = index.read_ray()
    assert n_indexed == n_old
    old = index.load()
    assert old.keys == docs.keys[:n_old] and np.array_equal(old.bands, docs.bands[:n_old])

    new = docs.take(np.arange(n_old, len(texts)))
    local = dd.near_dedup(new, None, 0.8, "longest", old)
    res = near_dedup_ray(texts_dataset(texts[n_old:], 256), params, 0.8, "longest", old_ds,
                         n_old, batch_size=256, one_task_pairs=0)  # the label rounds
    nodes = res.nodes.to_pandas()
    dropped = nodes[nodes["dropped"]]
    assert set(dropped["id"] - n_old) == {d.index for d in local.dropped}
    kept_by = dict(zip(dropped["id"] - n_old, dropped["rep"]))
    assert all(docs.keys[kept_by[d.index]] == d.kept_key for d in local.dropped)
    assert (res.candidate_pairs, res.verified_pairs, res.clusters, res.against_index) == (
        local.candidate_pairs, local.verified_pairs, local.clusters, local.against_index)
    assert res.rounds >= 3 and local.against_index > 0 and len(local.dropped) > 300

    # the default below ONE_TASK_PAIRS: the same clusters from one task, on the same candidates
    one, n_edges, stats = _clusters_in_task(res.candidates, 0.8)
    assert n_edges == 2 * res.verified_pairs
    assert (stats["is_rep"], stats["dropped"], stats["against"]) == (
        res.clusters, len(local.dropped), res.against_index)
    cols = ["id", "rep", "size", "j", "nb", "dropped", "is_rep", "rep_indexed"]
    assert one.to_pandas()[cols].sort_values("id").reset_index(drop=True).equals(
        nodes[cols].sort_values("id").reset_index(drop=True))


def _table(docs: IndexedDocs):
    from distill.curation.dedup_index import _to_table

    return _to_table(docs)
