"""QLoRA on a CPU: a pass without gradients (the held-out loss before training) must not change
the gradients training gets. bitsandbytes 0.50 repacks 4-bit weights for inference on CPUs with
AVX512-BF16 and then runs training through a kernel with no backward; students/modeling.py
turns that off. Real 4-bit model, real peft."""

from __future__ import annotations

import pytest
import torch

from distill.core.config import StudentConfig
from distill.core.models import resolve
from students import modeling


def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_an_eval_pass_leaves_qlora_gradients_unchanged():
    from peft import get_peft_model

    student = StudentConfig(model="packaged:smollm2-135m-instruct", quantization="nf4",
                            lora={"r": 8, "alpha": 16, "dropout": 0.0})
    path = resolve(student.model).path
    tokenizer = modeling.load_tokenizer(path)
    model = get_peft_model(modeling.load_base(path, student), modeling.lora_config(student))
    batch = tokenizer(["The film was a delight from start to finish. Sentiment: positive"],
                      return_tensors="pt")
    before = _grads(model, batch)
    # MLP inputs get their gradient only through down_proj's 4-bit matmul (its LoRA B is 0).
    up = next(n for n in before if "layers.0.mlp.up_proj.lora_B" in n)
    assert before[up].abs().sum() > 0

    model.eval()
    with torch.no_grad():
        model(**batch)
    after = _grads(model, batch)

    assert after.keys() == before.keys()
    for name in before:
        assert torch.allclose(after[name], before[name], rtol=1e-3, atol=1e-6), name
