"""Do greedy answers change with bfloat16 on the CPU? float32 vs bfloat16, same prompts.

    python benchmarks/bf16_agreement.py --student runs/quickstart/merged/dpo \
        --test runs/quickstart/prompts/test.parquet

Answers the quickstart's held-out reviews (prompts as in benchmarks/latency_profile.py) with
the product's in-process engine (teachers/vllm_engine.py) in each dtype, greedy, 8 tokens, and
prints per model: how many answers are identical, and the accuracy against the labels in each
dtype (the answer's first word).
"""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq

from latency_profile import MODELS, messages
from teachers.vllm_engine import VLLMGenerator


def answers(path: str, dtype: str, prompts) -> list[str]:
    gen = VLLMGenerator(path, max_model_len=512, dtype=dtype)
    try:
        return gen.chat(prompts, max_tokens=8, temperature=0.0)
    finally:
        gen.close()


def accuracy(texts: list[str], labels: list[str]) -> float:
    first = [(t.strip().split() or [""])[0].strip(".,!").lower() for t in texts]
    return round(sum(f == lab for f, lab in zip(first, labels)) / len(labels), 3)


def main() -> None:
    from distill.core.models import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default=MODELS["student"][0])
    ap.add_argument("--test", required=True)
    ap.add_argument("--models", default="student,teacher")
    args = ap.parse_args()
    rows = pq.read_table(args.test).to_pylist()
    labels = [r["label"] for r in rows]
    for name in args.models.split(","):
        ref, (system, instruction) = MODELS[name]
        path = resolve(args.student if name == "student" else ref).path
        prompts = [messages(system, instruction, r["text"]) for r in rows]
        fp32, bf16 = (answers(path, d, prompts) for d in ("float32", "bfloat16"))
        print(json.dumps({"model": name, "prompts": len(rows),
                          "identical": sum(a == b for a, b in zip(fp32, bf16)),
                          "accuracy_float32": accuracy(fp32, labels),
                          "accuracy_bfloat16": accuracy(bf16, labels),
                          "differing": [(a, b) for a, b in zip(fp32, bf16) if a != b][:10]}),
              flush=True)


if __name__ == "__main__":
    main()
