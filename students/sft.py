"""SFT stage: QLoRA (or LoRA) supervised fine-tuning of the student with TRL's SFTTrainer.

Reads `curate/train.parquet`, trains on prompt-completion chats (the loss is on the completion
only), checkpoints to `sft/checkpoints/` and resumes from there, writes the adapter with its
model card to `sft/adapter/` and metrics to `sft/metrics.jsonl`.
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.core.io import file_sha256
from distill.core.rundir import Run, run_tags
from students import card, data, memory, modeling
from students.fit import training_fitter
from students.modeling import training_base
from students.recipe import (
    TrainJob,
    checkpoint_step,
    common_args,
    last_checkpoint,
    run_job,
    world,
    write_summary,
)


def run_sft(run: Run) -> dict:
    cfg = run.cfg
    if not cfg.sft.enabled:
        return {"skipped": True}
    train_path = run.paths.curated
    data.read_table(train_path, data.SFT_COLUMNS, "curate")  # fail fast, before any worker starts
    base = training_base(cfg, run.paths)
    job = TrainJob(
        stage="sft",
        config=cfg.resolved(),
        run_dir=str(run.dir),
        base_path=base.path,
        data_path=str(train_path),
        data_sha256=file_sha256(train_path),
        tags=run_tags(run),
        seed_index=run.seed_index,
    )
    summary = run_job(run, job, train_worker)
    run.record_model("student", {**base.to_manifest(), "adapter": str(job.adapter_dir),
                                 "stage": "sft"})
    return summary


def trl_args(job: TrainJob, where: modeling.Placement, longest: int):
    """`longest`: tokens of the longest training row (the micro-batch is chosen from it)."""
    from trl import SFTConfig as TrlSFTConfig

    cfg = job.cfg
    sft = cfg.sft
    # Packed rows are max_seq_len blocks, whatever the examples' lengths.
    rows = cfg.student.max_seq_len if sft.packing else longest
    batch = memory.batch_args(sft, rows, on_gpu=where.on_gpu)
    return TrlSFTConfig(
        **common_args(job, sft, modeling.precision_args(where), batch),
        **_sampling(sft.group_by_length and not sft.packing),
        max_length=cfg.student.max_seq_len,
        packing=sft.packing,
        packing_strategy=sft.packing_strategy,
        completion_only_loss=True,
        dataset_num_proc=None,
    )


def _sampling(by_length: bool) -> dict:
    """Length-grouped batches pad less. transformers renamed the switch; accept both."""
    from dataclasses import fields

    from transformers import TrainingArguments

    if "train_sampling_strategy" in {f.name for f in fields(TrainingArguments)}:
        return {"train_sampling_strategy": "group_by_length" if by_length else "random"}
    return {"group_by_length": by_length}


def train_worker(job: TrainJob) -> dict:
    """Train on this process (the whole job, or one Ray Train worker's share of it)."""
    from trl import SFTTrainer

    from students.callbacks import MetricsLogger, install

    peak = memory.PeakMemory().start()
    cfg = job.cfg
    where = modeling.placement(cfg.student)
    rank, world_size = world()
    tokenizer = modeling.load_tokenizer(job.base_path)
    fitter = training_fitter(cfg, tokenizer, data.answers(Path(job.data_path), "target"))
    records = data.sft_records(Path(job.data_path), cfg.task, fitter)
    train_rows, val_rows = data.split(records, cfg.sft.val_fraction, cfg.seed)
    longest = memory.longest_chat(tokenizer, [r["prompt"] + r["completion"] for r in records],
                                  cfg.student.max_seq_len)
    args = trl_args(job, where, longest)
    model = modeling.load_base(job.base_path, cfg.student, where)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.to_dataset(train_rows),
        eval_dataset=data.to_dataset(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.student),
    )
    modeling.keep_adapter_dtype(trainer.model, where)
    logger = MetricsLogger(job.metrics_path, "sft", world_size)
    install(trainer, logger)

    resume = last_checkpoint(job.checkpoints) if cfg.sft.resume else None
    # Read now: checkpoint rotation may delete this folder during training.
    resumed_from = checkpoint_step(resume) if resume else None
    eval_before = _eval_loss(trainer) if val_rows and resume is None else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    eval_after = _eval_loss(trainer) if val_rows else None

    tokens = getattr(trainer, "_total_train_tokens", None) or logger.last_tokens or 0
    summary = {
        "train_loss": round(result.training_loss, 4),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        **fitter.summary(len(records)),
        "train_tokens": int(tokens),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
        "world_size": world_size,
        "device": where.device.split(":")[0],
        "dtype": where.dtype_name,
        "quantization": cfg.student.quantization,
        "packing": cfg.sft.packing,
        **memory.batch_summary(longest, args),
        **peak.summary(),
        "adapter": str(job.adapter_dir),
    }
    if rank == 0:
        trainer.save_model(str(job.adapter_dir))
        tokenizer.save_pretrained(str(job.adapter_dir))
        card.write_card(job.adapter_dir, stage="sft", base_model=cfg.student.model,
                        base_path=job.base_path, dataset="curate/train.parquet",
                        dataset_sha256=job.data_sha256, config=job.config, metrics=summary,
                        tags=job.tags)
    write_summary(job, summary)
    return summary


def _eval_loss(trainer) -> float:
    return round(trainer.evaluate()["eval_loss"], 4)
