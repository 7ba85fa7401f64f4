"""Latency and throughput of a model behind an OpenAI-compatible server, and its cost per
request: a streaming client measures time to first token and end-to-end latency at concurrency
1, then throughput at a given concurrency. Used by `bench`, and by `eval` on the server it has
just answered with (each model's server starts once for both).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from distill.contenders import Contender
from distill.core.config import PriceConfig, RunConfig
from distill.core.io import file_sha256, read_json, write_json_atomic
from distill.data import read_examples
from distill.metrics import percentile


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


def measure(server: tuple[str, str], served_name: str, prompts: list[list[dict]],
                 cfg: RunConfig, price: PriceConfig) -> dict:
    serial, _ = asyncio.run(_load(*server, served_name, prompts, cfg.bench_tokens, 1))
    loaded, wall = asyncio.run(_load(*server, served_name, prompts, cfg.bench_tokens,
                                     cfg.bench.concurrency))
    return summarise(serial, loaded, wall, price)


# --- a contender measured on its group's server, saved for the bench stage ------------------


def settings(cfg: RunConfig) -> dict:
    return {"requests": cfg.bench.requests, "concurrency": cfg.bench.concurrency,
            "max_tokens": cfg.bench_tokens, "engine": "vllm serve (OpenAI API)"}


def bench_prompts(run, c: Contender) -> list[list[dict]]:
    examples = read_examples(run.paths.test_prompts)
    n = run.cfg.bench.requests
    return [c.prompt(run.cfg.task, examples[i % len(examples)].text) for i in range(n)]


def served_as(cfg: RunConfig, c: Contender) -> str:
    if c.role == "teacher":
        return {"openai": "API", "vllm": "vLLM"}.get(cfg.teacher.backend, "vLLM (no server "
                                                                          "for transformers)")
    if c.adapter is None:
        return "vLLM"
    return "vLLM, merged" if cfg.student.serve == "merged" else "vLLM + LoRA"


def _fingerprint(run, c: Contender) -> dict:
    """What a saved measurement was made under: the bench settings, the price, the adapter."""
    price = run.cfg.cost.teacher if c.role == "teacher" else run.cfg.cost.student
    weights = next(c.adapter.glob("adapter_model.*"), None) if c.adapter else None
    return {"settings": settings(run.cfg), "price": price.model_dump(mode="json"),
            "adapter_sha256": file_sha256(weights) if weights else None,
            "serve": run.cfg.student.serve}


def measure_contender(run, served: tuple[str, dict[str, str], str], c: Contender) -> dict:
    """Bench one contender on its group's running server, and save the result (with what it
    was measured under) for the bench stage."""
    base_url, names, api_key = served
    price = run.cfg.cost.teacher if c.role == "teacher" else run.cfg.cost.student
    result = measure((base_url, api_key), names[c.name], bench_prompts(run, c), run.cfg, price)
    result["served_as"] = served_as(run.cfg, c)
    write_json_atomic(run.paths.bench_measured(c.name),
                      {"under": _fingerprint(run, c), "result": result})
    return result


def saved_measure(run, c: Contender) -> dict | None:
    """A contender's measurement saved by eval or an earlier bench, if made under the same
    settings, price and adapter; else None."""
    found = read_json(run.paths.bench_measured(c.name))
    if not found or found.get("under") != _fingerprint(run, c):
        return None
    return found["result"]
