"""A real PEFT LoRA on the student's base whose B matrices hold Gaussian noise (a fresh LoRA is
the identity): a student measurably away from its base in seconds, with no training. Used where
a test needs adapters that answer differently (serve's versions, OPD's perturbed student)."""

from __future__ import annotations

from pathlib import Path

from distill.core.config import RunConfig


def noisy_adapter(cfg: RunConfig, folder: Path, seed: int, sigma: float) -> Path:
    import torch
    from peft import get_peft_model

    from distill.core.models import resolve
    from students import modeling

    torch.manual_seed(seed)
    model = get_peft_model(modeling.load_base(resolve(cfg.student.model).path, cfg.student),
                           modeling.lora_config(cfg.student))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn_like(param) * sigma
    model.save_pretrained(str(folder))
    return folder
