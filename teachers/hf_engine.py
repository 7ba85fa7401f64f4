"""transformers `generate` behind the `Generator` interface: the fallback where vLLM can't be
installed. One prompt and one sample at a time, so every sample has its own seed (seed + i)
exactly like the vLLM backend; slow, but it runs anywhere torch runs.
"""

from __future__ import annotations

import time

from distill.core.errors import ConfigError
from teachers.base import Completion, Messages, SamplingSpec, error_completions, request_seeds


class HFGenerator:
    backend = "transformers"

    def __init__(self, model_path: str, *, max_model_len: int = 2048, dtype: str = "auto",
                 engine_kwargs: dict | None = None, lora_path: str | None = None,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_model_len = max_model_len
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = torch.float32 if dtype == "auto" and self.device == "cpu" else dtype
        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, **(engine_kwargs or {})).to(self.device)
        if lora_path:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, lora_path)
        self.model.eval()
        self.startup_s = time.perf_counter() - start

    def generate(self, messages: list[Messages], sampling: SamplingSpec,
                 seeds: list[int] | None = None) -> list[Completion]:
        if sampling.choices or sampling.json_schema is not None:
            raise ConfigError("generate.structured_output", [
                "the transformers backend has no structured output; use teacher.backend=vllm"])
        base_seeds = request_seeds(sampling, seeds, len(messages))
        out: list[Completion] = []
        for i, msgs in enumerate(messages):
            out.extend(self._one_prompt(i, msgs, sampling, base_seeds[i]))
        return out

    def _one_prompt(self, i: int, msgs: Messages, sampling: SamplingSpec,
                    seed: int | None) -> list[Completion]:
        import torch

        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_prompt = ids.shape[1]
        if n_prompt >= self.max_model_len:
            reason = f"prompt_too_long: {n_prompt} prompt tokens, max_model_len is {self.max_model_len}"
            return error_completions(i, sampling.n, reason, n_prompt, seed)
        ids = ids.to(self.device)
        max_new = min(sampling.max_tokens, self.max_model_len - n_prompt)
        completions = []
        for s in range(sampling.n):
            if seed is not None:
                torch.manual_seed(seed + s)
            sample = sampling.temperature > 0
            start = time.perf_counter()
            with torch.no_grad():
                gen = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                    do_sample=sample, temperature=sampling.temperature if sample else None,
                    top_p=sampling.top_p if sample else None, top_k=None,
                    return_dict_in_generate=True, output_logits=sampling.logprobs is not None,
                    pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                )
            latency = time.perf_counter() - start
            new = gen.sequences[0, n_prompt:]
            eos = self.tokenizer.eos_token_id
            stopped = len(new) > 0 and int(new[-1]) == eos
            completions.append(Completion(
                prompt_index=i, sample_index=s,
                text=self.tokenizer.decode(new, skip_special_tokens=True),
                prompt_tokens=n_prompt, completion_tokens=len(new),
                finish_reason="stop" if stopped or len(new) < max_new else "length",
                latency_s=latency, seed=None if seed is None else seed + s,
                logprobs=_top_logprobs(gen.logits, sampling.logprobs),
            ))
        return completions

    def close(self) -> None:
        self.model = None


def _top_logprobs(logits, k: int | None) -> list[dict[str, float]] | None:
    if k is None or logits is None:
        return None
    import torch

    rows = []
    for step in logits:
        lp = torch.log_softmax(step[0].float(), dim=-1)
        top = torch.topk(lp, max(k, 1))
        rows.append({str(int(t)): float(v) for v, t in zip(top.values, top.indices)})
    return rows
