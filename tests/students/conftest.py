"""Fixtures for the student tests."""

from __future__ import annotations

import pytest
from student_data import build_run


@pytest.fixture
def make_run(tmp_path):
    def _make(name: str = "run", pairs: bool = False, n: int = 48, **sections):
        return build_run(tmp_path / name, pairs=pairs, n=n, **sections)

    return _make
