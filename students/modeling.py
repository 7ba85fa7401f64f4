"""Loading the student: base weights (4-bit, 8-bit or plain), tokenizer, LoRA config.

One place decides device, dtype and quantization, so SFT, DPO, export, tests and the benchmark
load the student the same way on a CPU and on a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from distill.core.config import StudentConfig
from distill.core.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its device and the dtype it computes in."""

    device: str  # "cpu" or "cuda:N"
    dtype_name: str  # float32 | bfloat16 | float16

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def placement(student: StudentConfig) -> Placement:
    import torch

    if torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        dtype = "bfloat16" if student.dtype == "auto" else student.dtype
    else:
        # This class of CPU (AVX2, no AVX-512 BF16) runs bf16 matmuls on slow fallback paths.
        device = "cpu"
        dtype = "float32" if student.dtype == "auto" else student.dtype
    return Placement(device=device, dtype_name=dtype)


def quantization_config(student: StudentConfig, where: Placement):
    """BitsAndBytesConfig for nf4/int8, None for plain LoRA."""
    if student.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if student.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=student.double_quant,
        bnb_4bit_compute_dtype=where.dtype,
    )


def model_kwargs(student: StudentConfig, where: Placement) -> dict[str, Any]:
    """from_pretrained kwargs. The model lands on this worker's own device (a 4-bit model
    can't be moved after loading)."""
    kwargs: dict[str, Any] = {"dtype": where.dtype, "device_map": {"": where.device}}
    quant = quantization_config(student, where)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if student.attn_implementation:
        kwargs["attn_implementation"] = student.attn_implementation
    return kwargs


def load_base(path: str, student: StudentConfig, where: Placement | None = None):
    from transformers import AutoModelForCausalLM

    where = where or placement(student)
    model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs(student, where))
    model.config.use_cache = False  # no KV cache while training
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ConfigError("student.model", [f"{path}: the student tokenizer has no chat template"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(student: StudentConfig):
    from peft import LoraConfig

    lora = student.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )


def keep_adapter_dtype(model, where: Placement) -> None:
    """TRL casts LoRA weights of a quantized model to bf16 (the QLoRA paper's recipe). On a CPU
    that computes in float32 this only adds slow bf16 matmuls, so put them back."""
    if where.on_gpu or where.dtype_name == "bfloat16":
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != where.dtype:
            param.data = param.data.to(where.dtype)


def precision_args(where: Placement) -> dict[str, Any]:
    """TrainingArguments for device and mixed precision."""
    if not where.on_gpu:
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"bf16": where.dtype_name == "bfloat16", "fp16": where.dtype_name == "float16"}
