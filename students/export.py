"""Export stage: the final adapter with its model card, and optionally a merged model.

`export/adapter/` is a copy of the last trained adapter (DPO's, else SFT's) with a card; engines
that take LoRA adapters (vLLM, SGLang) serve it on the base model. `export/merged/` (with
`export.merged: true`) folds the adapter into an unquantized copy of the base for engines that
don't take adapters.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from distill.errors import StageNotReadyError
from distill.models import resolve
from distill.rundir import Run, write_json_atomic
from students import card
from students.artifacts import final_adapter


def run_export(run: Run) -> dict:
    adapter = final_adapter(run)
    if adapter is None:
        raise StageNotReadyError(f"no trained adapter in {run.dir}/sft or /dpo: train first")
    base = resolve(run.cfg.student.model)
    out = run.stage_dir("export")
    exported = _copy_atomic(adapter, out / "adapter")
    stage = adapter.parent.name
    metrics = run.manifest.get("summaries", {}).get(stage, {})
    front = card.read_card(adapter) if (adapter / "README.md").is_file() else {}
    info = front.get("distill", {})
    card.write_card(exported, stage=stage, base_model=run.cfg.student.model, base_path=base.path,
                    dataset=info.get("dataset", "?"),
                    dataset_sha256=info.get("dataset_sha256", "?"),
                    config=run.cfg.resolved(), metrics=metrics,
                    parent=info.get("parent_adapter"))
    summary = {"adapter": str(exported), "from_stage": stage,
               "adapter_mb": round(_size_mb(exported), 2), "merged": None}
    if run.cfg.export.merged:
        merged = merge(base.path, exported, out / "merged", run.cfg.export.merged_dtype)
        summary.update(merged=str(merged), merged_mb=round(_size_mb(merged), 1))
    write_json_atomic(out / "export.json", summary)
    return summary


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
        (staged / "distill_merge.json").write_text(json.dumps(
            {"base": base_path, "adapter": str(adapter), "dtype": dtype_name}, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)  # a killed export never leaves a half-written model behind
    return dest


def _copy_atomic(src: Path, dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
