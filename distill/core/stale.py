"""Which config keys changed since a stage finished, in words a user can act on.

A finished stage's output is reused by `distill run` and by the stages after it. Reusing it
under another config would mix two configs in one run silently, so the stage table
(distill/pipeline.py) asks here what changed and refuses with the changed keys. The diff is
over the resolved configs (defaults filled in) the manifest records per config hash.

Keys that only say where or how fast things run never make a stage stale (`ALLOWED`). Values
of keys that may hold a secret are never printed.
"""

from __future__ import annotations

import json
import re
from typing import Any, get_args

# Where or how fast, never what: the run dir reached by another path (`distill submit` ships
# it absolute), the Ray cluster, engine-pool size and CPU shares (each row has its own seed),
# crash and HTTP retry handling, an endpoint's concurrency and timeout.
ALLOWED = (
    "output_dir", "ray",
    "teacher.replicas", "teacher.cpus_per_replica", "teacher.max_restarts",
    "teacher.endpoint.max_concurrency", "teacher.endpoint.timeout_s",
    "teacher.endpoint.max_retries",
    "sft.cpus_per_worker", "dpo.cpus_per_worker",
    "serve", "drift",  # read after training, by `distill serve` and `distill drift` only
)

# A key named like a credential (api_key, hf_token, password, ...) may hold one: masked.
# `*_env` keys hold the NAME of an environment variable, which is safe and useful to show.
_SECRET = re.compile(r"(api_?key|token|secret|passw|credential|auth)", re.IGNORECASE)
MASK = "***"


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def allowed(path: str) -> bool:
    return any(under(path, p) for p in ALLOWED)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaf values; a list is one value (its order matters)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) for every key whose value differs, in path order."""
    before, after = flatten(old), flatten(new)
    out = []
    for path in sorted(set(before) | set(after)):
        if path in before and path in after:
            if before[path] != after[path]:
                out.append((path, before[path], after[path]))
        elif path in before and _one_sided_change(path, before[path], after):
            out.append((path, before[path], None))
        elif path in after and _one_sided_change(path, after[path], before):
            out.append((path, None, after[path]))
    return out


def _one_sided_change(path: str, value: Any, other: dict[str, Any]) -> bool:
    """A key on one side only: a change, unless the other side has it as sub-keys (shown
    instead) or it is a config field the other record lacks because the schema grew since
    and `value` is its default (the new key could not have been set; its default is what
    the old code did). Set to anything else, the new key is a change."""
    parent = path.rpartition(".")[0]
    while parent:  # null or {} then a mapping: teacher.endpoint, teacher.engine_kwargs
        if parent in other:
            return True
        parent = parent.rpartition(".")[0]
    if any(under(p, path) for p in other):
        return False
    found, default = _schema_default(path)
    return not found or _json(value) != _json(default)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _schema_default(path: str) -> tuple[bool, Any]:
    """(whether `path` names a field of the config schema, not a key inside a free mapping
    such as teacher.engine_kwargs or task.json_schema; that field's default)."""
    from pydantic import BaseModel

    from distill.core.config import RunConfig

    model: Any = RunConfig
    default: Any = None
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False, None
        field = fields[part]
        default = field.get_default(call_default_factory=True)
        model = next((a for a in (get_args(field.annotation) or (field.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    return True, default


def is_secret(path: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return bool(_SECRET.search(last)) and not last.endswith("_env")


def show(path: str, value: Any, width: int = 60) -> str:
    if value is None:
        return "null"
    if is_secret(path):
        return MASK
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe(change: tuple[str, Any, Any]) -> str:
    path, old, new = change
    return f"{path}: {show(path, old)} -> {show(path, new)}"
