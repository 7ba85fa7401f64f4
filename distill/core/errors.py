"""Named errors. The CLI prints these as one clear message, never a traceback."""

from __future__ import annotations


class DistillError(Exception):
    """Base class: anything the user can fix by changing input, config or environment."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # The message as raised: Ray Data appends its retry advice to the args of an
        # exception raised in a UDF, which is not what the user needs to read. (The
        # attribute travels with the exception when Ray pickles it back to the driver.)
        return getattr(self, "message", None) or super().__str__()


class ConfigError(DistillError):
    """A run config is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")

    def __reduce__(self):
        # Raised inside Ray actors too (a key variable unset on a worker): Ray pickles the
        # exception back to the driver, and the default pickling would call __init__ with
        # the message alone.
        return (type(self), (self.source, self.problems))


class DataError(DistillError):
    """Input data is malformed: names the file and, where known, the line."""


class ModelSourceError(DistillError):
    """A model reference can't be resolved, or a packaged file fails its hash check."""


class StageNotReadyError(DistillError):
    """A stage needs the output of an earlier stage that has not run yet."""


class StaleStageError(DistillError):
    """A finished stage would be reused under a config other than the one it ran under."""


class TeacherCheckError(DistillError):
    """The teacher (or its data) failed a quality check: distilling it would teach its errors."""


class EndpointError(DistillError):
    """An OpenAI-compatible endpoint failed for good: unreachable after the retries, or it
    refused the key. Not a bad prompt: the job stops (so a rerun resumes) instead of
    quarantining every prompt."""


class EngineError(DistillError):
    """An engine failed in a way no retry fixed: its Ray actor died more often than
    `teacher.max_restarts`, or it raised the same error again."""
