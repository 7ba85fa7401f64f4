"""Training memory on long inputs: peak RSS of the SFT stage with and without the micro-batch
bound (`<stage>.micro_batch_tokens`), in one run.

    python benchmarks/bench_memory.py                  # 135M student, batch 8, max_seq_len 512

Every arm is the SFT stage (students.sft.run_sft) in its own subprocess on the same data and
seed: news-like rows long enough that every training row is cut to max_seq_len (512 tokens),
QLoRA nf4, LoRA r=16 on all linear layers, float32 compute, batch 8, a fixed number of steps.

Arms:
  before         micro_batch_tokens: null (the old behaviour: 8 rows x 512 in one forward)
  after_2048     micro_batch_tokens: 2048 (4 rows per forward, 2 accumulated)
  after          the default (auto: 1024 on a CPU; 2 rows per forward, 4 accumulated)
  after_2048_gc  2048 plus gradient_checkpointing (what checkpointing adds on top)

Reported per arm: the stage's peak RSS (summary.json's stage_peak_rss_mb), the arm process's
peak RSS (VmHWM), tokens/s of `trainer.train()`, and the loss of every step (logging_steps 1): the
micro-batched loss is the same quantity (TRL divides by the tokens of the whole accumulated
batch), so the per-step losses of the arms should agree to float rounding.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_runner  # noqa: E402  (benchmarks/arm_runner.py)
sys.path.insert(0, str(ROOT))

# A newswire-like vocabulary: long, varied words (about 1.3 tokens each).
NEWS = ("government minister announced tuesday economy markets inflation central bank interest "
        "rates parliament opposition election campaign voters council budget spending hospital "
        "schools police investigation court ruling appeal company shares profits quarter "
        "investors analysts expected growth unemployment workers union strike negotiations "
        "agreement officials statement spokesperson international summit leaders climate "
        "energy prices households regional authorities infrastructure transport railway "
        "airport construction residents community protest reported according sources "
        "yesterday morning evening percent million billion dollars euros pounds").split()
ARMS = {
    "before": {"micro_batch_tokens": None},
    "after_2048": {"micro_batch_tokens": 2048},
    "after": {},  # the default, auto: 1024 tokens on a CPU
    "after_2048_gc": {"micro_batch_tokens": 2048, "gradient_checkpointing": True},
}


def make_articles(n: int, seed: int, words: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sentences, count = [], 0
        while count < words:
            k = rng.randint(8, 22)
            sentences.append(" ".join(rng.choice(NEWS) for _ in range(k)).capitalize() + ".")
            count += k
        label = ("politics", "business", "society")[i % 3]
        rows.append({"example_id": f"a{i:04d}", "text": " ".join(sentences), "label": label,
                     "target": label})
    return rows


def write_run(run_dir: Path, args, rows: list[dict], sft_extra: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    path = run_dir / "curate" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: [r[k] for r in rows]
                             for k in ("example_id", "text", "label", "target")}), path)
    cfg = {
        "run_name": "bench-memory",
        "output_dir": str(run_dir),
        "task": {"name": "news_topic", "labels": ["politics", "business", "society"],
                 "instruction": "Classify the topic of the article.",
                 "student_instruction": "Topic (politics/business/society):"},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct"},
        "student": {"model": args.model, "quantization": "nf4", "max_seq_len": args.max_seq_len,
                    "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                             "target_modules": "all-linear"}},
        "sft": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 2e-4,
                "warmup_ratio": 0.0, "save_steps": 10**6, "logging_steps": 1,
                "val_fraction": 0.0, "resume": False, **sft_extra},
    }
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


def arm(args, name: str) -> dict:
    from distill.core.config import load_config
    from distill.core.rundir import Run
    from students.callbacks import read_metrics
    from students.memory import own_peak_rss_mb
    from students.sft import run_sft

    rows = make_articles(args.examples, 0, args.words)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(load_config(write_run(Path(tmp), args, rows, ARMS[name])))
        summary = run_sft(run)
        losses = [round(m["loss"], 4) for m in read_metrics(run.dir / "sft" / "metrics.jsonl")
                  if "loss" in m]
    keep = ("stage_peak_rss_mb", "micro_batch", "grad_accum_steps", "longest_row_tokens",
            "train_tokens", "tokens_per_s", "seconds")
    return {**{k: summary.get(k) for k in keep}, "step_losses": losses,
            "arm_peak_rss_mb": round(own_peak_rss_mb(), 1)}


def run_arm(name: str, argv: list[str]) -> dict:
    return arm_runner.run_arm(__file__, name, argv, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="packaged:smollm2-135m-instruct")
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--words", type=int, default=450, help="words per article (before the cut)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--arms", default="before,after_2048,after,after_2048_gc")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        print("ARM_RESULT " + json.dumps(arm(args, args.arm)), flush=True)
        return

    argv = [f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("model", "examples", "words", "steps", "batch_size", "max_seq_len")]
    results = {}
    for name in args.arms.split(","):
        started = time.perf_counter()
        results[name] = {**run_arm(name, argv), "wall_s": round(time.perf_counter() - started, 1)}
        print(f"{name:>9}: {json.dumps(results[name])}", flush=True)
    report = {"settings": {k: getattr(args, k) for k in ("model", "examples", "words", "steps",
                                                         "batch_size", "max_seq_len")},
              "arms": results}
    if "before" in results:
        base = results["before"]
        for name, r in results.items():
            if name == "before":
                continue
            ratio = {"peak_rss": round(r["stage_peak_rss_mb"] / base["stage_peak_rss_mb"], 3),
                     "tokens_per_s": round(r["tokens_per_s"] / base["tokens_per_s"], 3),
                     "max_step_loss_diff": max((abs(a - b) for a, b in
                                                zip(r["step_losses"], base["step_losses"])),
                                               default=None)}
            report.setdefault("vs_before", {})[name] = ratio
            print(f"{name:>9} vs before: {json.dumps(ratio)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
