"""Fast checks of the student stage plumbing (no model loaded)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.core.errors import DataError, StageNotReadyError
from students import data

from students.card import read_card, write_card
from students.recipe import last_checkpoint


def test_disabled_stages_are_skipped(make_run):
    from students.dpo import run_dpo
    from students.sft import run_sft

    run = make_run(sft={"enabled": False}, dpo={"enabled": False})
    assert run_sft(run) == {"skipped": True}
    assert run_dpo(run) == {"skipped": True}


def test_missing_inputs_name_the_stage(make_run):
    from students.dpo import run_dpo
    from students.sft import run_sft

    run = make_run()
    (run.dir / "curate" / "train.parquet").unlink()
    with pytest.raises(StageNotReadyError, match="curate"):
        run_sft(run)
    with pytest.raises(StageNotReadyError, match="pairs"):
        run_dpo(run)


def test_bad_rows_name_file_and_row(tmp_path, make_run):
    run = make_run()
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"example_id": ["a"], "text": ["x"]}), path)
    with pytest.raises(DataError, match=r"bad.parquet: missing column\(s\) target"):
        data.sft_records(path, run.cfg.task)
    pq.write_table(pa.table({"example_id": ["a", "b"], "text": ["x", "y"], "target": ["ok", " "]}),
                   path)
    with pytest.raises(DataError, match=r"row 1 \(example_id=b\): empty target"):
        data.sft_records(path, run.cfg.task)


def test_records_use_student_chat_and_stable_split(make_run):
    run = make_run()
    records = data.sft_records(run.dir / "curate" / "train.parquet", run.cfg.task)
    first = records[0]
    assert first["prompt"][0]["role"] == "user"
    assert first["prompt"][0]["content"].startswith("Sentiment (positive/negative):")
    assert first["completion"] == [{"role": "assistant", "content": "positive"}]
    train, val = data.split(records, 0.2, seed=0)
    train2, val2 = data.split(list(reversed(records)), 0.2, seed=0)
    assert {r["example_id"] for r in val} == {r["example_id"] for r in val2}
    assert len(train) + len(val) == len(records) and val


def test_last_checkpoint_skips_a_half_written_one(tmp_path):
    for step in (3, 6, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (3, 6):  # checkpoint-9 was cut short by a kill: no trainer_state.json
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step}))
    assert last_checkpoint(tmp_path).name == "checkpoint-6"
    assert last_checkpoint(tmp_path / "none") is None


def test_final_adapter_prefers_dpo(make_run):
    run = make_run()
    assert run.paths.final_adapter() is None
    for stage in ("sft", "dpo"):
        folder = run.dir / stage / "adapter"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if stage == "sft":
            assert run.paths.final_adapter() == folder
    assert run.paths.final_adapter() == run.dir / "dpo" / "adapter"


def test_model_card_round_trip(tmp_path, make_run):
    run = make_run()
    write_card(tmp_path, stage="sft", base_model="packaged:smollm2-135m-instruct",
               base_path="/models/x", dataset="curate/train.parquet", dataset_sha256="abc",
               config=run.cfg.resolved(), metrics={"eval_loss_after": 0.1})
    front = read_card(tmp_path)
    assert front["base_model"] == "packaged:smollm2-135m-instruct"
    assert front["distill"]["dataset_sha256"] == "abc"
    text = (tmp_path / "README.md").read_text()
    assert "| eval_loss_after | 0.1 |" in text and '"quantization": "nf4"' in text


def test_progress_bar_keeps_the_trainer_dicts_off_the_console(capsys):
    # transformers' own bar prints every logged dict ("{'loss': ...}") around itself; ours
    # shows loss and tokens/s on the bar, and the dicts only go to metrics.jsonl.
    from transformers import TrainerControl, TrainerState

    from students.callbacks import LossTokensProgress

    bar = LossTokensProgress()
    state = TrainerState(max_steps=4, is_world_process_zero=True)
    bar.on_train_begin(None, state, TrainerControl())
    bar.on_log(None, state, TrainerControl(), logs={"loss": 1.25, "tokens_per_s": 99.0,
                                                    "learning_rate": 2e-4})
    bar.on_step_end(None, state, TrainerControl())
    bar.on_train_end(None, state, TrainerControl())
    out = capsys.readouterr()
    assert "loss=1.2500" in out.err and "tok/s=99" in out.err
    assert "learning_rate" not in out.out + out.err and "{'loss'" not in out.out + out.err
