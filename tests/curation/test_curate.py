"""The curate stage end to end on Parquet built here: lineage, funnel, index, decontam, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation_helpers import read, samples, write_shards, write_test_set
from distill.curate import run_curate
from distill.core.errors import ConfigError, DataError, StageNotReadyError
from distill.pipeline import run_stage

RNG = np.random.default_rng(7)
VOCAB = [f"v{i}" for i in range(4000)]


def review(n: int = 40) -> str:
    return " ".join(RNG.choice(VOCAB, n))


def near_copy(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "changed"  # one word: exact Jaccard 35/41, about 0.85
    return " ".join(words)


def build_rows(texts: list[str]) -> list[dict]:
    rows = []
    for i, t in enumerate(texts):
        rows += samples(t, ["positive", " Positive.", "negative"] if i % 2 else ["negative"] * 3)
    return rows


def test_curate_lineage_funnel_and_manifest(make_run):
    run = make_run(filters={"min_agreement": 0.6})
    base = [review() for _ in range(8)]
    texts = base + [near_copy(base[0]), base[1].upper() + "!"]
    rows = build_rows(texts)
    rows += samples("truncated example text here for sure", ["positive"], finish="length")
    write_shards(run, rows, shard_size=7)
    write_test_set(run, [base[2]])  # base[2] leaked into training: decontam must drop it
    summary = run_stage(run, "curate")

    train = read(run.dir / "curate" / "train.parquet")
    rejects = read(run.dir / "curate" / "rejects.parquet")
    kept_rows = [rid for t in train for rid in t["row_ids"]]
    # every input row is either lineage of a kept example or rejected, exactly once
    assert sorted(kept_rows + [r["row_id"] for r in rejects]) == sorted(r["row_id"] for r in rows)
    by_filter = {r["filter"] for r in rejects}
    assert {"truncated", "minority", "exact_dup", "near_dup", "decontam"} <= by_filter
    assert summary["examples_out"] == len(train) == 7  # 10 texts - exact - near - decontam
    assert summary["filters"]["truncated"] == 1
    assert summary["dedup"]["exact_dropped"] == 1 and summary["dedup"]["near_dropped"] == 1
    assert summary["decontam"]["dropped"] == 1
    near = next(r for r in rejects if r["filter"] == "near_dup")
    assert near["example_id"] == rows[8 * 3]["example_id"] and "J=0.8" in near["detail"]
    first = next(t for t in train if t["text"] == base[1])
    assert first["target"] == "positive" and first["agreement"] == pytest.approx(2 / 3, abs=1e-3)
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["summaries"]["curate"]["funnel"][0]["step"] == "filter: truncated"
    assert manifest["stages"]["curate"]["status"] == "done"


def test_refresh_dedups_against_the_previous_runs_index(make_run, tmp_path):
    index_dir = tmp_path / "shared_index"
    first = make_run("first", dedup={"index_dir": str(index_dir)}, decontam={"enabled": False})
    old = [review() for _ in range(6)]
    write_shards(first, build_rows(old))
    s1 = run_curate(first)
    assert s1["examples_out"] == 6 and s1["dedup"]["indexed_before"] == 0

    # a rerun of the same curation replaces its own segment: it does not dedup against itself
    assert run_curate(first)["examples_out"] == 6

    refresh = make_run("refresh", dedup={"index_dir": str(index_dir)}, decontam={"enabled": False})
    new = [review() for _ in range(3)]
    write_shards(refresh, build_rows([near_copy(old[0]), old[3].lower() + " ", *new]))
    s2 = run_curate(refresh)
    assert s2["dedup"]["indexed_before"] == 6
    assert s2["dedup"]["near_against_index"] == 1 and s2["dedup"]["exact_against_index"] == 1
    assert {t["text"] for t in read(refresh.dir / "curate" / "train.parquet")} == set(new)
    details = [r["detail"] for r in read(refresh.dir / "curate" / "rejects.parquet")]
    assert any("indexed earlier run" in d for d in details)
    # the index now holds both runs' kept examples
    assert len(list((index_dir / "segments").glob("*.parquet"))) == 2

    other = make_run("other", dedup={"index_dir": str(index_dir), "num_perm": 64},
                     decontam={"enabled": False})
    write_shards(other, build_rows(new))
    with pytest.raises(ConfigError, match="num_perm"):
        run_curate(other)


def test_decontam_minhash_method_and_fields(make_run):
    run = make_run(decontam={"method": "minhash", "threshold": 0.7, "fields": ["prompt"]})
    texts = [review() for _ in range(4)]
    write_shards(run, build_rows(texts))
    write_test_set(run, [near_copy(texts[1]), review()])
    summary = run_curate(run)
    assert summary["decontam"]["dropped"] == 1
    rej = [r for r in read(run.dir / "curate" / "rejects.parquet") if r["filter"] == "decontam"]
    assert {r["example_id"] for r in rej} == {samples(texts[1], ["x"])[0]["example_id"]}
    assert rej[0]["detail"].startswith("prompt: J=")


def test_decontam_ngram_is_exact_on_eight_word_overlap(make_run):
    run = make_run()
    texts = [review() for _ in range(3)]
    write_shards(run, build_rows(texts))
    words = texts[0].split()
    write_test_set(run, [" ".join(["x"] + words[5:13] + ["y"]),  # 8 shared words: hit
                         " ".join(texts[1].split()[:7])])  # only 7 words shared: no hit
    assert run_curate(run)["decontam"]["dropped"] == 1


@pytest.mark.parametrize("corrupt,message", [
    (lambda p: p.write_bytes(b"PAR1 this is not parquet"), "not a readable Parquet file"),
    ("drop_completion", "missing column(s) completion"),
    ("null_text", "row 1: column text is null"),
])
def test_malformed_shard_fails_clearly_and_leaves_no_output(make_run, corrupt, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = make_run(decontam={"enabled": False})
    paths = write_shards(run, build_rows([review() for _ in range(4)]), shard_size=6)
    bad = paths[1]
    if callable(corrupt):
        corrupt(bad)
    else:
        t = pq.read_table(bad)
        if corrupt == "drop_completion":
            t = t.drop_columns(["completion"])
        else:
            rows = t.to_pylist()
            rows[1]["text"] = None
            t = pa.Table.from_pylist(rows, schema=t.schema)
        pq.write_table(t, bad)
    with pytest.raises(DataError) as err:
        run_stage(run, "curate")
    assert str(bad) in str(err.value) and message in str(err.value)
    curate_dir = run.dir / "curate"
    assert not curate_dir.exists() or list(curate_dir.iterdir()) == []
    assert not (run.dir / "dedup_index" / "segments").exists() or \
        list((run.dir / "dedup_index" / "segments").iterdir()) == []
    assert json.loads(run.manifest_path.read_text())["stages"]["curate"]["status"] == "failed"


def test_missing_inputs_are_stage_not_ready(make_run):
    run = make_run()
    with pytest.raises(StageNotReadyError, match="distill generate"):
        run_curate(run)
    write_shards(run, build_rows([review()]))
    with pytest.raises(StageNotReadyError, match="test.parquet"):
        run_curate(run)


def test_curate_on_ray_end_to_end_and_its_sharded_index(make_run, ray_local, tmp_path):
    index_dir = tmp_path / "shared_index"
    ray_cfg = {"use_ray": True, "batch_size": 4, "index_dir": str(index_dir)}
    run = make_run(dedup=ray_cfg, decontam={"enabled": False})
    base = [review() for _ in range(10)]
    write_shards(run, build_rows(base + [near_copy(base[4])]))
    s = run_curate(run)
    assert s["dedup"]["near_dropped"] == 1 and s["examples_out"] == 10
    (segment,) = (index_dir / "segments").iterdir()
    assert segment.is_dir()  # Ray Data's Parquet shards

    # the sharded segment reads the same on either path; a local refresh drops against it
    refresh = make_run("refresh", dedup={"index_dir": str(index_dir), "use_ray": False},
                       decontam={"enabled": False})
    new = [review() for _ in range(5)]
    write_shards(refresh, build_rows([near_copy(base[0]), *new]))
    s2 = run_curate(refresh)
    assert s2["dedup"]["indexed_before"] == 10 and s2["dedup"]["near_against_index"] == 1
