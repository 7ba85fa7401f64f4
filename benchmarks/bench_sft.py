"""SFT throughput and memory: our SFT stage vs a minimal plain-TRL script, in one run.

    python benchmarks/bench_sft.py                       # CPU, the packaged SmolLM2-135M
    python benchmarks/bench_sft.py --random-llama 1b     # GPU: a larger llama, random weights

Every arm runs in its own subprocess (clean peak-memory figures) on the same model, data and
settings (LoRA r/alpha/targets, 4-bit nf4 + double quant, batch size, steps, learning rate,
max length, gradient checkpointing). Throughput is real (non-padding) training tokens per
second of `trainer.train()` wall time, as counted by TRL's own `num_tokens`.

Arms:
  plain       SFTTrainer + peft LoraConfig + BitsAndBytesConfig, TRL defaults otherwise
  ours        distill's SFT stage (students.sft.run_sft), packing off
  ours_pack   distill's SFT stage, packing on (bfd, padding-free)
  ours_16bit  distill's SFT stage, plain LoRA on the 16-bit base (training peak memory)
  load_4bit / load_16bit   load the base only; peak memory of 4-bit vs 16-bit loading
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_runner  # noqa: E402  (benchmarks/arm_runner.py)
sys.path.insert(0, str(ROOT))

WORDS = ("the film story acting cast plot scene music camera director script pace humour drama "
         "ending characters dialogue visual effects performance moment audience screen tone "
         "heart charm sequel action comedy thriller romance twist mood lead role").split()

LLAMA_SIZES = {
    # hidden, intermediate, layers, heads, kv heads  (vocab: the SmolLM2 tokenizer's 49152)
    "1b": (2048, 5632, 22, 32, 4),
    "360m": (960, 2560, 32, 15, 5),
}


def make_rows(n: int, seed: int, max_words: int) -> list[dict]:
    """Reviews of very uneven length (log-normal word counts), as real data has: that is where
    padding costs, and where packing or length grouping pays."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = int(min(max_words, max(4, rng.lognormvariate(3.2, 0.8))))
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        label = "positive" if i % 2 == 0 else "negative"
        rows.append({"example_id": f"ex{i:05d}", "text": f"{text} ({i})", "label": label,
                     "target": label})
    return rows


def write_run(run_dir: Path, args, rows: list[dict], packing: bool, quantization: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    path = run_dir / "curate" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({k: [r[k] for r in rows] for k in ("example_id", "text", "label", "target")})
    pq.write_table(table, path)
    cfg = {
        "run_name": "bench-sft",
        "output_dir": str(run_dir),
        "task": {"name": "sentiment", "labels": ["positive", "negative"],
                 "instruction": "Classify the sentiment of the review.",
                 "student_instruction": "Sentiment (positive/negative):"},
        "teacher": {"model": "packaged:qwen2.5-coder-0.5b-instruct"},
        "student": {"model": args.model, "quantization": quantization,
                    "max_seq_len": args.max_seq_len,
                    "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0,
                             "target_modules": "all-linear"}},
        "sft": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 2e-4,
                "warmup_ratio": 0.0, "save_steps": 10**6, "logging_steps": max(1, args.steps // 4),
                "val_fraction": 0.0, "packing": packing, "resume": False,
                "gradient_checkpointing": args.gradient_checkpointing},
    }
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


def peak_mb() -> dict:
    import torch

    from students.memory import own_peak_rss_mb

    out = {"peak_rss_mb": round(own_peak_rss_mb(), 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


# --- arms (each runs in its own process) ----------------------------------------------------


def arm_plain(args, rows) -> dict:
    """What a user writes from TRL's docs: no distill code at all."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_path, dtype=dtype, device_map={"": "cuda:0" if gpu else "cpu"},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype),
    )
    instruction = "Sentiment (positive/negative):"
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{instruction}\n\n{r['text']}"}],
         "completion": [{"role": "assistant", "content": r["target"]}]}
        for r in rows
    ])
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=out, max_length=args.max_seq_len, max_steps=args.steps,
                           per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
                           logging_steps=max(1, args.steps // 4), save_strategy="no",
                           report_to="none", seed=0, bf16=gpu, use_cpu=not gpu,
                           gradient_checkpointing=args.gradient_checkpointing),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                   target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = trainer._total_train_tokens
    return {"tokens": int(tokens), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), **peak_mb()}


def arm_ours(args, rows, packing: bool, quantization: str = "nf4") -> dict:
    from distill.core.config import load_config
    from distill.core.rundir import Run
    from students.sft import run_sft

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = write_run(Path(tmp), args, rows, packing=packing, quantization=quantization)
        summary = run_sft(Run(load_config(cfg_path)))
    return {"tokens": summary["train_tokens"], "seconds": summary["seconds"],
            "tokens_per_s": summary["tokens_per_s"], **peak_mb()}


def arm_load(args, bits: int) -> dict:
    import torch

    from distill.core.config import StudentConfig
    from students import modeling

    gpu = torch.cuda.is_available()
    student = StudentConfig(model=args.model, quantization="nf4" if bits == 4 else "none",
                            dtype="bfloat16")
    before = peak_mb()
    model = modeling.load_base(args.model_path, student)
    x = torch.randint(0, 1000, (1, 32), device=model.device)
    with torch.no_grad():
        model(input_ids=x)
    after = peak_mb()
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed loader buffers back to the OS
    # Peak RSS includes the transient full-precision copy the 4-bit loader quantizes from;
    # the resident size after loading is what the model costs while it trains.
    out = {"peak_rss_mb": after["peak_rss_mb"], "rss_before_mb": before["peak_rss_mb"],
           "rss_after_load_mb": _current_rss_mb(),
           "weights_mb": round(model.get_memory_footprint() / 2**20, 1)}
    if gpu:
        out["peak_gpu_mb"] = after["peak_gpu_mb"]
    return out


# --- driver ---------------------------------------------------------------------------------


def build_random_llama(size: str, tokenizer_dir: Path, out: Path) -> Path:
    """A llama-architecture student with random weights: enough for throughput and memory,
    meaningless for quality."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = LLAMA_SIZES[size]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_arm(name: str, argv: list[str]) -> dict:
    return arm_runner.run_arm(__file__, name, argv, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="packaged:smollm2-135m-instruct")
    p.add_argument("--random-llama", choices=sorted(LLAMA_SIZES), default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for --random-llama")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--max-words", type=int, default=150)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--arms", default="plain,ours,ours_pack,load_4bit,load_16bit")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.arm:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        rows = make_rows(args.examples, 0, args.max_words)
        result = {
            "plain": lambda: arm_plain(args, rows),
            "ours": lambda: arm_ours(args, rows, packing=False),
            "ours_pack": lambda: arm_ours(args, rows, packing=True),
            "ours_16bit": lambda: arm_ours(args, rows, packing=False, quantization="none"),
            "load_4bit": lambda: arm_load(args, 4),
            "load_16bit": lambda: arm_load(args, 16),
        }[args.arm]()
        print("ARM_RESULT " + json.dumps(result), flush=True)
        return

    import torch

    from distill.core.models import resolve

    with tempfile.TemporaryDirectory() as tmp:
        if args.random_llama:
            tok = Path(args.tokenizer or resolve("packaged:smollm2-135m-instruct").path)
            model_path = build_random_llama(args.random_llama, tok, Path(tmp) / "student")
            args.model = str(model_path)
            label = f"random-init llama {args.random_llama} ({model_path.name})"
        else:
            model_path = Path(resolve(args.model).path)
            label = args.model
        argv = _drop(sys.argv[1:], ("--json", "--arms", "--model", "--random-llama", "--tokenizer"))
        argv += ["--model", args.model, "--model-path", str(model_path)]
        results = {}
        for arm in args.arms.split(","):
            started = time.perf_counter()
            results[arm] = run_arm(arm, argv)
            results[arm]["wall_s"] = round(time.perf_counter() - started, 1)
            print(f"{arm:>11}: {json.dumps(results[arm])}", flush=True)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "device": device,
        "model": label,
        "torch": torch.__version__,
        "settings": {k: getattr(args, k) for k in ("examples", "steps", "batch_size", "max_seq_len",
                                                   "lora_r", "gradient_checkpointing")},
        "arms": results,
    }
    plain = results.get("plain", {}).get("tokens_per_s")
    print(f"\ndevice: {device}   model: {label}")
    for arm in ("plain", "ours", "ours_pack"):
        if arm in results:
            tps = results[arm]["tokens_per_s"]
            ratio = f"  {tps / plain:.2f}x plain" if plain else ""
            print(f"  {arm:>10}: {tps:10.1f} tokens/s{ratio}")
            if plain:
                report.setdefault("ratios", {})[arm] = round(tps / plain, 3)
    mem = "peak_gpu_mb" if torch.cuda.is_available() else "peak_rss_mb"
    if "load_4bit" in results and "load_16bit" in results:
        four, sixteen = results["load_4bit"][mem], results["load_16bit"][mem]
        print(f"  peak {mem} after loading: 4-bit {four:.0f}  16-bit {sixteen:.0f}  "
              f"({sixteen / four:.2f}x)")
        if not torch.cuda.is_available():
            four, sixteen = (results[k]["rss_after_load_mb"] for k in ("load_4bit", "load_16bit"))
            print(f"  resident RSS after loading: 4-bit {four:.0f}  16-bit {sixteen:.0f}  "
                  f"({sixteen / four:.2f}x)")
        four, sixteen = (results[k]["weights_mb"] for k in ("load_4bit", "load_16bit"))
        print(f"  weights (get_memory_footprint): 4-bit {four:.0f}  16-bit {sixteen:.0f}  "
              f"({sixteen / four:.2f}x)")
    if "ours" in results and "ours_16bit" in results:
        four, sixteen = results["ours"][mem], results["ours_16bit"][mem]
        print(f"  peak {mem} while training (LoRA): 4-bit base {four:.0f}  16-bit base "
              f"{sixteen:.0f}  ({sixteen / four:.2f}x)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


def _drop(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Remove options (and their values) the driver handles itself."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
