"""Stage `bench`: latency, throughput and cost of teacher and students on the same engine.

Each model is served by vLLM's OpenAI-compatible server on 127.0.0.1, as it would be in
production: each tuned student merged into its base on its own server (`student.serve: merged`,
how a one-task student ships), or all students on one server with LoRA adapters (`lora`). A
streaming client measures time to first token and end-to-end latency at concurrency 1, and
throughput at `bench.concurrency`.
Each model gets its own prompt: the teacher its full instruction, the distilled students their
short one; that difference in prompt tokens is part of what distillation buys.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from distill.core.config import PriceConfig, RunConfig
from distill.data import read_examples
from distill.core.errors import StageNotReadyError
from distill.eval import Contender, contenders, engine_groups, is_merged
from distill.metrics import percentile
from distill.core.io import write_json_atomic


@dataclass(frozen=True)
class Sample:
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int


async def _request(client, model: str, messages: list[dict], max_tokens: int) -> Sample:
    start = time.perf_counter()
    first = None
    usage = None
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    return Sample((end - start) * 1e3, ((first or end) - start) * 1e3,
                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


async def _load(base_url: str, api_key: str, model: str, prompts: list[list[dict]],
                max_tokens: int, concurrency: int) -> tuple[list[Sample], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(messages):
        async with gate:
            return await _request(client, model, messages, max_tokens)

    await _request(client, model, prompts[0], max_tokens)  # warm-up, not measured
    start = time.perf_counter()
    samples = await asyncio.gather(*(one(m) for m in prompts))
    wall = time.perf_counter() - start
    await client.close()
    return list(samples), wall


def cost_per_request(price: PriceConfig, wall_s: float, requests: int, prompt_tokens: int,
                     completion_tokens: int) -> float:
    """Hardware time shared by the requests served in it, or the API's token prices."""
    if price.per_hour_usd is not None:
        return price.per_hour_usd * wall_s / 3600 / requests
    return (prompt_tokens * (price.input_per_1m_usd or 0)
            + completion_tokens * (price.output_per_1m_usd or 0)) / 1e6 / requests


def summarise(serial: list[Sample], loaded: list[Sample], loaded_wall: float,
              price: PriceConfig) -> dict:
    lat = [s.latency_ms for s in serial]
    ttft = [s.ttft_ms for s in serial]
    prompt_toks = sum(s.prompt_tokens for s in loaded)
    completion_toks = sum(s.completion_tokens for s in loaded)
    per_request = cost_per_request(price, loaded_wall, len(loaded), prompt_toks, completion_toks)
    tokens = prompt_toks + completion_toks
    return {
        "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95),
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p95_ms": percentile(ttft, 95),
        "requests_per_s": len(loaded) / loaded_wall,
        "tokens_per_s": completion_toks / loaded_wall,
        "prompt_tokens_per_request": prompt_toks / len(loaded),
        "completion_tokens_per_request": completion_toks / len(loaded),
        "cost_per_1k_requests": per_request * 1000,
        "cost_per_1m_tokens": per_request * len(loaded) / tokens * 1e6 if tokens else None,
        "latencies_ms": lat, "ttft_ms": ttft,
    }


def _bench_model(server: tuple[str, str], served_name: str, prompts: list[list[dict]],
                 cfg: RunConfig, price: PriceConfig) -> dict:
    serial, _ = asyncio.run(_load(*server, served_name, prompts, cfg.bench_tokens, 1))
    loaded, wall = asyncio.run(_load(*server, served_name, prompts, cfg.bench_tokens,
                                     cfg.bench.concurrency))
    return summarise(serial, loaded, wall, price)


def _prompts(run, contender: Contender) -> list[list[dict]]:
    examples = read_examples(run.paths.test_prompts)
    n = run.cfg.bench.requests
    texts = [examples[i % len(examples)].text for i in range(n)]
    return [contender.prompt(run.cfg.task, t) for t in texts]


def _served_as(cfg: RunConfig, c: Contender) -> str:
    if c.role == "teacher":
        return {"openai": "API", "vllm": "vLLM"}.get(cfg.teacher.backend, "vLLM (no server "
                                                                          "for transformers)")
    if c.adapter is None:
        return "vLLM"
    return "vLLM, merged" if cfg.student.serve == "merged" else "vLLM + LoRA"


def run_bench(run) -> dict:
    from distill.engines import merged_student, served_merged, served_students, served_teacher

    cfg: RunConfig = run.cfg
    if not cfg.bench.enabled:
        return {"skipped": True}
    if not run.paths.test_prompts.exists():
        raise StageNotReadyError("bench needs prompts/test.parquet: run `distill prompts` first")
    results: dict[str, dict] = {}
    for group in engine_groups(cfg, contenders(run)):
        price = cfg.cost.teacher if group[0].role == "teacher" else cfg.cost.student
        if group[0].role == "teacher":
            server = served_teacher(cfg, run.paths.server_log("teacher"))
        elif is_merged(cfg, group):
            c = group[0]
            server = served_merged(cfg, c.name, merged_student(run, c.adapter),
                                   run.paths.server_log(f"{c.name}_merged"))
        else:
            server = served_students(cfg, {c.name: c.adapter for c in group if c.adapter},
                                     run.paths.server_log("student"))
        with server as (base_url, names, api_key):
            for c in group:
                results[c.name] = _bench_model((base_url, api_key), names[c.name],
                                               _prompts(run, c), cfg, price)
                results[c.name]["served_as"] = _served_as(cfg, c)
    settings = {"requests": cfg.bench.requests, "concurrency": cfg.bench.concurrency,
                "max_tokens": cfg.bench_tokens, "engine": "vllm serve (OpenAI API)"}
    write_json_atomic(run.paths.bench_results,
                      {"settings": settings, "models": results})
    return {name: {k: round(v, 4) for k, v in r.items()
                   if k in ("latency_p50_ms", "latency_p95_ms", "cost_per_1k_requests")}
            for name, r in results.items()}
