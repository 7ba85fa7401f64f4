"""SFT throughput and memory: our SFT stage vs a minimal plain-TRL script, in one run.

    python benchmarks/bench_sft.py                       # CPU, the packaged SmolLM2-135M
    python benchmarks/bench_sft.py --random-llama 1b     # GPU: a larger llama, random weights
    python benchmarks/bench_sft.py --random-llama 8b --vocab 128256 --batch-size 8 \
        --max-seq-len 1024 --max-words 900 --examples 1200 --steps 100 --rounds 2 \
        --arms plain,ours,ours_pack --json benchmarks/results/sft_gpu_8b.json   # issue 17's run

Every arm runs in its own subprocess (clean peak-memory figures) on the same model, data and
settings (LoRA r/alpha/targets, 4-bit nf4 + double quant, batch size, steps, learning rate,
max length, gradient checkpointing). Throughput is real (non-padding) training tokens per
second of `trainer.train()` wall time, as counted by TRL's own `num_tokens`.

With `--rounds N` every arm runs N times, the order reversed every other round (A B C, C B A,
...), so warm-up and a card that heats up do not decide the ratio; the report gives each arm's
median and every run. MFU counts 4 N FLOPs per trained token, N = the weights of every linear
layer a token passes through (attention and MLP projections of all layers, and the LM head):
forward 2N, backward to the activations 2N, no weight gradients for the frozen base. LoRA's
adapters, attention scores and gradient checkpointing's recomputation are not counted (the
usual "model FLOPs"); the peak is the card's dense bf16 figure (table `PEAK_BF16_TFLOPS`).

Arms:
  plain       SFTTrainer + peft LoraConfig + BitsAndBytesConfig, TRL defaults otherwise
  ours        distill's SFT stage (students.sft.run_sft), packing off
  ours_pack   distill's SFT stage, packing on (bfd, padding-free)
  ours_16bit  distill's SFT stage, plain LoRA on the 16-bit base (training peak memory)
  load_4bit / load_16bit   load the base only; peak memory of 4-bit vs 16-bit loading
  plain_dpo   DPOTrainer + peft + 4-bit base on pairs (chosen: the label, rejected: the other)
  ours_dpo    distill's DPO stage on the same pairs (after 2 untimed SFT steps: DPO starts from
              the SFT adapter)
  ours_opd    distill's OPD stage, teacher in process (the student's own base as its teacher:
              same tokenizer, so it runs on random weights), `--opd-new-tokens` sampled per
              prompt; reports seconds per step
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
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
    "8b": (4096, 14336, 32, 32, 8),   # Llama-3-8B's shapes (its vocab: --vocab 128256)
    "tiny": (128, 256, 2, 4, 2),      # a smoke test of this script on a CPU
}

# Dense bf16 tensor-core peak, TFLOP/s, by the name torch reports (first match wins).
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
                    ("L40S", 362.0), ("A10G", 70.0))


def llama_shape(size: str, vocab_size: int) -> dict:
    """The config.json fields that make a `LLAMA_SIZES` entry."""
    hidden, inter, layers, heads, kv = LLAMA_SIZES[size]
    return {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv}


def linear_params(config: dict) -> int:
    """Weights of the linear layers a token passes through: q, k, v, o, gate, up, down per
    layer, and the LM head (a llama-family config.json)."""
    d, inter = config["hidden_size"], config["intermediate_size"]
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2
    return layers * (attention + 3 * d * inter) + d * config["vocab_size"]


def mfu(tokens_per_s: float, n_linear: int, device: str) -> float | None:
    peak = next((tf for name, tf in PEAK_BF16_TFLOPS if name in device), None)
    return None if peak is None else round(4 * n_linear * tokens_per_s / (peak * 1e12), 4)


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
        # what the caching allocator held: the packed 8B run reserved 79.6 of 80 GB for 57.9
        out["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


# --- arms (each runs in its own process) ----------------------------------------------------


def plain_qlora_base(args):
    """The 4-bit nf4 base as TRL's docs load it: (tokenizer, model, on a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_path, dtype=dtype, device_map={"": "cuda:0" if gpu else "cpu"},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype),
    )
    return tokenizer, model, gpu


def plain_lora(args):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def train_plain(trainer_cls, config_cls, args, data, tokenizer, model, gpu: bool, lr: float):
    """TRL's trainer with its defaults and a fresh LoRA; returns it and `train()`'s seconds."""
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_cls(
            model=model,
            args=config_cls(output_dir=out, max_length=args.max_seq_len, max_steps=args.steps,
                            per_device_train_batch_size=args.batch_size, learning_rate=lr,
                            logging_steps=max(1, args.steps // 4), save_strategy="no",
                            report_to="none", seed=0, bf16=gpu, use_cpu=not gpu,
                            gradient_checkpointing=args.gradient_checkpointing),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=plain_lora(args),
        )
        start = time.perf_counter()
        trainer.train()
        return trainer, time.perf_counter() - start


def arm_plain(args, rows) -> dict:
    """What a user writes from TRL's docs: no distill code at all."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, model, gpu = plain_qlora_base(args)
    instruction = "Sentiment (positive/negative):"
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{instruction}\n\n{r['text']}"}],
         "completion": [{"role": "assistant", "content": r["target"]}]}
        for r in rows
    ])
    trainer, seconds = train_plain(SFTTrainer, SFTConfig, args, data, tokenizer, model, gpu, 2e-4)
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


def pairs_of(rows: list[dict]) -> list[dict]:
    other = {"positive": "negative", "negative": "positive"}
    return [{"example_id": r["example_id"], "text": r["text"], "chosen": r["target"],
             "rejected": other[r["target"]]} for r in rows]


def arm_plain_dpo(args, rows) -> dict:
    """DPO as TRL's docs write it: 4-bit base, a fresh LoRA, the policy's base as reference."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, model, gpu = plain_qlora_base(args)
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"Sentiment (positive/negative):\n\n{p['text']}"}],
         "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]}
        for p in pairs_of(rows)
    ])
    trainer, seconds = train_plain(DPOTrainer, DPOConfig, args, data, tokenizer, model, gpu, 5e-5)
    steps = trainer.state.global_step
    return {"steps": steps, "seconds": round(seconds, 2),
            "steps_per_s": round(steps / seconds, 3), **peak_mb()}


def arm_ours_after_sft(args, rows, stage: str) -> dict:
    """Our DPO or OPD stage, timed alone: 2 untimed SFT steps first give it its start adapter."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.core.config import load_config
    from distill.core.rundir import Run
    from students.dpo import run_dpo
    from students.opd import run_opd
    from students.sft import run_sft

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = write_run(Path(tmp), args, rows, packing=False, quantization="nf4")
        run = Run(load_config(cfg_path, overrides=["sft.max_steps=2"]))
        run_sft(run)
        run = Run(load_config(cfg_path, overrides=[
            f"{stage}.max_steps={args.steps}", f"{stage}.batch_size={args.batch_size}",
            f"{stage}.save_steps={10**6}", f"{stage}.warmup_ratio=0.0", f"{stage}.resume=false",
            f"{stage}.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
            *(["opd.enabled=true", f"teacher.model={args.model_path}", "opd.heldout_prompts=0",
               f"opd.max_new_tokens={args.opd_new_tokens}"] if stage == "opd" else [])]))
        if stage == "dpo":
            pq.write_table(pa.Table.from_pylist(pairs_of(rows)), _mkparent(run.paths.pairs))
            summary = run_dpo(run)
        else:
            prompts = [{"example_id": r["example_id"], "text": r["text"]} for r in rows]
            pq.write_table(pa.Table.from_pylist(prompts), _mkparent(run.paths.train_prompts))
            summary = run_opd(run)
    steps = summary["steps"]
    return {"steps": steps, "seconds": summary["seconds"],
            "steps_per_s": round(steps / summary["seconds"], 3),
            "train_tokens": summary.get("train_tokens"), **peak_mb()}


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


def build_random_llama(size: str, tokenizer_dir: Path, out: Path, vocab: int | None = None) -> Path:
    """A llama-architecture student with random weights: enough for throughput and memory,
    meaningless for quality. `vocab` above the tokenizer's size adds rows no token uses (the
    LM head's cost is what matters); 8b keeps its own LM head, as Llama-3-8B does."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**llama_shape(size, max(len(tokenizer), vocab or 0)),
                         max_position_embeddings=4096,
                         tie_word_embeddings=size != "8b", bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cached_random_llama(size: str, tokenizer_dir: Path, vocab: int | None, folder: Path) -> Path:
    """The random student in `folder`, built there unless a model of the same shapes already
    is (an 8B one takes a minute to write; a second call on the same machine reuses it)."""
    from transformers import AutoTokenizer

    config = folder / "config.json"
    if config.is_file():
        have = json.loads(config.read_text())
        want = llama_shape(size, max(len(AutoTokenizer.from_pretrained(tokenizer_dir)), vocab or 0))
        if all(have.get(k) == v for k, v in want.items()):
            print(f"reusing the random {size} student in {folder}", flush=True)
            return folder
    # written beside, then renamed: a call cut off mid-write leaves no half model to reuse
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_random_llama(size, tokenizer_dir, partial, vocab)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


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
    p.add_argument("--opd-new-tokens", type=int, default=64, help="ours_opd: tokens sampled")
    p.add_argument("--vocab", type=int, default=None, help="--random-llama: vocabulary size")
    p.add_argument("--model-cache", default=None,
                   help="--random-llama: keep the built model in this folder and reuse it")
    p.add_argument("--first-round", type=int, default=0,
                   help="number of the first round (odd: reversed order); a round run by a "
                        "second call continues the alternation")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every arm this many times, the order reversed every other round")
    p.add_argument("--alloc-conf", default=None,
                   help="PYTORCH_CUDA_ALLOC_CONF for the arms, e.g. expandable_segments:True")
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
            "plain_dpo": lambda: arm_plain_dpo(args, rows),
            "ours_dpo": lambda: arm_ours_after_sft(args, rows, "dpo"),
            "ours_opd": lambda: arm_ours_after_sft(args, rows, "opd"),
        }[args.arm]()
        print("ARM_RESULT " + json.dumps(result), flush=True)
        return

    import torch

    from distill.core.models import resolve

    with tempfile.TemporaryDirectory() as tmp:
        if args.random_llama:
            tok = Path(args.tokenizer or resolve("packaged:smollm2-135m-instruct").path)
            model_path = cached_random_llama(args.random_llama, tok, args.vocab,
                                             Path(args.model_cache or Path(tmp) / "student"))
            args.model = str(model_path)
            label = f"random-init llama {args.random_llama} ({model_path.name})"
        else:
            model_path = Path(resolve(args.model).path)
            label = args.model
        argv = _drop(sys.argv[1:], ("--json", "--arms", "--model", "--random-llama", "--tokenizer",
                                    "--rounds", "--alloc-conf", "--vocab", "--model-cache",
                                    "--first-round"))
        argv += ["--model", args.model, "--model-path", str(model_path)]
        if args.alloc_conf:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf  # inherited by the arms
        n_linear = linear_params(json.loads((model_path / "config.json").read_text()))
        runs_log = Path(args.json).with_suffix(".runs.jsonl") if args.json else None
        runs = run_rounds(args.arms.split(","), range(args.first_round,
                                                      args.first_round + args.rounds),
                          argv, runs_log)
        results = {arm: summarize(arm_runs) for arm, arm_runs in runs.items()}

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "device": device,
        "model": label,
        "torch": torch.__version__,
        "settings": {k: getattr(args, k) for k in ("examples", "steps", "batch_size", "max_seq_len",
                                                   "lora_r", "gradient_checkpointing", "rounds",
                                                   "first_round",
                                                   "alloc_conf", "vocab")},
        "linear_params": n_linear,
        "flops_per_token": f"4 x {n_linear} (frozen base: forward 2N + activation grads 2N)",
        "arms": results,
    }
    plain = results.get("plain", {}).get("tokens_per_s")
    print(f"\ndevice: {device}   model: {label}   linear params: {n_linear / 1e9:.2f}B")
    for arm in ("plain", "ours", "ours_pack", "ours_16bit"):
        if arm in results:
            tps = results[arm]["tokens_per_s"]
            results[arm]["mfu"] = mfu(tps, n_linear, device)
            ratio = f"  {tps / plain:.2f}x plain" if plain else ""
            util = f"  MFU {results[arm]['mfu']:.1%}" if results[arm]["mfu"] is not None else ""
            runs = results[arm].get("runs", [])
            each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
            spread = f" (median of {each})" if runs else ""
            print(f"  {arm:>10}: {tps:10.1f} tokens/s{spread}{ratio}{util}")
            if plain:
                report.setdefault("ratios", {})[arm] = round(tps / plain, 3)
    for arm in ("plain_dpo", "ours_dpo", "ours_opd"):
        if arm in results:
            sps = results[arm]["steps_per_s"]
            base = results.get("plain_dpo", {}).get("steps_per_s") if arm == "ours_dpo" else None
            ratio = f"  {sps / base:.2f}x plain_dpo" if base else ""
            print(f"  {arm:>10}: {sps:10.3f} steps/s ({1 / sps:.2f} s per step){ratio}")
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


def run_rounds(arms: list[str], rounds: range, argv: list[str],
               runs_log: Path | None = None) -> dict[str, list[dict]]:
    """Every arm once per round, in order in even rounds and reversed in odd ones. Each run is
    also appended to `runs_log` as it ends: a run cut short by a time limit keeps what ended."""
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    if runs_log:
        _mkparent(runs_log).write_text("")
    for r in rounds:
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            started = time.perf_counter()
            result = run_arm(arm, argv)
            result["wall_s"] = round(time.perf_counter() - started, 1)
            result["round"] = r
            runs[arm].append(result)
            print(f"{arm:>11} (round {r}): {json.dumps(result)}", flush=True)
            if runs_log:
                with runs_log.open("a") as f:
                    f.write(json.dumps({"arm": arm, **result}) + "\n")
    return runs


def summarize(arm_runs: list[dict]) -> dict:
    """One run as it came; several: the median tokens/s and the largest memory peaks, with
    every run kept."""
    if len(arm_runs) == 1:
        return dict(arm_runs[0])
    out = {k: max(r[k] for r in arm_runs) for k in arm_runs[0] if k.startswith("peak_")}
    for k in ("tokens_per_s", "steps_per_s"):
        if k in arm_runs[0]:
            out[k] = statistics.median(r[k] for r in arm_runs)
    for k in ("weights_mb", "rss_after_load_mb", "rss_before_mb"):
        if k in arm_runs[0]:
            out[k] = arm_runs[0][k]
    out["runs"] = arm_runs
    return out


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
