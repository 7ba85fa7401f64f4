"""Render the config reference (every section, key, type, default, meaning) as Markdown.

`python -m distill.config_docs` prints it; the README embeds its output between markers and a
test keeps the two in sync.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from distill.core.config import RunConfig

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value not in ("", None) else f"`{value}`"


def _sections(model: type[BaseModel], prefix: str = ""):
    rows, nested = [], []
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = next((a for a in (ann, *typing.get_args(ann))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        key = f"{prefix}{name}"
        if sub is not None and typing.get_origin(ann) is not list:
            nested.append((key, sub))
            if prefix or model is not RunConfig:
                rows.append((key, sub.__name__, _default(field), field.description or ""))
            continue
        rows.append((key, _type_name(ann).replace("|", "\\|"), _default(field),
                     field.description or ""))
    return rows, nested


def render() -> str:
    out = []
    rows, nested = _sections(RunConfig)
    out.append("| key | type | default | meaning |\n|---|---|---|---|")
    out += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
    queue = list(nested)
    while queue:
        name, model = queue.pop(0)
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        out.append(f"\n**`{name}`**{': ' + doc if doc else ''}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        rows, sub = _sections(model, prefix=f"{name}.")
        out += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
        queue = sub + queue
    return "\n".join(out)


def sync_readme(path: Path) -> bool:
    """Rewrite the reference between the markers; returns whether anything changed."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render()}\n{END}{tail}"
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        sync_readme(Path(sys.argv[2] if len(sys.argv) > 2 else "README.md"))
    else:
        print(render())
