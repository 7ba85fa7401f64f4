"""In-process vLLM (`vllm.LLM`) behind the `Generator` interface, for teacher and student.

Prompts are rendered with the model's chat template and tokenized here, so an over-long prompt
is quarantined before it reaches the engine (vLLM would fail the whole batch), and the prompt
token count is exact. The student can be served with a PEFT LoRA adapter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from teachers.base import Completion, Messages, SamplingSpec, error_completions, request_seeds

# Measured on the 2-core AVX2 CPU (README, "CPU defaults and measurements"): eager mode skips
# minutes of torch.compile warm-up, and float32 avoids bf16 matmuls that fall back to slow
# reference kernels without AVX-512. Chunked prefill is off because a seeded request whose
# prompt is split across steps kills the CPU engine ("CPU Generator does not use offset" in
# vLLM 0.32's _bookkeeping_sync); whole prompts are scheduled instead, so the token budget per
# step must hold the longest prompt. Applied only without a GPU; teacher.engine_kwargs
# overrides each key. Block size 32 (the CPU default is 128) lets the prefix cache hold a
# prompt's full blocks: the shared system prompt + instruction, and a prompt's own tokens for
# its later samples (see _engine_call). 60 prompts x 3 samples, Qwen2.5-0.5B: 101 s -> 41 s.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"enforce_eager": True, "enable_chunked_prefill": False,
                                       "block_size": 32}
CPU_DTYPE = "float32"


def cpu_serve_dtype(lora: bool) -> str:
    """The dtype `vllm serve` gets for `dtype: auto` without a GPU.

    bfloat16 where the CPU has bf16 dot products (AVX512_BF16 or AMX): it halves the weight
    bytes a decode step streams, and decode on a CPU is bound by memory bandwidth. Measured on
    the 2-core AMD EPYC with AVX512_BF16 (benchmarks/results/latency_profile.md, concurrency 1):
    SmolLM2-135M 49.8 -> 32-38 ms per token, p50 150 -> 88-110 ms; Qwen2.5-Coder-0.5B 120-126
    -> 69-75 ms per token, p50 312-391 -> 183-189 ms (two runs each). 97-99% of greedy answers
    identical, accuracy within a point. float32 on other CPUs (no fast bf16 kernels) and with
    LoRA adapters (vLLM's CPU LoRA kernels in bf16: not measured). Only the served path:
    in-process generation (training data) stays float32.
    """
    import torch

    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if bf16 and not lora else CPU_DTYPE


CPU_MIN_BATCHED_TOKENS = 4096


def cpu_batched_tokens(max_model_len: int) -> int:
    return max(max_model_len, CPU_MIN_BATCHED_TOKENS)


def cpu_engine_env() -> dict[str, str]:
    """Environment defaults for vLLM on a CPU (existing values win).

    vLLM keeps one core back for its own processes; on a machine with 4 cores or fewer that
    halves the matmul threads. Measured on 2 cores (Qwen2.5-0.5B, 40 prompts x 3 samples):
    0.35 prompts/s with the reserve, 0.61 without it.
    """
    env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
    if (os.cpu_count() or 1) <= 4:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_args(model_path: str, *, max_model_len: int, dtype: str, engine_kwargs: dict | None,
                lora_path: str | None, max_lora_rank: int, seed: int) -> dict[str, Any]:
    """The keyword arguments for `vllm.LLM`, with CPU defaults when no GPU is present."""
    args: dict[str, Any] = {"model": model_path, "max_model_len": max_model_len, "seed": seed,
                            "dtype": dtype}
    if not has_gpu():
        for key, value in cpu_engine_env().items():
            os.environ.setdefault(key, value)
        args.update(CPU_ENGINE_DEFAULTS, max_num_batched_tokens=cpu_batched_tokens(max_model_len))
        if dtype == "auto":
            args["dtype"] = CPU_DTYPE
    if lora_path:
        args.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    args.update(engine_kwargs or {})
    return args


def _logprobs_json(sample) -> list[dict[str, float]] | None:
    if sample.logprobs is None:
        return None
    # One {token_id: logprob} per generated position (ids as strings: JSON object keys).
    return [{str(tid): float(lp.logprob) for tid, lp in pos.items()} for pos in sample.logprobs]


def to_vllm_params(sampling: SamplingSpec, seed: int | None):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    structured = None
    if sampling.choices:
        structured = StructuredOutputsParams(choice=list(sampling.choices))
    elif sampling.json_schema is not None:
        structured = StructuredOutputsParams(json=sampling.json_schema)
    return SamplingParams(
        n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
        max_tokens=sampling.max_tokens, seed=seed, logprobs=sampling.logprobs,
        structured_outputs=structured,
    )


class VLLMGenerator:
    """`vllm.LLM` in this process. One engine per instance; call `close()` to free it."""

    backend = "vllm"

    def __init__(self, model_path: str, *, max_model_len: int = 2048, dtype: str = "auto",
                 engine_kwargs: dict | None = None, lora_path: str | None = None,
                 max_lora_rank: int = 16, seed: int = 0):
        from distill.core.logs import engine_output_to_log

        with engine_output_to_log():
            from vllm import LLM

        self.model_path = model_path
        self.max_model_len = max_model_len
        self.args = engine_args(model_path, max_model_len=max_model_len, dtype=dtype,
                                engine_kwargs=engine_kwargs, lora_path=lora_path,
                                max_lora_rank=max_lora_rank, seed=seed)
        start = time.perf_counter()
        with engine_output_to_log():
            self.llm = LLM(**self.args)
        self.startup_s = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_request = None
        self._lora_ids: dict[str, int] = {}
        if lora_path:
            self.use_adapter(lora_path)

    def use_adapter(self, lora_path: str | Path | None) -> None:
        """Answer with this LoRA adapter from now on (None: the base model).

        Needs an engine built with a `lora_path`; switching costs one adapter load, not an
        engine start, so several students share one engine.
        """
        if lora_path is None:
            self.lora_request = None
            return
        if not self.args.get("enable_lora"):
            raise ValueError("this engine was started without LoRA: pass lora_path to VLLMGenerator")
        from vllm.lora.request import LoRARequest

        key = str(lora_path)
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        self.lora_request = LoRARequest(f"adapter{lora_id}", lora_id, key)

    @classmethod
    def from_config(cls, cfg) -> VLLMGenerator:
        """The run's teacher model on vLLM in this process (e.g. as a judge)."""
        from distill.core.models import resolve

        t = cfg.teacher
        return cls(resolve(t.model).path, max_model_len=t.max_model_len, dtype=t.dtype,
                   engine_kwargs=t.engine_kwargs, seed=cfg.seed)

    def chat(self, messages: list[Messages], *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = 0) -> list[str]:
        """One reply text per conversation ("" where the prompt was quarantined)."""
        spec = SamplingSpec(n=1, temperature=temperature, max_tokens=max_tokens, seed=seed)
        return [c.text if c.ok else "" for c in self.generate(messages, spec)]

    def prompt_token_ids(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        # The template already holds the special tokens (BOS etc.), as in `LLM.chat`.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, messages: list[Messages], sampling: SamplingSpec,
                 seeds: list[int] | None = None) -> list[Completion]:
        base_seeds = request_seeds(sampling, seeds, len(messages))
        results: dict[int, list[Completion]] = {}
        ready: list[tuple[int, list[int]]] = []
        for i, msgs in enumerate(messages):
            try:
                ids = self.prompt_token_ids(msgs)
            except Exception as exc:  # a broken template/message quarantines one prompt
                results[i] = error_completions(i, sampling.n, f"chat_template: {exc}",
                                               seed=base_seeds[i])
                continue
            if len(ids) >= self.max_model_len:
                reason = (f"prompt_too_long: {len(ids)} prompt tokens, max_model_len is "
                          f"{self.max_model_len}")
                results[i] = error_completions(i, sampling.n, reason, len(ids), base_seeds[i])
                continue
            ready.append((i, ids))
        if ready:
            results.update(self._run(ready, sampling, base_seeds))
        return [c for i in range(len(messages)) for c in results[i]]

    def _run(self, ready: list[tuple[int, list[int]]], sampling: SamplingSpec,
             base_seeds: list[int | None]) -> dict[int, list[Completion]]:
        try:
            return self._engine_call(ready, sampling, base_seeds)
        except Exception as exc:
            if _is_fatal(exc) or len(ready) == 1:
                if _is_fatal(exc):
                    raise
                i = ready[0][0]
                reason = f"engine_error: {type(exc).__name__}: {exc}"[:1000]
                return {i: error_completions(i, sampling.n, reason, len(ready[0][1]),
                                             base_seeds[i])}
            # One bad request fails vLLM's whole batch: retry one by one to isolate it.
            out: dict[int, list[Completion]] = {}
            for item in ready:
                out.update(self._run([item], sampling, base_seeds))
            return out

    def _engine_call(self, ready, sampling, base_seeds) -> dict[int, list[Completion]]:
        """Sample 0 of every prompt first, then samples 1..n-1 as single-sample requests.

        vLLM schedules the n children of one request in the same step, so each of them
        prefills the prompt again (no prefix-cache hit yet). Asking for sample 0 first puts
        every prompt in the prefix cache, and the other samples reuse it (on a CPU with
        block_size 32: 60 prompts x 3 samples of Qwen2.5-0.5B in 41 s instead of 101 s).
        Sample i is seeded with seed + i, so every row stays reproducible.
        """
        one = dataclasses.replace(sampling, n=1)
        start = time.perf_counter()
        first = self._call([(i, ids, 0) for i, ids in ready], one, base_seeds)
        rest = [(i, ids, k) for k in range(1, sampling.n) for i, ids in ready]
        later = self._call(rest, one, base_seeds) if rest else []
        batch_s = time.perf_counter() - start
        results: dict[int, list[Completion]] = {i: [] for i, _ in ready}
        for (i, ids, k), out in [*first, *later]:
            sample = out.outputs[0]
            seed = base_seeds[i]
            results[i].append(Completion(
                prompt_index=i, sample_index=k, text=sample.text, prompt_tokens=len(ids),
                completion_tokens=len(sample.token_ids),
                finish_reason=sample.finish_reason or "stop",
                latency_s=_request_latency(out, batch_s),
                seed=None if seed is None else seed + k, logprobs=_logprobs_json(sample)))
        for completions in results.values():
            completions.sort(key=lambda c: c.sample_index)
        return results

    def _call(self, requests: list[tuple[int, list[int], int]], sampling: SamplingSpec,
              base_seeds: list[int | None]) -> list[tuple[tuple[int, list[int], int], Any]]:
        prompts = [{"prompt_token_ids": ids} for _, ids, _ in requests]
        params = [to_vllm_params(sampling, None if base_seeds[i] is None else base_seeds[i] + k)
                  for i, _, k in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False,
                                    lora_request=self.lora_request)
        return list(zip(requests, outputs))

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if shutdown is not None and hasattr(shutdown, "shutdown"):
                shutdown.shutdown()
            self.llm = None


def _request_latency(out, batch_s: float) -> float:
    """Per-request time in the engine when vLLM tracked it, else the batch's wall time."""
    m = getattr(out, "metrics", None)
    first = getattr(m, "scheduled_ts", 0.0) or getattr(m, "queued_ts", 0.0)
    last = getattr(m, "last_token_ts", 0.0)
    if m is not None and first and last and last >= first:
        return float(last - first)
    return batch_s


def _is_fatal(exc: Exception) -> bool:
    # A dead engine can't serve any later batch: let the actor die so Ray restarts it.
    return type(exc).__name__ == "EngineDeadError"


def logprobs_to_json(logprobs: list[dict[str, float]] | None) -> str | None:
    return None if logprobs is None else json.dumps(logprobs)
