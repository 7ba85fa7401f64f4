"""A finished stage is never reused under another config: the real CLI refuses with the changed
keys (exit 2, no traceback), `--force` reruns exactly the stale stages, where/how-fast keys
never count, and a secret-looking value is never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.core import stale
from distill.core.config import load_config
from distill.core.rundir import Run
from distill.pipeline import stale_changes, stage_by_name

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"text": f"review number {i}",
                                       "label": "positive" if i % 3 else "negative"}) + "\n"
                           for i in range(30)))
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["prompts"] = {"source": "jsonl", "path": str(src), "test_size": 6}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "manifest.json").read_text())


def test_a_changed_key_refuses_reuse_and_force_reruns(tmp_path):
    cfg = _config(tmp_path)
    assert _cli("prompts", str(cfg)).exit_code == 0
    first = _manifest(tmp_path)["stages"]["prompts"]

    res = _cli("prompts", str(cfg), "--set", "prompts.test_size=9")
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    out = " ".join(res.output.split())
    assert "prompts: finished in" in out and "under another config" in out
    assert "prompts.test_size: 6 -> 9" in out
    assert "distill prompts --force" in out
    # `distill run` refuses the same way, before any stage runs
    res = _cli("run", str(cfg), "--stage", "prompts", "--set", "prompts.test_size=9")
    assert res.exit_code == 2 and "prompts.test_size: 6 -> 9" in " ".join(res.output.split())
    assert _manifest(tmp_path)["stages"]["prompts"]["finished"] == first["finished"]

    res = _cli("run", str(cfg), "--stage", "prompts", "--force", "--set", "prompts.test_size=9")
    assert res.exit_code == 0, res.output
    manifest = _manifest(tmp_path)
    assert manifest["stages"]["prompts"]["config_hash"] != first["config_hash"]
    assert pq.read_table(tmp_path / "run" / "prompts" / "test.parquet").num_rows == 9
    # the old config's output was set aside, not deleted
    assert (tmp_path / "run" / "stale" / first["config_hash"] / "prompts" / "test.parquet").exists()
    # and now the new config is the one on record: no refusal, no rerun
    res = _cli("run", str(cfg), "--stage", "prompts", "--set", "prompts.test_size=9")
    assert res.exit_code == 0 and "already done" in res.output


def test_where_and_how_fast_keys_and_later_sections_do_not_make_a_stage_stale(tmp_path):
    cfg = _config(tmp_path)
    assert _cli("prompts", str(cfg)).exit_code == 0
    prompts = stage_by_name("prompts")
    for override in ("ray.address=auto", "teacher.replicas=4", "sft.learning_rate=0.001",
                     "generate.temperature=1.0"):
        run = Run(load_config(cfg, [override]))
        assert stale_changes(run, prompts) == [], override
    res = _cli("run", str(cfg), "--stage", "prompts", "--set", "generate.temperature=1.0")
    assert res.exit_code == 0 and "already done" in res.output
    # a key the prompts stage reads does count, and so does a global one
    run = Run(load_config(cfg, ["seed=3"]))
    assert [c[0] for c in stale_changes(run, prompts)] == ["seed"]


def test_a_stale_earlier_stage_refuses_the_stage_that_reads_its_output(tmp_path):
    cfg = _config(tmp_path)
    assert _cli("prompts", str(cfg)).exit_code == 0
    res = _cli("curate", str(cfg), "--force", "--set", "task.instruction=Label it.")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "prompts: finished in" in out and "task.instruction:" in out
    assert "distill run --force" in out


def test_secret_values_are_masked_and_env_names_shown():
    old = {"teacher": {"engine_kwargs": {"hf_token": "hf_abc"},
                       "endpoint": {"api_key_env": "OPENAI_API_KEY", "base_url": "u"}}}
    new = {"teacher": {"engine_kwargs": {"hf_token": "hf_xyz"},
                       "endpoint": {"api_key_env": "OTHER_KEY", "base_url": "u"}}}
    lines = [stale.describe(c) for c in stale.changes(old, new)]
    assert lines == ['teacher.endpoint.api_key_env: "OPENAI_API_KEY" -> "OTHER_KEY"',
                     "teacher.engine_kwargs.hf_token: *** -> ***"]
    assert not any("hf_abc" in x or "hf_xyz" in x for x in lines)


def test_a_key_new_to_the_schema_is_not_a_change_but_a_new_mapping_entry_is():
    old = {"eval": {"bootstrap": 1000}, "teacher": {"engine_kwargs": {}, "endpoint": None}}
    new = {"eval": {"bootstrap": 1000, "forgetting_items": 100},
           "teacher": {"engine_kwargs": {"max_num_seqs": 8}, "endpoint": {"base_url": "u"}}}
    assert [c[0] for c in stale.changes(old, new)] == ["teacher.endpoint.base_url",
                                                       "teacher.engine_kwargs.max_num_seqs"]


def test_a_key_new_to_the_schema_set_to_other_than_its_default_is_a_change():
    # A run made before `prune` existed, resumed with prune.layers=10: SFT must not be reused.
    old = {"eval": {"bootstrap": 1000}}
    new = {"eval": {"bootstrap": 1000}, "prune": {"layers": 10, "samples": 64}}
    assert stale.changes(old, new) == [("prune.layers", None, 10)]
    assert stale.changes(old, {**new, "prune": {"layers": 0, "samples": 64}}) == []


def test_a_stage_built_on_an_earlier_stage_that_ran_again_is_stale(tmp_path):
    """`distill train sft --force` after DPO finished: DPO was built on the old adapter. Same
    config, so only the finish times tell; the CLI refuses to reuse it (exit 2, both times
    named) until --force. The teacher check is a gate (nothing reads its output): running it
    again leaves later stages valid."""
    cfg = _config(tmp_path)
    run = Run(load_config(cfg))
    for name in ("check", "curate", "pairs"):
        with run.stage(name):
            pass
    curate, pairs = stage_by_name("curate"), stage_by_name("pairs")
    assert stale_changes(run, pairs) == []

    run.manifest["stages"]["check"]["finished"] = "2999-01-01T00:00:00+00:00"
    run.save()
    assert stale_changes(run, pairs) == []
    run.manifest["stages"]["curate"]["finished"] = "2999-01-01T00:00:00+00:00"
    run.save()
    assert stale_changes(run, curate) == []
    finished = run.finished("pairs")
    assert stale_changes(run, pairs) == [
        ("curate (finished again after pairs)", finished, "2999-01-01T00:00:00+00:00")]

    res = _cli("pairs", str(cfg))
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "pairs: finished in" in out
    assert "- curate ran again (2999-01-01T00:00:00+00:00) after pairs finished" in out
    assert "distill pairs --force" in out
