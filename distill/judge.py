"""Pairwise LLM judge: each student against the teacher, on the held-out rows of a free-text task.

For every row the judge reads the request, the rubric (`judge.rubric`) and the gold answer where
there is one, then two answers labelled A and B, and names the better one or a tie. It is asked
twice, the student's answer first (A) and then the teacher's first, so a judge that prefers a
position cancels out: a judge that always says "A" gives every row a tie.

Per row the student scores the mean over the two orders of win 1, tie 0.5, loss 0; the row is a
win above 0.5, a tie at 0.5, a loss below. A verdict that names neither answer nor a tie counts
as a tie and is counted as unparseable.

The judge's prompts and raw replies are kept, one line per (row, order), in
`<run>/eval/judge/<model>.jsonl`. A rerun asks only what is not there yet: a line is reused when
its prompt (request, both answers, reference, rubric) is the same, so a retrained student's new
answers are judged afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from distill import metrics
from distill.core.messages import Message

Ask = Callable[[list[list[Message]]], list[str]]  # conversations -> replies (engines.chat)
ORDERS = ("student_first", "teacher_first")
CHUNK = 64  # conversations per judge call; each chunk is saved before the next is asked

SYSTEM = ("You are an impartial judge. You compare two answers to the same request and decide "
          "which one is better: more correct, more complete, closer to what was asked. The "
          "order of the answers says nothing about their quality. Ignore length unless it "
          "makes an answer worse.")


@dataclass(frozen=True)
class Item:
    """One held-out row to judge: the request as the models saw it and the two answers."""

    example_id: str
    request: str
    student: str
    teacher: str
    reference: str | None = None  # the gold answer, where the task has one


def judge_messages(request: str, first: str, second: str, reference: str | None,
                   rubric: str | None) -> list[Message]:
    parts = [f"Request:\n<<<\n{request}\n>>>"]
    if reference is not None:
        parts.append(f"Reference answer (known to be correct):\n<<<\n{reference}\n>>>")
    if rubric:
        parts.append(f"What a good answer is:\n{rubric}")
    parts += [f"Answer A:\n<<<\n{first}\n>>>", f"Answer B:\n<<<\n{second}\n>>>",
              "Which answer is better? Reply with exactly one word: A, B, or tie."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


_TIE_WORDS = re.compile(r"\b(tie|tied|equal|equally|same|neither|draw)\b")
_ANSWER_X = re.compile(r"\b(?:answer|option|response)\s+([ab])\b|\b([ab])\s+is\s+better\b"
                       r"|\bbetter(?:\s+(?:answer|one|response))?\s+is\s+([ab])\b")
_LEADING = re.compile(r"^(?:final\s+)?(?:verdict|answer|winner|choice|better)?\s*[:\-]?\s*"
                      r"(?:answer\s+)?(a|b|tie)\b(?!\s+(?:tie|and|or|vs|=)\b)")


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from a judge's reply; None when it names neither (or both).

    Accepts "A", "**B**.", "Verdict: tie", "Answer B is better", "It's a tie"; the article in
    "a tie" is not answer A."""
    words = " ".join((text or "").replace("*", " ").replace("`", " ").split()).lower()
    words = words.strip(" .!\"'()[]")
    if not words:
        return None
    if words in ("a", "b"):
        return words.upper()
    if re.match(r"^(?:it'?s\s+|it\s+is\s+)?a\s+(?:tie|draw)\b", words):
        return "tie"
    if m := _LEADING.match(words):
        return m.group(1).upper() if m.group(1) != "tie" else "tie"
    named = {x.upper() for pair in _ANSWER_X.findall(words) for x in pair if x}
    if len(named) == 1:
        return named.pop()
    if not named and _TIE_WORDS.search(words):
        return "tie"
    return None


def student_points(order: str, verdict: str | None) -> float:
    """The student's points in one order: 1 if its position won, 0.5 tie or unparseable, 0."""
    if verdict not in ("A", "B"):
        return 0.5
    student_position = "A" if order == "student_first" else "B"
    return 1.0 if verdict == student_position else 0.0


def outcome(score: float) -> str:
    return "win" if score > 0.5 else "loss" if score < 0.5 else "tie"


def _key(messages: list[Message]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:20]


def read_records(path: Path) -> dict[str, dict]:
    """Saved verdicts by prompt key; a torn last line (a crash mid-write) is skipped."""
    found: dict[str, dict] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "key" in record:
            found[record["key"]] = record
    return found


def _requests(items: Sequence[Item], rubric: str | None) -> list[dict]:
    out = []
    for item in items:
        for order in ORDERS:
            first, second = ((item.student, item.teacher) if order == "student_first"
                             else (item.teacher, item.student))
            messages = judge_messages(item.request, first, second, item.reference, rubric)
            out.append({"key": _key(messages), "example_id": item.example_id, "order": order,
                        "messages": messages})
    return out


def _chunks(rows: list[dict], size: int) -> Iterable[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def ask_all(items: Sequence[Item], ask: Ask, rubric: str | None, cache: Path) -> list[dict]:
    """One record per (row, order), the saved ones reused; new ones appended to `cache` as
    each chunk is answered, so a crash loses at most one chunk."""
    saved = read_records(cache)
    requests = _requests(items, rubric)
    todo = [r for r in requests if r["key"] not in saved]
    if todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # A torn last line must not glue onto the next record.
        if cache.exists() and cache.stat().st_size and not cache.read_bytes().endswith(b"\n"):
            with cache.open("a", encoding="utf-8") as f:
                f.write("\n")
    for chunk in _chunks(todo, CHUNK):
        replies = ask([r["messages"] for r in chunk])
        with cache.open("a", encoding="utf-8") as f:
            for request, raw in zip(chunk, replies):
                record = {**request, "raw": raw, "verdict": parse_verdict(raw)}
                saved[record["key"]] = record
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return [saved[r["key"]] for r in requests]


def summarize(records: Sequence[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Win / tie / loss rates of the student against the teacher, its mean score with a 95%
    bootstrap CI, and how many verdicts could not be read."""
    points: dict[str, list[float]] = {}
    for r in records:
        points.setdefault(r["example_id"], []).append(student_points(r["order"], r["verdict"]))
    scores = [sum(p) / len(p) for p in points.values()]
    n = len(scores)
    counts = {o: sum(outcome(s) == o for s in scores) for o in ("win", "tie", "loss")}
    return {"n": n, **{o: c / n if n else 0.0 for o, c in counts.items()},
            "counts": counts,
            "score": metrics.bootstrap(metrics.mean, scores, scores, resamples, seed).to_dict(),
            "verdicts": len(records),
            "unparseable": sum(r["verdict"] is None for r in records)}


def judge_model(items: Sequence[Item], ask: Ask, rubric: str | None, cache: Path,
                resamples: int = 1000, seed: int = 0) -> dict:
    """Judge one student's answers against the teacher's (both orders), and summarise."""
    return summarize(ask_all(items, ask, rubric, cache), resamples, seed)
