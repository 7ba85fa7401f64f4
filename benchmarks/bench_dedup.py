"""Near-dedup benchmark: distill's Ray Data MinHash dedup vs a plain per-document datasketch loop.

One run, one corpus (default 100k documents, word 3-grams, num_perm 128, threshold 0.8) with
planted near-duplicates. Prints docs/s of both, the speed ratio, and the precision/recall of
both against exact Jaccard. Truth: every pair that either method proposes, plus every pair
inside a planted group, whose exact Jaccard of word 3-gram sets is >= the threshold (unrelated
random documents share next to no 3-grams, so no true pair lies outside these).

    .venv/bin/python benchmarks/bench_dedup.py [--docs 100000] [--out benchmarks/results/dedup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.curation import dedup as dd  # noqa: E402
from distill.curation.dedup_index import IndexedDocs  # noqa: E402
from distill.curation.minhash import MinHashParams, lsh_params  # noqa: E402


def make_corpus(n_docs: int, seed: int = 0, dup_fraction: float = 0.15):
    """Random Zipf-word documents; a fraction are edited copies of others (the planted dups)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(30000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8
    weights /= weights.sum()
    n_base = int(n_docs * (1 - dup_fraction))
    lengths = rng.integers(40, 121, size=n_base)
    pool = rng.choice(len(vocab), size=int(lengths.sum()) + n_docs, p=weights)  # one draw: fast
    ends = np.cumsum(lengths)
    docs: list[list[str]] = [[vocab[i] for i in pool[e - n:e]] for e, n in zip(ends, lengths)]
    extra = iter(pool[ends[-1]:].tolist() * 8)
    group = list(range(n_base))  # planted group id = index of the original
    for _ in range(n_docs - n_base):
        src = int(rng.integers(n_base))
        words = list(docs[src])
        for _ in range(int(round(rng.uniform(0, 0.08) * len(words)))):
            op, pos = rng.integers(3), int(rng.integers(len(words)))
            w = vocab[next(extra)]
            if op == 0:
                words[pos] = w
            elif op == 1:
                words.insert(pos, w)
            elif len(words) > 5:
                del words[pos]
        docs.append(words)
        group.append(src)
    order = rng.permutation(n_docs)  # duplicates are not next to their originals
    return [" ".join(docs[i]) for i in order], np.array(group)[order]


def word_shingles(text: str, n: int = 3) -> list[str]:
    w = text.lower().split()
    return [" ".join(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))]


def baseline(texts: list[str], threshold: float, num_perm: int) -> tuple[set, float]:
    """The straightforward loop: MinHash + update per shingle + LSH query/insert per document."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs: set[tuple[int, int]] = set()
    t0, c0 = time.perf_counter(), time.process_time()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        for sh in word_shingles(text):
            m.update(sh.encode("utf8"))
        for j in lsh.query(m):
            pairs.add((min(i, j), max(i, j)))
        lsh.insert(i, m)
    return pairs, time.perf_counter() - t0, time.process_time() - c0


def ours(texts: list[str], threshold: float, num_perm: int, use_ray: bool):
    cand = threshold - 0.2
    bands, rows = lsh_params(cand, num_perm)
    params = MinHashParams(num_perm=num_perm, shingle="word", ngram=3, bands=bands, rows=rows)
    t0, c0 = time.perf_counter(), time.process_time()
    sigs = dd.signatures_ray(texts, params) if use_ray else dd.signatures_local(texts, params)
    t_sig = time.perf_counter() - t0
    docs = IndexedDocs([str(i) for i in range(len(texts))], [""] * len(texts), sigs.bands,
                       sigs.shingle_values, sigs.shingle_offsets,
                       np.array([len(t) for t in texts]))
    res = dd.near_dedup(docs, sigs.sig, threshold, "first")
    elapsed = time.perf_counter() - t0
    found = {tuple(p) for p in res.pairs[res.jaccard >= threshold].tolist()}
    cands = {tuple(p) for p in res.pairs.tolist()}
    return found, cands, elapsed, t_sig, res, params, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import ray

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    texts, group = make_corpus(args.docs)
    print(f"corpus: {len(texts)} docs, mean {np.mean([len(t.split()) for t in texts]):.0f} words "
          f"({time.perf_counter() - t0:.1f}s to build)")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext
    DataContext.get_current().enable_progress_bars = False

    ours_pairs, ours_cands, t_ours, t_sig, res, params, _ = ours(texts, args.threshold, args.num_perm, True)
    print(f"ours (Ray Data, {os.cpu_count()} CPUs): {t_ours:.1f}s = {len(texts) / t_ours:,.0f} docs/s "
          f"(signatures {t_sig:.1f}s; {res.candidate_pairs} candidates, bands={params.bands} "
          f"rows={params.rows})")
    local_pairs, _, t_local, _, _, _, cpu_local = ours(texts, args.threshold, args.num_perm, False)
    print(f"ours (one process): {t_local:.1f}s = {len(texts) / t_local:,.0f} docs/s "
          f"(CPU {cpu_local:.1f}s)")
    ray.shutdown()
    base_pairs, t_base, cpu_base = baseline(texts, args.threshold, args.num_perm)
    print(f"datasketch loop: {t_base:.1f}s = {len(texts) / t_base:,.0f} docs/s (CPU {cpu_base:.1f}s)")

    # truth: exact Jaccard on string shingle sets over every pair anyone could call a duplicate
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(group.tolist()):
        by_group.setdefault(g, []).append(i)
    planted = {(a, b) for m in by_group.values() if len(m) > 1
               for x, a in enumerate(sorted(m)) for b in sorted(m)[x + 1:]}
    universe = planted | base_pairs | ours_cands | ours_pairs
    cache: dict[int, set] = {}

    def sset(i: int) -> set:
        if i not in cache:
            cache[i] = set(word_shingles(texts[i]))
        return cache[i]

    jac = {p: len(sset(p[0]) & sset(p[1])) / len(sset(p[0]) | sset(p[1])) for p in universe}
    truth = {p for p, j in jac.items() if j >= args.threshold}
    js = np.array([jac[p] for p in planted])

    def pr(found: set) -> tuple[float, float]:
        tp = len(found & truth)
        return (tp / len(found) if found else 1.0), (tp / len(truth) if truth else 1.0)

    p_ours, r_ours = pr(ours_pairs)
    p_local, r_local = pr(local_pairs)
    p_base, r_base = pr(base_pairs)
    ratio = t_base / t_ours
    lines = [
        f"corpus: {len(texts)} docs, {len(planted)} planted pairs (exact J: "
        f"{(js >= 0.9).mean():.0%} >= 0.9, {((js >= 0.8) & (js < 0.9)).mean():.0%} in [0.8, 0.9), "
        f"{(js < 0.8).mean():.0%} < 0.8); true pairs at J >= {args.threshold}: {len(truth)}",
        "",
        "| method | seconds | docs/s | pairs reported | precision | recall |",
        "|---|---|---|---|---|---|",
        f"| distill dedup (Ray Data, {os.cpu_count()} CPUs) | {t_ours:.1f} | {len(texts) / t_ours:,.0f} | "
        f"{len(ours_pairs)} | {p_ours:.4f} | {r_ours:.4f} |",
        f"| distill dedup (one process) | {t_local:.1f} | {len(texts) / t_local:,.0f} | "
        f"{len(local_pairs)} | {p_local:.4f} | {r_local:.4f} |",
        f"| datasketch per-document loop | {t_base:.1f} | {len(texts) / t_base:,.0f} | "
        f"{len(base_pairs)} | {p_base:.4f} | {r_base:.4f} |",
        "",
        f"speed ratio (distill Ray / datasketch loop, wall time): {ratio:.1f}x (target >= 5x)",
        f"single-process CPU-time ratio (distill / datasketch loop): {cpu_base / cpu_local:.1f}x "
        f"({cpu_local:.1f}s vs {cpu_base:.1f}s of CPU; less sensitive to other load)",
        f"load average during the run (1 min): start {load0:.1f}, end {os.getloadavg()[0]:.1f}",
        f"ours: candidates at LSH threshold {args.threshold - 0.2:.2f} (b={params.bands}, "
        f"r={params.rows}) confirmed by exact Jaccard; datasketch: MinHashLSH(threshold="
        f"{args.threshold}) query results taken as duplicates.",
        f"host: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
