"""Which version answers a request, from the `model` it names.

    <task>          the promoted version (promoted.json; before any promotion, the first run)
    <task>@vNNNN    that version (v0000 is the first run's own student)

The default is read from promoted.json whenever that file changes, so `distill promote` and
`distill refresh --rollback` take effect on the next request. `--version V` pins the default.
"""

from __future__ import annotations

from pathlib import Path

from distill.core import versions as V
from distill.core.errors import DistillError


class UnknownModel(DistillError):
    """The request's `model` names no served task or version."""


class Routes:
    def __init__(self, base: Path, task: str, pinned: str | None = None):
        self.base, self.task, self.pinned = Path(base), task, pinned
        self.records: dict[str, dict] = {}
        self._promoted_stamp: int | None = None
        self._promoted: str | None = None
        self.scan()

    def scan(self) -> dict[str, dict]:
        """Every evaluated version with an adapter (v0000 first); new refreshes appear here."""
        found = {}
        for name in [V.BASE_VERSION] + [d.name for _, d in V.versions(self.base)]:
            if (record := V.student_record(self.base, name)) is not None:
                found[name] = record
        self.records = found
        return found

    def record(self, version: str) -> dict:
        if version not in self.records:
            self.scan()  # a refresh finished since the last scan
        if version not in self.records:
            raise UnknownModel(f"version {version} has no evaluated student under {self.base} "
                               f"(served: {', '.join(self.names())})")
        return self.records[version]

    def default_version(self) -> str:
        if self.pinned:
            return self.pinned
        path = V.promoted_path(self.base)
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp != self._promoted_stamp or self._promoted is None:
            promoted = V.read_promoted(self.base)
            self._promoted_stamp = stamp
            self._promoted = promoted["version"] if promoted else (
                V.BASE_VERSION if V.BASE_VERSION in self.records else None)
        if self._promoted is None:
            raise UnknownModel(f"{self.base}: no promoted student and no evaluated first run")
        return self._promoted

    def resolve(self, model: str | None) -> str:
        """The version a request's `model` names (None or "" names the task's default)."""
        name = model or self.task
        if name == self.task:
            return self.default_version()
        task, sep, version = name.partition("@")
        if task != self.task or not sep or not V.VERSION_RE.match(version):
            raise UnknownModel(f"unknown model {name!r}: this server answers {self.task!r} "
                               f"(the promoted student) or {self.task}@vNNNN "
                               f"(served: {', '.join(self.names())})")
        self.record(version)
        return version

    def names(self) -> list[str]:
        return [self.task] + [f"{self.task}@{v}" for v in self.records]
