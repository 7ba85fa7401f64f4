"""Where the student's trained adapters are, for later stages (export, eval, bench)."""

from __future__ import annotations

from pathlib import Path

from distill.rundir import Run

ADAPTER_FILES = ("adapter_config.json",)


def adapter_dir(run: Run, stage: str) -> Path | None:
    """`<stage>/adapter/` if that stage finished writing it."""
    folder = run.dir / stage / "adapter"
    if all((folder / name).is_file() for name in ADAPTER_FILES) and any(
        folder.glob("adapter_model.*")
    ):
        return folder
    return None


def final_adapter(run: Run) -> Path | None:
    """The last adapter trained: DPO's if present, else SFT's, else None (base model only)."""
    return adapter_dir(run, "dpo") or adapter_dir(run, "sft")
