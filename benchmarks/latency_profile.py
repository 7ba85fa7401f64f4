"""Where a short answer's latency goes on the CPU server: one request at a time, per model.

    python benchmarks/latency_profile.py --models student,teacher --arm base
    python benchmarks/latency_profile.py --arm bf16 --dtype bfloat16
    python benchmarks/latency_profile.py --arm nomp --env VLLM_ENABLE_V1_MULTIPROCESSING=0
    python benchmarks/latency_profile.py --arm base --in-process --hf   # the same prompts, no HTTP

Each arm starts `vllm serve` the way the product does (teachers/serve.py, the server eval and
bench use; `--env`/`--extra` add to it) and measures, at concurrency 1 through the streaming
OpenAI client:
- decode: one fixed prompt, 32 tokens with ignore_eos: time per further token (end to end
  minus time to first token, over 31) and TTFT;
- bench: the quickstart's prompts (teacher: system prompt + long instruction; student: the short
  one) on 6 reviews, max_tokens 8 with a real EOS, as `bench` measures them: p50 latency and
  TTFT, and the answers (to check that a knob leaves greedy answers unchanged).
`--in-process` times the decode prompt in `vllm.LLM` (engine core, no API server or HTTP),
`--hf` in plain transformers `generate`: 33 tokens minus 1 token, over 32.
One JSON line per model and arm goes to stdout and to `--out` (appended).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from teachers.serve import vllm_server

REVIEWS = [
    "a gripping, tender film that earns every one of its tears",
    "clumsy, loud and far too long; the jokes land with a thud",
    "the cast is warm but the script gives them nothing to do",
    "a brilliant little thriller with a final scene you will not forget",
    "boring from the first frame to the last",
    "an uneven but often delightful debut",
]
# configs/quickstart.yaml's task: the teacher is asked zero-shot, the student with its short prompt.
TEACHER = ("You are a careful film critic who labels the sentiment of review snippets.",
           "Is the sentiment of this movie review snippet positive or negative? "
           "Answer with exactly one word: positive or negative.")
STUDENT = ("", "Sentiment (positive or negative):")
MODELS = {"student": ("packaged:smollm2-135m-instruct", STUDENT),
          "teacher": ("packaged:qwen2.5-coder-0.5b-instruct", TEACHER)}
DECODE_PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
DECODE_TOKENS = 32


def messages(system: str, instruction: str, review: str) -> list[dict]:
    chat = [{"role": "user", "content": f"{instruction}\n\nReview: {review}"}]
    return ([{"role": "system", "content": system}] if system else []) + chat


async def _one(client, msgs, max_tokens: int, ignore_eos: bool) -> dict:
    start = time.perf_counter()
    first, text, usage = None, [], None
    stream = await client.chat.completions.create(
        model="m", messages=msgs, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": ignore_eos})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    return {"ms": (end - start) * 1e3, "ttft_ms": ((first or end) - start) * 1e3,
            "tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
            "text": "".join(text)}


async def _served_run(url: str, prompts: list[list[dict]], decode_n: int) -> tuple[list, list]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
    await _one(client, DECODE_PROMPT, DECODE_TOKENS, True)  # warm-up
    await _one(client, prompts[0], 8, False)
    decode = [await _one(client, DECODE_PROMPT, DECODE_TOKENS, True) for _ in range(decode_n)]
    bench = [await _one(client, p, 8, False) for p in prompts]
    await client.close()
    return decode, bench


def _median(xs) -> float:
    return round(statistics.median(xs), 1)


def served(path: str, dtype: str, prompts, env: dict, extra: list[str], log: str) -> dict:
    start = time.perf_counter()
    with vllm_server(path, served_name="m", max_model_len=512, dtype=dtype, extra_args=extra,
                     log_path=log, env=env) as url:
        startup_s = time.perf_counter() - start
        decode, bench = asyncio.run(_served_run(url, prompts, 5))
    return {"startup_s": round(startup_s, 1),"per_token_ms": _median([(d["ms"] - d["ttft_ms"]) / (d["tokens"] - 1)
                                     for d in decode]),
            "decode_ttft_ms": _median([d["ttft_ms"] for d in decode]),
            "bench_p50_ms": _median([b["ms"] for b in bench]),
            "bench_ttft_p50_ms": _median([b["ttft_ms"] for b in bench]),
            "bench_tokens_mean": round(statistics.mean(b["tokens"] for b in bench), 2),
            "bench_prompt_tokens": bench[0]["prompt_tokens"],
            "answers": [b["text"] for b in bench[:len(REVIEWS)]]}


def in_process(path: str, dtype: str, env: dict) -> dict:
    os.environ.update(env)
    from vllm import LLM, SamplingParams

    from teachers.vllm_engine import engine_args

    llm = LLM(**engine_args(path, max_model_len=512, dtype=dtype, engine_kwargs=None,
                            lora_path=None, max_lora_rank=16, seed=0))
    timed = {}
    for n in (1, DECODE_TOKENS + 1):
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        llm.chat(DECODE_PROMPT, params, use_tqdm=False)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            llm.chat(DECODE_PROMPT, params, use_tqdm=False)
            runs.append((time.perf_counter() - t) * 1e3)
        timed[n] = statistics.median(runs)
    llm.llm_engine.engine_core.shutdown()
    return {"per_token_ms": round((timed[DECODE_TOKENS + 1] - timed[1]) / DECODE_TOKENS, 1),
            "one_token_ms": round(timed[1], 1)}


def transformers_generate(path: str, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    ids = tok.apply_chat_template(DECODE_PROMPT, add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    timed = {}
    with torch.inference_mode():
        for n in (1, DECODE_TOKENS + 1):
            kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
            model.generate(**ids, **kw)
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                model.generate(**ids, **kw)
                runs.append((time.perf_counter() - t) * 1e3)
            timed[n] = statistics.median(runs)
    return {"per_token_ms": round((timed[DECODE_TOKENS + 1] - timed[1]) / DECODE_TOKENS, 1),
            "one_token_ms": round(timed[1], 1), "torch_threads": torch.get_num_threads()}


def main() -> None:
    from distill.core.models import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="student,teacher")
    ap.add_argument("--arm", default="base")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--extra", default="", help="extra `vllm serve` arguments")
    ap.add_argument("--requests", type=int, default=18)
    ap.add_argument("--no-served", action="store_true")
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--student", default=MODELS["student"][0],
                    help="the student's model (a quickstart run's runs/quickstart/merged/dpo "
                         "answers in 1-2 tokens, as in bench)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    for name in args.models.split(","):
        ref, (system, instruction) = MODELS[name]
        ref = args.student if name == "student" else ref
        path = resolve(ref).path
        prompts = [messages(system, instruction, REVIEWS[i % len(REVIEWS)])
                   for i in range(args.requests)]
        row = {"arm": args.arm, "model": name, "dtype": args.dtype, "env": env,
               "extra": args.extra}
        if not args.no_served:
            row["served"] = served(path, args.dtype, prompts, env, args.extra.split(),
                                   f"/tmp/latency_profile_{args.arm}_{name}.log")
        if args.in_process:
            row["in_process"] = in_process(path, args.dtype, env)
        if args.hf:
            row["transformers"] = transformers_generate(path, args.dtype)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
