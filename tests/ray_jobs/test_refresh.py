"""Refresh cycles on a growing prompt directory: only new prompts are generated, dedup runs
against the persistent index, the held-out set stays fixed, the gate promotes or keeps, a
crashed refresh resumes without touching the promoted student, and rollback works."""

from __future__ import annotations

import json

import pytest
from refresh_helpers import Runner, first_run, ids, make_config, sentences, write_jsonl

from distill.core.errors import ConfigError, DistillError, StageNotReadyError
from distill.core.messages import text_id
from distill import promote as P
from distill import refresh as R
from distill.core import versions as V


@pytest.fixture
def grown(tmp_path):
    """A first run on 30 prompts, then a source dir that grew by one file."""
    src = tmp_path / "prompts"
    old = sentences(30, seed=1)
    write_jsonl(src / "a.jsonl", old)
    cfg = make_config(tmp_path, src)
    first_run(cfg, Runner(accuracy=0.70))
    new = sentences(8, seed=2)
    # Two texts already seen (exact repeats are not new prompts), and a near-duplicate of a
    # seen text: new to the teacher, but curation drops it against the persistent index.
    near = dict(old[0], text=old[0]["text"].rsplit(" ", 1)[0] + " w399")
    write_jsonl(src / "b.jsonl", new + [old[3], old[4], near])
    return cfg, new, near


def test_refresh_generates_only_for_new_prompts(grown):
    cfg, new, near = grown
    base = cfg.output_dir
    test_before = (base / "prompts" / "test.parquet").read_bytes()
    runner = Runner(accuracy=0.72)
    result = R.refresh(cfg, runner)

    assert result.version == "v0001" and result.status == "promoted"
    vdir = base / "refresh" / "v0001"
    expected = {text_id(r["text"]) for r in new} | {text_id(near["text"])}
    assert ids(vdir / "data" / "prompts" / "train.parquet") == expected
    shard_ids = ids(next((vdir / "data" / "generate" / "shards").glob("*.parquet")))
    assert shard_ids == expected  # the teacher saw the new prompts and nothing else
    assert ("data", "generate") in runner.ran

    curate = json.loads((vdir / "data" / "manifest.json").read_text())["summaries"]["curate"]
    assert curate["dedup"]["near_against_index"] >= 1  # the near-duplicate of a seen text
    assert text_id(near["text"]) not in ids(vdir / "data" / "curate" / "train.parquet")

    # the held-out set is the first run's, byte for byte, in both version run dirs
    for sub in ("data", "train"):
        assert (vdir / sub / "prompts" / "test.parquet").read_bytes() == test_before
    # retrain_from: scratch trains on the first run's curated data plus the new one
    union = ids(vdir / "train" / "curate" / "train.parquet")
    assert union == ids(base / "curate" / "train.parquet") | ids(
        vdir / "data" / "curate" / "train.parquet")
    lineage = json.loads((vdir / "refresh.json").read_text())
    assert lineage["parent"] == "v0000" and lineage["new_prompts"] == len(expected)
    assert lineage["dataset"]["versions"] == {"v0000": 24 - 0, "v0001": len(new)}

    promoted = V.read_promoted(base)
    assert promoted["version"] == "v0001" and promoted["value"] == pytest.approx(0.72)
    assert promoted["adapter"].endswith("refresh/v0001/train/dpo/adapter")
    history = [json.loads(line) for line in (base / "promotions.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == ["v0000", "v0001"]

    # nothing new since: no version, no stage runs
    again = Runner()
    assert R.refresh(cfg, again).status == "nothing_new"
    assert again.ran == [] and len(V.versions(base)) == 1


def test_gate_keeps_the_promoted_student_when_worse(grown):
    cfg, _, _ = grown
    result = R.refresh(cfg, Runner(accuracy=0.60))
    assert result.status == "kept" and result.current == pytest.approx(0.70)
    assert V.read_promoted(cfg.output_dir)["version"] == "v0000"
    lineage = V.lineage(cfg.output_dir / "refresh" / "v0001")
    assert lineage["status"] == "kept"
    assert lineage["gate"]["reason"].startswith(
        "kept v0000: v0001's student is not significantly better than the promoted student "
        "v0000 (accuracy -0.100")
    assert lineage["gate"]["tests"]["vs_base"]["b_only"] == 40  # paired on the same items


def test_gate_needs_evidence_and_rollback_restores(grown):
    cfg, _, _ = grown
    # one item better out of 400 is no evidence: the promoted student stays
    assert R.refresh(cfg, Runner(accuracy=0.7025)).status == "kept"
    more = sentences(3, seed=4)
    write_jsonl(cfg.prompts.path / "c.jsonl", more)
    # far better, but not within 0.02 of the teacher (0.90): the teacher check holds it back
    held = R.refresh(cfg, Runner(accuracy=0.85, teacher=0.90))
    assert held.status == "kept" and "not shown within 0.02 of the teacher" in held.reason
    write_jsonl(cfg.prompts.path / "d.jsonl", sentences(3, seed=5))
    assert R.refresh(cfg, Runner(accuracy=0.72)).status == "promoted"  # 8 items more, p=.004
    back = P.rollback(cfg)
    assert back["version"] == "v0000" and back["reason"] == "rollback from v0003"
    assert V.read_promoted(cfg.output_dir)["version"] == "v0000"
    assert P.promote_version(cfg, "v0003")["version"] == "v0003"
    with pytest.raises(DistillError, match="v0007"):
        P.promote_version(cfg, "v0007")


def test_failed_refresh_resumes_and_leaves_promoted_untouched(grown):
    cfg, _, _ = grown
    base = cfg.output_dir
    crashing = Runner(accuracy=0.9, fail_at="sft")
    with pytest.raises(RuntimeError, match="simulated crash"):
        R.refresh(cfg, crashing)
    before = (base / "promoted.json").read_bytes()
    lineage = V.lineage(base / "refresh" / "v0001")
    assert lineage["status"] == "running" and "simulated crash" in lineage["last_error"]

    resumed = Runner(accuracy=0.9)
    result = R.refresh(cfg, resumed)
    assert result.version == "v0001"  # the same version, resumed, not a new one
    assert ("data", "generate") not in resumed.ran and ("data", "curate") not in resumed.ran
    assert ("train", "sft") in resumed.ran and ("train", "pairs") not in resumed.ran
    assert before != (base / "promoted.json").read_bytes()  # changed only at the gate
    assert V.read_promoted(base)["version"] == "v0001"


def test_second_refresh_excludes_everything_seen(grown):
    cfg, _, _ = grown
    R.refresh(cfg, Runner(accuracy=0.71))
    more = sentences(5, seed=3)
    write_jsonl(cfg.prompts.path / "c.jsonl", more)
    result = R.refresh(cfg, Runner(accuracy=0.72))
    v2 = cfg.output_dir / "refresh" / "v0002"
    assert result.version == "v0002" and result.new_prompts == 5
    assert ids(v2 / "data" / "prompts" / "train.parquet") == {text_id(r["text"]) for r in more}
    assert set(V.lineage(v2)["dataset"]["versions"]) == {"v0000", "v0001", "v0002"}


def test_retrain_from_previous_needs_a_merged_model(grown):
    cfg, _, _ = grown
    prev = cfg.model_copy(update={"refresh": cfg.refresh.model_copy(
        update={"retrain_from": "previous"})})
    with pytest.raises(ConfigError, match="merged"):
        R.refresh(prev, Runner())


def test_refresh_needs_a_first_run(tmp_path):
    src = write_jsonl(tmp_path / "p" / "a.jsonl", sentences(10, seed=1))
    with pytest.raises(StageNotReadyError, match="distill run"):
        R.refresh(make_config(tmp_path, src.parent), Runner())
