"""Where a short answer's latency goes on the CPU server: one model, one request at a time.

    python benchmarks/latency_profile.py --model packaged:smollm2-135m-instruct --dtype float32

For each arm it starts `vllm serve` (teachers/serve.py, the server eval and bench use), sends
the quickstart's held-out reviews one at a time through the streaming OpenAI client, and prints
p50 end-to-end latency, time to first token, and the time per further token; then the same
prompts straight into `vllm.LLM.generate` in this process (no HTTP, no API server, no
detokenizing stream) to separate the engine's own time from the serving path's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from distill.latency import _request
from teachers.serve import vllm_server

REVIEWS = [
    "a gripping, tender film that earns every one of its tears",
    "clumsy, loud and far too long; the jokes land with a thud",
    "the cast is warm but the script gives them nothing to do",
    "a brilliant little thriller with a final scene you will not forget",
    "boring from the first frame to the last",
    "an uneven but often delightful debut",
]


def messages(system: str, instruction: str, review: str) -> list[dict]:
    chat = [{"role": "user", "content": f"{instruction}\n\nReview: {review}"}]
    return ([{"role": "system", "content": system}] if system else []) + chat


async def _serial(base_url: str, name: str, prompts: list[list[dict]], max_tokens: int):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=120)
    await _request(client, name, prompts[0], max_tokens)  # warm-up
    out = [await _request(client, name, p, max_tokens) for p in prompts]
    await client.close()
    return out


def served(path: str, dtype: str, prompts, max_tokens: int, extra: list[str]) -> dict:
    import asyncio

    with vllm_server(path, served_name="m", max_model_len=512, dtype=dtype,
                     extra_args=extra, log_path="/tmp/latency_profile_server.log") as url:
        samples = asyncio.run(_serial(url, "m", prompts, max_tokens))
    lat = [s.latency_ms for s in samples]
    ttft = [s.ttft_ms for s in samples]
    toks = [s.completion_tokens for s in samples]
    per_token = [(s.latency_ms - s.ttft_ms) / (s.completion_tokens - 1)
                 for s in samples if s.completion_tokens > 1]
    return {"p50_ms": round(statistics.median(lat), 1), "ttft_p50_ms": round(statistics.median(ttft), 1),
            "per_next_token_ms": round(statistics.median(per_token), 1) if per_token else None,
            "completion_tokens_mean": round(statistics.mean(toks), 2),
            "prompt_tokens": samples[0].prompt_tokens}


def in_process(path: str, dtype: str, prompts, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from teachers.vllm_engine import engine_args

    args = engine_args(path, max_model_len=512, dtype=dtype, engine_kwargs=None, lora_path=None,
                       max_lora_rank=16, seed=0)
    llm = LLM(**args)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    llm.chat(prompts[0], params, use_tqdm=False)
    lat, toks = [], []
    for p in prompts:
        t = time.perf_counter()
        out = llm.chat(p, params, use_tqdm=False)
        lat.append((time.perf_counter() - t) * 1e3)
        toks.append(len(out[0].outputs[0].token_ids))
    one = SamplingParams(max_tokens=1, temperature=0.0)
    first = []
    for p in prompts:
        t = time.perf_counter()
        llm.chat(p, one, use_tqdm=False)
        first.append((time.perf_counter() - t) * 1e3)
    llm.llm_engine.engine_core.shutdown()
    return {"p50_ms": round(statistics.median(lat), 1),
            "one_token_p50_ms": round(statistics.median(first), 1),
            "completion_tokens_mean": round(statistics.mean(toks), 2)}


def main() -> None:
    from distill.core.models import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--system", default="")
    ap.add_argument("--instruction", default="Sentiment (positive or negative):")
    ap.add_argument("--extra", default="", help="extra `vllm serve` arguments")
    ap.add_argument("--skip-in-process", action="store_true")
    args = ap.parse_args()
    path = resolve(args.model).path
    prompts = [messages(args.system, args.instruction, REVIEWS[i % len(REVIEWS)])
               for i in range(args.requests)]
    result = {"model": args.model, "dtype": args.dtype, "extra": args.extra,
              "served": served(path, args.dtype, prompts, args.max_tokens, args.extra.split())}
    if not args.skip_in_process:
        result["in_process"] = in_process(path, args.dtype, prompts, args.max_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
