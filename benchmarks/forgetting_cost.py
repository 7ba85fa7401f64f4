"""What the forgetting check costs: the base student answering the IFBench items on vLLM.

    python benchmarks/forgetting_cost.py configs/quickstart.yaml [--items 100] [--max-tokens 256]

Prints the wall time of the generation (engine start excluded), the tokens generated, how many
answers hit the token limit, and the base student's score, as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from distill import forgetting
from distill.core.config import load_config
from distill.engines import open_student
from teachers.base import SamplingSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    cfg = load_config(args.config)
    items = forgetting.load_items(args.items)
    messages = [[{"role": "user", "content": i.prompt}] for i in items]
    start = time.perf_counter()
    with open_student(cfg) as generator:
        ready = time.perf_counter()
        out = generator.generate(messages, SamplingSpec(n=1, temperature=0.0,
                                                        max_tokens=args.max_tokens, seed=cfg.seed))
        done = time.perf_counter()
    answers = [x.text if x.ok else "" for x in out]
    summary = forgetting.summarize(items, {"student_base": answers}, forgetting.source())
    print(json.dumps({
        "items": len(items), "max_tokens": args.max_tokens,
        "engine_start_s": round(ready - start, 1), "generate_s": round(done - ready, 1),
        "completion_tokens": sum(x.completion_tokens or 0 for x in out),
        "hit_limit": sum(x.finish_reason == "length" for x in out),
        "student_base": summary["models"]["student_base"]}))


if __name__ == "__main__":
    main()
