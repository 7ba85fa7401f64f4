"""Every path a stage reads or writes inside a run directory, named once.

Stages never spell a run-dir path themselves: `RunPaths(run_dir).test_prompts` is the held-out
set wherever it is read (curate, eval, bench, refresh), so the layout can change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ADAPTER_MARKER = "adapter_config.json"  # a saved PEFT adapter always has it
TRAIN_STAGES = ("sft", "dpo")
# Stages whose output does not depend on the training seed: run once, read by every seed.
# Any other stage (training, export, eval) runs once per seed.
SHARED_STAGES = ("prompts", "check", "generate", "curate", "pairs", "prune", "bench", "report")
# Eval contenders that no training seed touches: their answers are asked once, at seed 0's path.
SHARED_CONTENDERS = ("teacher", "student_base")


@dataclass(frozen=True)
class RunPaths:
    root: Path
    seed: int = 0  # index of the training seed (0: the paths of a single-seed run)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def seed_root(self) -> Path:
        """Where this seed's per-seed stages write: the run dir itself for seed 0."""
        return self.root if self.seed == 0 else self.seeds_dir / str(self.seed)

    @property
    def seeds_dir(self) -> Path:
        return self.root / "seeds"

    def stage(self, name: str) -> Path:
        return (self.root if name in SHARED_STAGES else self.seed_root) / name

    # --- run -----------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def library_log(self) -> Path:
        """What Ray, vLLM and the training libraries log (the console only with --verbose)."""
        return self.root / "logs" / "libraries.log"

    @property
    def jobs(self) -> Path:
        """Configs of jobs submitted to a cluster, one YAML per submission."""
        return self.root / "jobs"

    # --- prompts ---------------------------------------------------------------------------------
    @property
    def train_prompts(self) -> Path:
        return self.root / "prompts" / "train.parquet"

    @property
    def test_prompts(self) -> Path:
        """The held-out set: read by eval, bench and decontamination, never by training."""
        return self.root / "prompts" / "test.parquet"

    @property
    def bad_rows(self) -> Path:
        return self.root / "prompts" / "bad_rows.jsonl"

    # --- check (the teacher and the data, before generating at scale) ----------------------------
    @property
    def teacher_check(self) -> Path:
        """The teacher's score on a gold sample of training prompts, against trivial baselines."""
        return self.root / "check" / "teacher_check.json"

    # --- generate --------------------------------------------------------------------------------
    @property
    def generate_shards(self) -> Path:
        return self.root / "generate" / "shards"

    @property
    def generate_shard_errors(self) -> Path:
        return self.root / "generate" / "errors"

    @property
    def generate_errors(self) -> Path:
        return self.root / "generate" / "errors.jsonl"

    # --- curate and pairs ------------------------------------------------------------------------
    @property
    def curated(self) -> Path:
        return self.root / "curate" / "train.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "curate" / "rejects.parquet"

    @property
    def judge_scores(self) -> Path:
        """The pointwise judge's scores by (example_id, completion): curate writes what it
        asks, pairs reuses them (distill/curation/scorers.py JudgeCache)."""
        return self.root / "curate" / "judge_scores.jsonl"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs" / "pairs.parquet"

    @property
    def policy_pairs(self) -> Path:
        """On-policy pairs (`pairs.on_policy`): the curated target over this seed's SFT
        student's own samples; per seed, as the SFT adapter they come from."""
        return self.stage("policy_pairs") / "pairs.parquet"

    @property
    def policy_samples(self) -> Path:
        """The SFT student's samples behind the on-policy pairs, with their scores."""
        return self.stage("policy_pairs") / "samples.parquet"

    def dpo_pairs(self, on_policy: bool) -> Path:
        """The pairs DPO trains on."""
        return self.policy_pairs if on_policy else self.pairs

    @property
    def dedup_index(self) -> Path:
        return self.root / "dedup_index"

    # --- training ----------------------------------------------------------------------------------
    @property
    def pruned_student(self) -> Path:
        """The student with `prune.layers` decoder layers removed: every seed's training base."""
        return self.root / "prune" / "model"

    @property
    def prune_plot(self) -> Path:
        return self.root / "prune" / "block_scores.png"

    def adapter(self, stage: str) -> Path:
        return self.stage(stage) / "adapter"

    def checkpoints(self, stage: str) -> Path:
        return self.stage(stage) / "checkpoints"

    def train_metrics(self, stage: str) -> Path:
        return self.stage(stage) / "metrics.jsonl"

    def train_summary(self, stage: str) -> Path:
        return self.stage(stage) / "summary.json"

    def finished_adapter(self, stage: str) -> Path | None:
        """The stage's adapter folder if training finished writing it, else None."""
        folder = self.adapter(stage)
        done = (folder / ADAPTER_MARKER).is_file() and any(folder.glob("adapter_model.*"))
        return folder if done else None

    def final_adapter(self) -> Path | None:
        """The adapter that ships: DPO's if it exists, else SFT's."""
        for stage in reversed(TRAIN_STAGES):
            if (found := self.finished_adapter(stage)) is not None:
                return found
        return None

    # --- export ----------------------------------------------------------------------------------
    @property
    def export_summary(self) -> Path:
        return self.stage("export") / "export.json"

    @property
    def export_merged(self) -> Path:
        return self.stage("export") / "merged"

    def merged(self, stage: str) -> Path:
        """A tuned student merged into its base for serving (cached per training stage)."""
        return self.seed_root / "merged" / stage

    # --- eval, bench, report ---------------------------------------------------------------------
    @property
    def eval_results(self) -> Path:
        return self.stage("eval") / "results.json"

    @property
    def eval_predictions(self) -> Path:
        return self.stage("eval") / "predictions.parquet"

    def eval_answers(self, contender: str) -> Path:
        """A contender's saved answers; the teacher's and base student's are seed 0's for
        every seed (no training seed changes them), so they are asked once."""
        where = self.root if contender in SHARED_CONTENDERS else self.seed_root
        return where / "eval" / f"answers_{contender}.json"

    def eval_judge(self, contender: str) -> Path:
        """The pairwise judge's prompts and raw verdicts for one student (one line each)."""
        return self.stage("eval") / "judge" / f"{contender}.jsonl"

    @property
    def bench_results(self) -> Path:
        return self.root / "bench" / "results.json"

    def bench_measured(self, contender: str) -> Path:
        """One contender's latency measurement, saved by eval on the server it answered with
        (or by bench), reused by bench when made under the same settings."""
        return self.root / "bench" / "measured" / f"{contender}.json"

    def server_log(self, name: str) -> Path:
        return self.root / "bench" / f"vllm_{name}.log"

    # --- serve, drift (after the run, on the first run's dir) -------------------------------------
    @property
    def traffic(self) -> Path:
        """Captured live traffic: Parquet shards written by `distill serve` (opt-in)."""
        return self.root / "traffic"

    @property
    def serve_log(self) -> Path:
        return self.root / "serve" / "vllm.log"

    @property
    def drift_dir(self) -> Path:
        return self.root / "drift"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_json(self) -> Path:
        return self.root / "report" / "report.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report" / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report" / "report.md"
