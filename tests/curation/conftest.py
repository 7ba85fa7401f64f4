"""Fixtures for curation tests; the builders live in curation_helpers."""

from __future__ import annotations

from typing import Any

import pytest

from curation_helpers import make_config
from distill.core.rundir import Run


@pytest.fixture
def make_run(tmp_path):
    def build(out: str = "run", **sections: Any) -> Run:
        return Run(make_config(tmp_path / out, **sections))
    return build
