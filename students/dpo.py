"""DPO stage: preference tuning of the SFT adapter with TRL's DPOTrainer.

The policy is the base model with the SFT adapter, trainable. The reference is the same model
with a frozen copy of that adapter (TRL's "ref" adapter), so no second full model is loaded.
Reads `pairs/pairs.parquet` (or `policy_pairs/pairs.parquet` with `pairs.on_policy`);
writes `dpo/checkpoints/`, `dpo/adapter/`, `dpo/metrics.jsonl`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from distill.core.errors import StageNotReadyError
from distill.core.io import file_sha256, read_json
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


console = Console()

def run_dpo(run: Run) -> dict:
    cfg = run.cfg
    if not cfg.dpo.enabled:
        return {"skipped": True}
    pairs_path = run.paths.dpo_pairs(cfg.pairs.on_policy)
    if pairs_path.is_file() and data.row_count(pairs_path) == 0:
        # A weak judge can tie every pair: say so and go on with the SFT student, rather than
        # stop the run before eval and the report.
        reason = (f"no preference pairs in {pairs_path} (every pair tied or fell below "
                  "pairs.min_margin: see the pairs summary); the SFT student is the final one")
        console.print(f"[yellow]dpo skipped: {reason}[/yellow]")
        return {"skipped": True, "reason": reason}
    data.read_table(pairs_path, data.DPO_COLUMNS, "pairs")
    sft_adapter = run.paths.finished_adapter("sft")
    if sft_adapter is None:
        raise StageNotReadyError(f"{run.paths.adapter('sft')} not found: run the sft stage first")
    base = training_base(cfg, run.paths)
    job = TrainJob(
        stage="dpo",
        config=cfg.resolved(),
        run_dir=str(run.dir),
        base_path=base.path,
        data_path=str(pairs_path),
        data_sha256=file_sha256(pairs_path),
        tags=run_tags(run),
        seed_index=run.seed_index,
        init_adapter=str(sft_adapter),
    )
    summary = run_job(run, job, train_worker)
    run.record_model("student", {**base.to_manifest(), "adapter": str(job.adapter_dir),
                                 "stage": "dpo"})
    return summary


def trl_args(job: TrainJob, where: modeling.Placement, longest: int):
    """`longest`: tokens of the longest prompt + answer (the micro-batch is chosen from it)."""
    from trl import DPOConfig as TrlDPOConfig

    cfg = job.cfg
    # TRL runs a pair's chosen and rejected rows in one forward: two sequences per row.
    batch = memory.batch_args(cfg.dpo, longest, sequences=2, on_gpu=where.on_gpu)
    return TrlDPOConfig(
        **common_args(job, cfg.dpo, modeling.precision_args(where), batch),
        max_length=cfg.student.max_seq_len,
        beta=cfg.dpo.beta,
        loss_type=[t.strip() for t in cfg.dpo.loss_type.split(",")],
        precompute_ref_log_probs=cfg.dpo.precompute_ref,
    )


def train_worker(job: TrainJob) -> dict:
    from peft import PeftModel
    from trl import DPOTrainer

    from students.callbacks import MetricsLogger, install

    peak = memory.PeakMemory().start()
    cfg = job.cfg
    where = modeling.placement(cfg.student)
    rank, world_size = world()
    tokenizer = modeling.load_tokenizer(job.base_path)
    # SFT's prompt budget: the DPO student is served with the same cut as the SFT student.
    sft_budget = (read_json(job.paths.train_summary("sft")) or {}).get("prompt_budget")
    fitter = training_fitter(cfg, tokenizer, data.answers(Path(job.data_path), "chosen",
                                                          "rejected"), sft_budget)
    pairs = data.dpo_records(Path(job.data_path), cfg.task, fitter)
    longest = memory.longest_chat(
        tokenizer, [p["prompt"] + p[side] for p in pairs for side in ("chosen", "rejected")],
        cfg.student.max_seq_len)
    args = trl_args(job, where, longest)
    base = modeling.load_base(job.base_path, cfg.student, where)
    policy = PeftModel.from_pretrained(base, job.init_adapter, is_trainable=True)
    trainer = DPOTrainer(
        model=policy,
        ref_model=None,  # TRL copies the starting adapter to a frozen "ref" adapter
        args=args,
        train_dataset=data.to_dataset(pairs),
        processing_class=tokenizer,
    )
    modeling.keep_adapter_dtype(trainer.model, where)
    logger = MetricsLogger(job.metrics_path, "dpo", world_size)
    install(trainer, logger)

    resume = last_checkpoint(job.checkpoints) if cfg.dpo.resume else None
    # Read now: checkpoint rotation may delete this folder during training.
    resumed_from = checkpoint_step(resume) if resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start

    tokens = getattr(trainer, "_total_train_tokens", None) or logger.last_tokens or 0
    summary = {
        **fitter.summary(len(pairs)),
        "train_loss": round(result.training_loss, 4),
        **_reward_trend(trainer.state.log_history),
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "pairs": len(pairs),
        "pairs_from": "on_policy" if cfg.pairs.on_policy else "teacher",
        "train_tokens": int(tokens),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
        "world_size": world_size,
        "device": where.device.split(":")[0],
        "dtype": where.dtype_name,
        "quantization": cfg.student.quantization,
        "beta": cfg.dpo.beta,
        "loss_type": cfg.dpo.loss_type,
        **memory.batch_summary(longest, args),
        **peak.summary(),
        "adapter": str(job.adapter_dir),
    }
    if rank == 0:
        # Only the trained "default" adapter is the result; "ref" was the frozen reference.
        trainer.model.save_pretrained(str(job.adapter_dir), selected_adapters=["default"])
        tokenizer.save_pretrained(str(job.adapter_dir))
        card.write_card(job.adapter_dir, stage="dpo", base_model=cfg.student.model,
                        base_path=job.base_path,
                        dataset=os.path.relpath(job.data_path, job.run_dir),
                        dataset_sha256=job.data_sha256, config=job.config, metrics=summary,
                        tags=job.tags, parent=job.init_adapter)
    write_summary(job, summary)
    return summary


def _reward_trend(history: list[dict]) -> dict:
    """Reward margin and accuracy at the first vs the last logged steps of training (the first
    log is taken before many updates, when policy and reference nearly agree)."""
    logs = [h for h in history if "rewards/margins" in h]
    if not logs:
        return {}
    last = logs[-2:] if len(logs) > 2 else logs[-1:]
    mean = lambda key, rows: round(sum(r[key] for r in rows) / len(rows), 4)  # noqa: E731
    return {
        "reward_margin_first": round(logs[0]["rewards/margins"], 4),
        "reward_margin_last": mean("rewards/margins", last),
        "reward_accuracy_first": round(logs[0]["rewards/accuracies"], 4),
        "reward_accuracy_last": mean("rewards/accuracies", last),
        "first_step": logs[0].get("step"),
        "last_step": logs[-1].get("step"),
    }
