"""Pointwise scorers of one answer: verifier, built-in rules, and the LLM judge.

Curate uses them to choose a target among an example's samples (`curate.target: judge|rule`),
pairs to rank chosen over rejected (`pairs.scorer`). A scorer is `(example row, completion) ->
score in [0, 1]`; the judge also scores a batch in one engine call, and its scores are cached
in the run dir by (example_id, completion) so that pairs reuse what curate already asked.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

from distill import metrics
from distill.core.config import RunConfig, TaskConfig
from distill.core.errors import ConfigError
from distill.curation.labels import canonical_json, normalize_label

Scorer = Callable[[str, str], float]  # (prompt text, completion) -> score; the judge API
ExampleScorer = Callable[[dict[str, Any], str], float]  # (example row, completion) -> score
Chat = Callable[[list[list[dict[str, str]]]], list[str]]  # conversations -> one reply each


# --- verifier and rules ----------------------------------------------------------------------


def reference(example: dict[str, Any]) -> str | None:
    """What a verifier checks against: the gold label if known, else the curated target."""
    return example.get("label") or example.get("target")


def verifier(task: TaskConfig) -> ExampleScorer:
    if task.type == "free_text":
        raise ConfigError("config", ["pairs.scorer: verifier needs a classification or json task; "
                                     "use judge or rule for free text"])
    if task.type == "classification":
        labels = list(task.labels or [])

        def score_label(example: dict[str, Any], completion: str) -> float:
            ref = normalize_label(reference(example), labels)
            return float(ref is not None and normalize_label(completion, labels) == ref)
        return score_label

    def score_json(example: dict[str, Any], completion: str) -> float:
        """The answer's field-level F1 against the reference (eval's main metric): two valid
        answers that get different numbers of fields right differ, so they make a pair."""
        got = canonical_json(completion)
        if got is None:
            return 0.0
        ref = reference(example)
        if not ref:
            return 0.25  # valid JSON, nothing to check it against
        return metrics.field_f1_of([metrics.field_counts(got, ref)])
    return score_json


def _rule_valid_answer(task: TaskConfig) -> ExampleScorer:
    def score(example: dict[str, Any], completion: str) -> float:
        if task.type == "classification":
            return float(normalize_label(completion, task.labels or []) is not None)
        if task.type == "json":
            return float(canonical_json(completion) is not None)
        return float(bool(completion.strip()))
    return score


def _rule_exact_format(task: TaskConfig) -> ExampleScorer:
    """1: the answer and nothing else; 0.5: a valid answer with extra text; 0: no answer."""
    valid = _rule_valid_answer(task)

    def score(example: dict[str, Any], completion: str) -> float:
        if not valid(example, completion):
            return 0.0
        bare = completion.strip().strip(".!").casefold()
        if task.type == "classification":
            return 1.0 if bare in {label.casefold() for label in task.labels or []} else 0.5
        return 1.0 if task.type == "json" else 0.5
    return score


# Keep the names equal to distill.core.config.RULE_NAMES (checked by a test): the config
# refuses any other name when it is loaded.
RULES: dict[str, Callable[[TaskConfig], ExampleScorer]] = {
    "valid_answer": _rule_valid_answer,
    "exact_format": _rule_exact_format,
}


def rule(name: str, task: TaskConfig, key: str = "pairs.rule") -> ExampleScorer:
    if name not in RULES:
        raise ConfigError("config", [f"{key}: {name!r} is not one of {sorted(RULES)}"])
    return RULES[name](task)


# --- the judge -------------------------------------------------------------------------------


# Measured on the packaged 0.5B teacher: asked for "one integer from 0 (wrong) to 10
# (perfect)" it replied "1" to every answer; this wording gets scores that separate on-topic
# from off-topic answers.
JUDGE_PROMPT = (
    "Rate how good an answer is, from 0 (wrong or off-topic) to 10 (correct and complete).\n\n"
    "Task input:\n{text}\n\nAnswer to rate:\n{completion}\n\n{rubric}"
    "Reply with the score only, a single integer from 0 to 10."
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeScorer:
    """An LLM judge: renders the prompt (with `judge.rubric`, what a good answer is), asks
    `chat`, parses the first number / `scale`. `chat` answers a batch of conversations in one
    engine call (`distill.engines.chat`)."""

    def __init__(self, chat: Chat, rubric: str | None = None, scale: float = 10.0):
        self.chat = chat
        self.rubric = rubric
        self.scale = scale

    def messages(self, text: str, completion: str) -> list[dict[str, str]]:
        rubric = f"What a good answer is:\n{self.rubric.strip()}\n\n" if self.rubric else ""
        # str.replace, not format: task inputs and answers are full of braces (JSON).
        content = (JUDGE_PROMPT.replace("{rubric}", rubric).replace("{text}", text)
                   .replace("{completion}", completion))
        return [{"role": "user", "content": content}]

    def parse(self, reply: str) -> float:
        m = _NUMBER.search(reply or "")
        return min(max(float(m.group(0)) / self.scale, 0.0), 1.0) if m else 0.0

    def score_batch(self, items: Sequence[tuple[str, str]]) -> list[float]:
        if not items:
            return []
        replies = self.chat([self.messages(t, c) for t, c in items])
        return [self.parse(r) for r in replies]

    def __call__(self, text: str, completion: str) -> float:
        return self.score_batch([(text, completion)])[0]


def judge_identity(cfg: RunConfig) -> str:
    """What a cached score depends on: the judge's engine, its prompt, rubric and budget."""
    engine = (cfg.judge.engine or cfg.teacher).model_dump(mode="json")
    blob = json.dumps({"engine": engine, "prompt": JUDGE_PROMPT, "rubric": cfg.judge.rubric,
                       "max_tokens": cfg.judge.max_tokens, "seed": cfg.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class JudgeCache:
    """Judge scores by (example_id, completion), one JSON line each, for one judge identity.

    Append-only: a line is written after its batch is scored, so an interrupted run keeps what
    it paid for, and a torn last line is skipped on reading. Scores of another judge (other
    engine, rubric or budget) in the same file are ignored.
    """

    def __init__(self, path: Path | None, identity: str):
        self.path, self.identity = path, identity
        self.scores: dict[tuple[str, str], float] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    if rec["judge"] == identity:
                        self.scores[(rec["example_id"], rec["completion"])] = float(rec["score"])
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, found: dict[tuple[str, str], float]) -> None:
        self.scores.update(found)
        if self.path is None or not found:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for (example_id, completion), score in found.items():
                f.write(json.dumps({"judge": self.identity, "example_id": example_id,
                                    "completion": completion, "score": score}) + "\n")


class CachedJudge:
    """A batch judge over examples that asks only for the scores its cache lacks. The judge is
    made (its engine loaded) on the first miss, so a run whose scores are all cached loads no
    model."""

    def __init__(self, make_judge: Callable[[], JudgeScorer | Scorer], cache: JudgeCache):
        self.make_judge, self.cache = make_judge, cache
        self.judge: JudgeScorer | Scorer | None = None
        self.asked = 0  # completions sent to the judge in this process
        self.reused = 0  # completions answered from the cache

    def score_examples(self, items: Sequence[tuple[dict[str, Any], str]]) -> list[float]:
        """Scores of (example row, completion) items, in order."""
        keys = [(ex["example_id"], c) for ex, c in items]
        todo: dict[tuple[str, str], str] = {}
        for (ex, c), key in zip(items, keys):
            if key not in self.cache.scores and key not in todo:
                todo[key] = ex["text"]
        self.reused += sum(1 for k in keys if k not in todo)
        if todo:
            if self.judge is None:
                self.judge = self.make_judge()
            pending = [(text, key[1]) for key, text in todo.items()]
            if hasattr(self.judge, "score_batch"):
                scores = self.judge.score_batch(pending)
            else:
                scores = [self.judge(t, c) for t, c in pending]
            self.asked += len(pending)
            self.cache.add(dict(zip(todo, (float(s) for s in scores))))
        return [self.cache.scores[k] for k in keys]

    def __call__(self, example: dict[str, Any], completion: str) -> float:
        return self.score_examples([(example, completion)])[0]


def open_judge_scorer(cfg: RunConfig, engines: ExitStack, cache_path: Path | None,
                      judge: Scorer | None = None) -> CachedJudge:
    """The `judge:` section's judge (its own engine, else the teacher, through the engine
    builder, any backend) behind the run's score cache; the engine is loaded on the first
    score the cache lacks and closed by `engines`. A given `judge` callable replaces the
    engine; its scores are cached apart from the engine's (under its name)."""
    identity = judge_identity(cfg)
    if judge is not None:
        identity += "/" + getattr(judge, "__qualname__", type(judge).__qualname__)
        return CachedJudge(lambda: judge, JudgeCache(cache_path, identity))

    def make() -> JudgeScorer:
        from distill.engines import chat, open_judge

        generator = engines.enter_context(open_judge(cfg))
        return JudgeScorer(chat(generator, cfg.judge.max_tokens, cfg.seed), cfg.judge.rubric)
    return CachedJudge(make, JudgeCache(cache_path, identity))
