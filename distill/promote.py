"""`distill promote` (and `distill refresh --rollback`): point promoted.json at an evaluated
version. Nothing is deleted on promotion, so every earlier version stays available.
"""

from __future__ import annotations

from pathlib import Path

from distill.core import versions as V
from distill.core.config import RunConfig
from distill.core.errors import DistillError


def promote_version(cfg: RunConfig, version: str, reason: str = "manual promotion") -> dict:
    """Point promoted.json at an evaluated version (a rollback is this, to an older one)."""
    base = Path(cfg.output_dir)
    record = V.student_record(base, version)
    if record is None:
        raise DistillError(f"{V.model_dir(base, version)}: version {version} has no evaluated "
                           "student (eval/results.json and an adapter) to promote")
    return V.promote(base, record, reason)


def rollback(cfg: RunConfig) -> dict:
    """Promote again the student that was promoted before the current one."""
    base = Path(cfg.output_dir)
    current = V.read_promoted(base)
    if not current or not current.get("previous_version"):
        raise DistillError(f"{V.promoted_path(base)}: no earlier promoted student to roll back to")
    return promote_version(cfg, current["previous_version"],
                           f"rollback from {current['version']}")
