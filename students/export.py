"""Export stage: the final adapter with its model card, and optionally a merged model.

`export/adapter/` is a copy of the last trained adapter (DPO's, else SFT's) with a card; engines
that take LoRA adapters (vLLM, SGLang) serve it on the base model. `export/merged/` (with
`export.merged: true`) folds the adapter into an unquantized copy of the base for engines that
don't take adapters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from distill.core.errors import StageNotReadyError
from distill.core.io import write_json_atomic
from distill.core.rundir import Run, run_tags
from students import card
from students.merge import merge
from students.modeling import training_base


def run_export(run: Run) -> dict:
    adapter = run.paths.final_adapter()
    if adapter is None:
        raise StageNotReadyError(f"no trained adapter in {run.paths.seed_root}/sft or /dpo: train first")
    base = training_base(run.cfg, run.paths)
    exported = _copy_atomic(adapter, run.paths.adapter("export"))
    stage = adapter.parent.name
    metrics = run.summary(stage) or {}
    front = card.read_card(adapter) if (adapter / "README.md").is_file() else {}
    info = front.get("distill", {})
    card.write_card(exported, stage=stage, base_model=run.cfg.student.model, base_path=base.path,
                    dataset=info.get("dataset", "?"),
                    dataset_sha256=info.get("dataset_sha256", "?"),
                    config=run.cfg.resolved(), metrics=metrics,
                    parent=info.get("parent_adapter"), tags=run_tags(run))
    summary = {"adapter": str(exported), "from_stage": stage,
               "adapter_mb": round(_size_mb(exported), 2), "merged": None}
    if run.cfg.export.merged:
        merged = merge(base.path, exported, run.paths.export_merged, run.cfg.export.merged_dtype)
        summary.update(merged=str(merged), merged_mb=round(_size_mb(merged), 1))
    write_json_atomic(run.paths.export_summary, summary)
    return summary


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
