"""Inputs longer than student.max_seq_len: shortened, never dropped, the answer always in the
loss. Real tokenizer, real TRL dataset preparation (its truncation and its drop of fully
truncated rows are what used to lose half a training set)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from student_data import build_run

from distill.core.messages import text_id
from students import data
from students.fit import load_fitter, training_fitter

WORDS = "the committee said on tuesday that its budget for the coming season would rise".split()


def long_text(i: int, words: int) -> str:
    body = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
    return f"HEAD{i} {body} TAIL{i}"


def write_long_curated(run_dir: Path, n: int = 12) -> Path:
    texts = [long_text(i, 60 if i % 3 == 0 else 400) for i in range(n)]  # 2 in 3 too long
    labels = ["positive" if i % 2 else "negative" for i in range(n)]
    path = run_dir / "curate" / "train.parquet"
    pq.write_table(pa.table({"example_id": [text_id(t) for t in texts], "text": texts,
                             "label": labels, "target": labels,
                             "row_ids": [[f"r{i}"] for i in range(n)],
                             "agreement": [1.0] * n}), path)
    return path


@pytest.mark.parametrize("shorten", ["middle", "end"])
def test_long_inputs_are_cut_to_the_budget_and_short_ones_untouched(tmp_path, shorten):
    run = build_run(tmp_path / "run", student={"shorten": shorten})
    fitter = load_fitter(run.cfg, budget=100)
    budget = 100
    short, long = long_text(1, 10), long_text(2, 400)
    assert fitter.messages(short)[-1]["content"].endswith(short)
    chat = fitter.messages(long)
    assert fitter.prompt_tokens(chat) <= budget < fitter.prompt_tokens(
        [{"role": "user", "content": long}])
    user = chat[-1]["content"]
    assert "Sentiment (positive/negative):" in user and "HEAD2" in user  # instruction, start
    assert ("TAIL2" in user) == (shorten == "middle")  # the middle cut keeps the end too
    assert fitter.shortened == 1 and fitter.longest_cut > 300


def test_several_columns_the_longest_is_cut_the_short_ones_kept_whole(tmp_path):
    from distill.core.messages import encode_input

    run = build_run(tmp_path / "run",
                    task={"template": "{instruction}\n\nTitle: {title}\n\nReview: {body}"})
    fitter = load_fitter(run.cfg, budget=100)
    text = encode_input({"title": "TITLE7 a short title", "body": long_text(7, 400)})
    user = fitter.messages(text)[-1]["content"]
    assert "Title: TITLE7 a short title" in user  # whole
    assert "HEAD7" in user and "TAIL7" in user and " ... " in user  # the body, middle cut
    assert fitter.prompt_tokens(fitter.messages(text)) <= 100 and fitter.shortened == 2
    # Two long columns: the first alone cannot give enough, so the second is cut too.
    both = encode_input({"title": long_text(8, 200), "body": long_text(9, 200)})
    user = fitter.messages(both)[-1]["content"]
    assert user.count(" ... ") == 2 and "HEAD8" in user and "TAIL9" in user
    assert fitter.prompt_tokens(fitter.messages(both)) <= 100


def test_every_long_example_trains_with_its_whole_answer_in_the_loss(tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    run = build_run(tmp_path / "run")
    path = write_long_curated(run.dir)
    tokenizer = load_fitter(run.cfg, None).tokenizer
    fitter = training_fitter(run.cfg, tokenizer, data.answers(path, "target"))
    assert fitter.budget == 128 - 1 - 8  # max_seq_len less the longest answer and its template
    model = AutoModelForCausalLM.from_pretrained(tokenizer.name_or_path)

    def prepared(records):
        args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=run.cfg.student.max_seq_len,
                         completion_only_loss=True, use_cpu=True, bf16=False, report_to=[],
                         dataset_num_proc=None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data.to_dataset(records),
                             processing_class=tokenizer)
        return trainer.train_dataset

    fitted = data.sft_records(path, run.cfg.task, fitter)
    assert fitter.shortened == 8 and len(fitted) == 12
    rows = prepared(fitted)
    assert len(rows) == 12  # none dropped
    answer = len(tokenizer("positive", add_special_tokens=False)["input_ids"])
    for row in rows:
        assert len(row["input_ids"]) <= run.cfg.student.max_seq_len
        in_loss = sum(label != -100 for label in row["labels"])
        assert in_loss >= answer  # the answer (and its end of turn) is in the loss

    # Without the fitter, TRL cuts the long ones from the end and drops them: the old failure.
    plain = prepared(data.sft_records(path, run.cfg.task))
    assert len(plain) == 4
