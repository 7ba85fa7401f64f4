"""Fold a LoRA adapter into its base model: a plain transformers folder any engine serves.

Used by `distill export` (export.merged) and by the engine builder, which serves each tuned
student merged (`student.serve: merged`), how a one-task student ships.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MERGE_STAMP = "distill_merge.json"  # written into every merged folder: base, adapter, dtype


def merge(base_path: str, adapter: Path, dest: Path, dtype_name: str) -> Path:
    """Adapter folded into the unquantized base weights: a plain transformers folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, device_map={"": "cpu"})
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".merged.") as tmp:
        staged = Path(tmp) / "merged"
        merged.save_pretrained(staged, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staged)
        (staged / MERGE_STAMP).write_text(json.dumps(
            {"base": base_path, "adapter": str(adapter), "dtype": dtype_name}, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)  # a killed export never leaves a half-written model behind
    return dest
