"""Building test configs as dicts (importable from every test folder: tests/ holds conftest.py,
so pytest puts it on sys.path)."""

from __future__ import annotations

from typing import Any

CURATE_PARTS = ("filters", "dedup", "decontam")  # keyword names for the curate: subsections


def merge_sections(base: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """Overlay keyword sections on a config dict; filters/dedup/decontam go under curate."""
    for name, values in sections.items():
        target = base.setdefault("curate", {}) if name in CURATE_PARTS else base
        if isinstance(values, dict):
            target[name] = {**target.get(name, {}), **values}
        else:
            target[name] = values
    return base
