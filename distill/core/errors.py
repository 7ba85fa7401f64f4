"""Named errors. The CLI prints these as one clear message, never a traceback."""

from __future__ import annotations


class DistillError(Exception):
    """Base class: anything the user can fix by changing input, config or environment."""


class ConfigError(DistillError):
    """A run config is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


class DataError(DistillError):
    """Input data is malformed: names the file and, where known, the line."""


class ModelSourceError(DistillError):
    """A model reference can't be resolved, or a packaged file fails its hash check."""


class StageNotReadyError(DistillError):
    """A stage needs the output of an earlier stage that has not run yet."""


class TeacherCheckError(DistillError):
    """The teacher (or its data) failed a quality check: distilling it would teach its errors."""
