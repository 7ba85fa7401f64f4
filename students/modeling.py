"""Loading the student: base weights (4-bit, 8-bit or plain), tokenizer, LoRA config.

One place decides device, dtype and quantization, so SFT, DPO, export, tests and the benchmark
load the student the same way on a CPU and on a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig, StudentConfig
from distill.core.errors import ConfigError, StageNotReadyError
from distill.core.models import ResolvedModel, resolve

PRUNE_INFO = "distill_prune.json"  # written beside a pruned student's weights (students/prune.py)


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
    keep_4bit_weights_trainable(model)
    return model


def keep_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight into an
    inference layout the first time it runs without gradients (our held-out loss before
    training does), and from then on every matmul, in training too, takes that inference kernel,
    which has no backward: gradients stop at every quantized layer, and QLoRA's loss rose
    instead of falling (quickstart SFT: held-out loss 5.0 -> 6.1; plain LoRA 5.2 -> 0.2).
    Returns the number of layers changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


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


def training_base(cfg: RunConfig, paths: RunPaths) -> ResolvedModel:
    """The model the student's adapters are trained on: the run's pruned copy with
    `prune.layers`, else the configured student."""
    if not cfg.prune.layers:
        return resolve(cfg.student.model)
    folder = paths.pruned_student
    if not (folder / PRUNE_INFO).is_file():
        raise StageNotReadyError(f"{folder} not found: run the prune stage first "
                                 "(distill train prune)")
    return ResolvedModel(ref=f"{cfg.student.model} (pruned: {folder})", kind="local",
                         path=str(folder))
