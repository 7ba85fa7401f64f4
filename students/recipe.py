"""What SFT, DPO and OPD share: the job description that travels to workers, training
arguments, checkpoints and resume, and running a job here or on N Ray Train workers.

A job is plain data (the resolved config and paths), so one function trains in this process
and, unchanged, inside every worker of a Ray Train `TorchTrainer`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig, TrainConfig
from distill.core.io import write_json_atomic
from distill.core.ray_init import ensure_ray
from distill.core.rundir import Run

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class TrainJob:
    stage: str  # "sft" | "dpo" | "opd"
    config: dict  # RunConfig.resolved()
    run_dir: str
    base_path: str  # the student's base model folder (or hub id)
    data_path: str
    data_sha256: str
    init_adapter: str | None = None  # DPO starts from the SFT adapter
    tags: dict | None = None  # distill.core.rundir.run_tags: provenance for the model card
    seed_index: int = 0  # which training seed (eval.seeds): its paths and its trainer seed
    teacher_path: str | None = None  # OPD: the teacher's weights, loaded next to the student
    teacher_url: str | None = None  # OPD, teacher_scoring: server: the scoring server's root URL
    cross_tokenizer: bool = False  # OPD: the teacher's tokenizer differs (TRL's GOLD)

    @property
    def train_seed(self) -> int:
        """The trainer's seed (LoRA init, shuffling, dropout): `seed + k` for seed k. The
        held-out split of the training data stays on `seed`: every seed sees the same data."""
        return self.cfg.seed + self.seed_index

    @property
    def cfg(self) -> RunConfig:
        return RunConfig.model_validate(self.config)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.run_dir), seed=self.seed_index)

    @property
    def stage_dir(self) -> Path:
        return self.paths.stage(self.stage)

    @property
    def checkpoints(self) -> Path:
        return self.paths.checkpoints(self.stage)

    @property
    def adapter_dir(self) -> Path:
        return self.paths.adapter(self.stage)

    @property
    def metrics_path(self) -> Path:
        return self.paths.train_metrics(self.stage)

    @property
    def summary_path(self) -> Path:
        return self.paths.train_summary(self.stage)

    def train_cfg(self) -> TrainConfig:
        return getattr(self.cfg, self.stage)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint. trainer_state.json is written last, so a checkpoint
    without it was cut short by a kill and is skipped."""
    if not folder.is_dir():
        return None
    done = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").is_file()
    ]
    return max(done)[1] if done else None


def checkpoint_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside distributed training."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def report_to() -> list[str]:
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def common_args(job: TrainJob, train: TrainConfig, precision: dict[str, Any],
                batch: dict[str, int]) -> dict[str, Any]:
    """TrainingArguments shared by the SFT, DPO and distillation configs of TRL; `batch`: rows
    per forward and accumulation (`students.memory.batch_args`)."""
    if report_to():
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(job.stage_dir / "tensorboard"))
    return {
        "output_dir": str(job.checkpoints),
        "num_train_epochs": train.epochs,
        "max_steps": train.max_steps,
        **batch,
        "learning_rate": train.learning_rate,
        "warmup_steps": train.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "lr_scheduler_type": train.lr_scheduler,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        "logging_steps": train.logging_steps,
        "eval_strategy": "no",  # held-out loss is measured before and after training
        "gradient_checkpointing": train.gradient_checkpointing,
        # LoRA under DDP: every adapter weight is used, and re-entrant checkpointing breaks DDP.
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "ddp_find_unused_parameters": False,
        "report_to": report_to(),
        "seed": job.train_seed,
        "data_seed": job.train_seed,
        "dataloader_num_workers": 0,
        **precision,
    }


def set_threads(cpus: float) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs the worker was given."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(cpus)))


# --- running a job --------------------------------------------------------------------------


Worker = Callable[[TrainJob], dict]  # a stage's `train_worker`: trains, writes the summary


def _ray_worker(worker: Worker, payload: dict) -> None:
    job = TrainJob(**payload)
    set_threads(job.train_cfg().cpus_per_worker)
    worker(job)


def run_job(run: Run, job: TrainJob, worker: Worker) -> dict:
    """Run `worker(job)` here (workers: 1) or on N Ray Train workers; returns the rank-0
    summary."""
    train = job.train_cfg()
    if job.summary_path.exists():
        job.summary_path.unlink()
    if train.workers <= 1:
        worker(job)
    else:
        _run_on_ray(run, job, train, worker)
    if not job.summary_path.is_file():
        raise RuntimeError(f"{job.stage}: training ended without writing {job.summary_path}")
    return json.loads(job.summary_path.read_text())


def _run_on_ray(run: Run, job: TrainJob, train: TrainConfig, worker: Worker) -> None:
    import torch
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(run.cfg)
    use_gpu = torch.cuda.is_available()
    resources = {"CPU": train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        partial(_ray_worker, worker),
        train_loop_config=asdict(job),
        scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        # Checkpoints and metrics go to the run dir from inside the workers (transformers'
        # own checkpointing, so resume works the same with 1 or N workers); Ray's storage
        # holds only its bookkeeping. Across nodes the run dir must be shared storage.
        run_config=RayRunConfig(name=f"{job.stage}-{run.run_id}",
                                storage_path=str((job.stage_dir / "ray").resolve())),
    )
    trainer.fit()


def write_summary(job: TrainJob, summary: dict) -> None:
    rank, _ = world()
    if rank == 0:
        write_json_atomic(job.summary_path, summary)
