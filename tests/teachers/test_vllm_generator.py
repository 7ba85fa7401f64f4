"""`VLLMGenerator` in-process (eval/bench reuse it for teacher and student): seeds, structured
choice output, over-long prompts, and a PEFT LoRA adapter served through vLLM's LoRA."""

from __future__ import annotations

import pytest

from teachers.base import SamplingSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(student_path, tmp_path_factory) -> str:
    """A real PEFT adapter (random, r=8, all-linear) on the student, like SFT writes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def gen(student_path, adapter):
    from teachers.vllm_engine import VLLMGenerator

    # A small step budget, so a handful of prompts spans several engine steps.
    g = VLLMGenerator(student_path, max_model_len=256, lora_path=adapter, max_lora_rank=8,
                      engine_kwargs={"max_num_batched_tokens": 512})
    yield g
    g.close()


MSGS = [[{"role": "user", "content": f"Is '{t}' positive or negative?"}]
        for t in ("a delight", "a bore", "fine work")]


def test_seeded_sampling_reproduces(gen):
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=6)
    a = gen.generate(MSGS, spec, seeds=[1, 2, 3])
    b = gen.generate(MSGS, spec, seeds=[1, 2, 3])
    assert [c.text for c in a] == [c.text for c in b]
    assert [(c.prompt_index, c.sample_index, c.seed) for c in a[:2]] == [(0, 0, 1), (0, 1, 2)]
    assert all(c.ok and c.prompt_tokens > 5 and 0 < c.completion_tokens <= 6 for c in a)


def test_seeded_batch_larger_than_one_engine_step(gen):
    # The prompts exceed one step's token budget. With chunked prefill, a seeded prompt split
    # across steps killed the CPU engine (vLLM 0.32); the CPU defaults schedule whole prompts.
    long = [[{"role": "user", "content": f"Review {i}: " + "a slow but moving drama " * 20}]
            for i in range(6)]
    assert sum(len(gen.prompt_token_ids(m)) for m in long) > gen.args["max_num_batched_tokens"]
    assert gen.args["enable_chunked_prefill"] is False
    out = gen.generate(long, SamplingSpec(n=2, temperature=1.0, max_tokens=2),
                       seeds=list(range(6)))
    assert len(out) == 12 and all(c.ok for c in out), [c.error for c in out if not c.ok][:3]


def test_choice_structured_output_and_logprobs(gen):
    spec = SamplingSpec(n=1, temperature=1.0, max_tokens=8, seed=0, logprobs=3,
                        choices=("positive", "negative"))
    out = gen.generate(MSGS, spec)
    assert all(c.text in ("positive", "negative") for c in out), [(c.text, c.finish_reason) for c in out]
    assert all(len(c.logprobs) == c.completion_tokens for c in out)


def test_overlong_prompt_is_an_error_completion_not_a_failed_batch(gen):
    msgs = MSGS[:1] + [[{"role": "user", "content": "word " * 400}]] + MSGS[1:]
    out = gen.generate(msgs, SamplingSpec(n=2, temperature=0.7, max_tokens=3, seed=0))
    assert len(out) == 8
    bad = [c for c in out if not c.ok]
    assert [c.prompt_index for c in bad] == [1, 1] and "prompt_too_long" in bad[0].error
    assert all(c.ok for c in out if c.prompt_index != 1)


def test_lora_adapter_changes_the_output(gen):
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=8, seed=0)
    with_adapter = [c.text for c in gen.generate(MSGS, spec)]
    saved, gen.lora_request = gen.lora_request, None  # same engine, base weights only
    try:
        base = [c.text for c in gen.generate(MSGS, spec)]
    finally:
        gen.lora_request = saved
    assert with_adapter != base
    assert gen.chat(MSGS[:1], max_tokens=8) == with_adapter[:1]
