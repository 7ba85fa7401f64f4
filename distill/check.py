"""Stage `check` (`distill check`, and the first step of `distill generate`): is this teacher
worth distilling?

A seeded sample of training prompts (never the held-out set) is answered by the teacher exactly
as generation will ask it (same prompt, same structured output, greedy). With gold labels or
references, the teacher is scored against the gold and against trivial baselines on the same
items: always answering the majority label, and the prompted base student. The teacher must
beat the majority label significantly (one-sided paired test) and reach `teacher.min_quality`;
one label taking most answers while the gold does not is a collapse. Without gold, only the
answers' label distribution (classification) or their diversity (free text, JSON) is checked.

The answers are cached under a fingerprint of everything that shapes them, so rerunning with
a different decision setting (`check.on_fail`, `check.alpha`, `teacher.min_quality`) asks no
engine again.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from distill.core.config import RunConfig
from distill.core.errors import StageNotReadyError, TeacherCheckError
from distill.core.io import read_json, write_json_atomic
from distill.core.messages import teacher_messages
from distill.core.rundir import Run
from distill.curation.collapse import check_labels, enforce
from distill.curation.filters import answer_key
from distill.curation.labels import normalize_label
from distill.data import Example, majority_label, read_examples
from distill.decision import ITEM_SCORES
from distill.stats import compare, mean_ci

console = Console()
MIN_SAMPLE = 20  # below this a paired test has next to no power: the check says so and skips
METRIC = {task_type: name for task_type, (name, _) in ITEM_SCORES.items()}
ADVICE = ("put the instruction after the input (task.template: \"{input}\\n\\n{instruction}\"), "
          "add few-shot examples (task.few_shot), or use a stronger teacher (teacher.model); "
          "to go on anyway: --set check.on_fail=warn (the verdict will then not rank students "
          "against this teacher)")


@dataclass
class Answers:
    """What the engines said on the sample: the expensive part, cached by fingerprint."""

    fingerprint: str
    example_ids: list[str]
    gold: list[str | None]
    teacher: list[str]
    student: list[str] | None


# --- the sample and the answers ------------------------------------------------------------


def sample_prompts(run: Run) -> list[Example]:
    """A seeded sample of training prompts, preferring those with gold."""
    path = run.paths.train_prompts
    if not path.is_file():
        raise StageNotReadyError(f"{path} not found: run the prompts stage first")
    train = read_examples(path)
    with_gold = [ex for ex in train if ex.label is not None]
    pool = with_gold or train
    k = min(run.cfg.check.sample_size, len(pool))
    return random.Random(run.cfg.seed).sample(pool, k)


def fingerprint(cfg: RunConfig, sample: list[Example]) -> str:
    blob = json.dumps({"task": cfg.task.model_dump(mode="json"),
                       "teacher": cfg.teacher.model_dump(mode="json", exclude={"min_quality"}),
                       "generate": cfg.generate.model_dump(mode="json"),
                       "student": cfg.student.model if cfg.check.student_baseline else None,
                       "eval_max_tokens": cfg.answer_tokens,
                       "sample": [ex.example_id for ex in sample]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ask_engines(run: Run, sample: list[Example], key: str) -> Answers:
    """Greedy answers of the teacher (as generation asks it) and the prompted base student."""
    from distill.engines import chat, open_student, open_teacher
    from teachers.generate import sampling_spec

    cfg = run.cfg
    spec = replace(sampling_spec(run), n=1, temperature=0.0, seed=cfg.seed, logprobs=None)
    with open_teacher(cfg) as teacher:
        completions = teacher.generate([teacher_messages(cfg.task, ex.text) for ex in sample],
                                       spec)
        teacher_answers = [c.text if c.ok else "" for c in completions]
    student_answers = None
    if cfg.check.student_baseline:
        with open_student(cfg) as student:
            ask = chat(student, cfg.answer_tokens, seed=cfg.seed)
            student_answers = ask([teacher_messages(cfg.task, ex.text, few_shot=False)
                                   for ex in sample])
    return Answers(key, [ex.example_id for ex in sample], [ex.label for ex in sample],
                   teacher_answers, student_answers)


def cached_answers(run: Run, sample: list[Example]) -> Answers:
    key = fingerprint(run.cfg, sample)
    saved = read_json(run.paths.teacher_check) or {}
    if saved.get("answers", {}).get("fingerprint") == key:
        console.print("[dim]check: reusing the answers of the last check (same teacher, "
                      "prompt and sample)[/dim]")
        return Answers(**saved["answers"])
    return ask_engines(run, sample, key)


# --- scoring -------------------------------------------------------------------------------


def parse(cfg: RunConfig, answer: str) -> str | None:
    """The answer as curation reads it (a label, canonical JSON, stripped text)."""
    return answer_key(cfg.task, answer)


def item_scores(cfg: RunConfig, parsed: list[str | None], gold: list[str]) -> list[float]:
    """Per-item score against the gold, as the ship decision scores held-out rows
    (distill/decision.py): 0/1 for labels, the row's field-level F1 for JSON, ROUGE-L for
    free text."""
    _, score = ITEM_SCORES[cfg.task.type]
    return score([{"parsed": p, "gold": g} for p, g in zip(parsed, gold)])


def estimate(scores: list[float], seed: int) -> dict[str, float]:
    low, high = mean_ci(scores, seed=seed)
    value = sum(scores) / len(scores) if scores else 0.0
    return {"value": round(value, 4), "ci_low": round(low, 4), "ci_high": round(high, 4)}


def judge(run: Run, answers: Answers) -> dict[str, Any]:
    """Scores, paired tests and the decision, from the engines' answers."""
    cfg, check = run.cfg, run.cfg.check
    teacher = [parse(cfg, a) for a in answers.teacher]
    has_gold = all(g is not None for g in answers.gold)
    result: dict[str, Any] = {"n": len(teacher), "gold": has_gold, "metric": METRIC[cfg.task.type],
                              "template": cfg.task.template, "failures": [], "warnings": []}
    if cfg.task.type == "classification":
        labels = check_labels(teacher, answers.gold if has_gold else None, cfg.task.labels or [],
                              check.collapse_warn, check.collapse_stop)
        result["labels"] = labels.to_dict()
        if labels.level != "ok":
            result["failures" if labels.level == "stop" else "warnings"].append(
                "label collapse: " + labels.describe("on the check sample"))
    if has_gold:
        _score_against_gold(run, answers, teacher, result)
    elif cfg.task.type != "classification":
        distinct = len({" ".join((t or "").split()).lower() for t in teacher}) / max(len(teacher), 1)
        result["distinct_answers"] = round(distinct, 4)
        if distinct < check.min_distinct:
            result["failures"].append(
                f"only {distinct:.0%} of the teacher's answers are distinct (check.min_distinct "
                f"{check.min_distinct:.0%}): it gives much the same answer to different inputs")
    result["passed"] = not result["failures"]
    result["accepted"] = result["passed"] or check.on_fail == "warn"
    return result


def _score_against_gold(run: Run, answers: Answers, teacher: list[str | None],
                        result: dict[str, Any]) -> None:
    cfg, check, seed = run.cfg, run.cfg.check, run.cfg.seed
    gold = [str(g) for g in answers.gold]
    majority = majority_label(read_examples(run.paths.train_prompts))
    t_scores = item_scores(cfg, teacher, gold)
    m_scores = item_scores(cfg, [parse(cfg, majority)] * len(gold), gold)
    vs_majority = compare(t_scores, m_scores, seed=seed)
    result.update(teacher=estimate(t_scores, seed),
                  majority={"answer": majority, **estimate(m_scores, seed)},
                  teacher_vs_majority=vs_majority.to_dict())
    if answers.student is not None:
        s_scores = item_scores(cfg, [parse(cfg, a) for a in answers.student], gold)
        vs_student = compare(t_scores, s_scores, seed=seed)
        result.update(student_base=estimate(s_scores, seed),
                      teacher_vs_student=vs_student.to_dict())
        if vs_student.diff <= 0:
            result["warnings"].append(
                f"the prompted base student ({vs_student.b_mean:.3f}) does as well as the "
                f"teacher ({vs_student.a_mean:.3f}): distillation has nothing to add")
    metric = result["metric"]
    if vs_majority.p_value >= check.alpha:
        result["failures"].append(
            f"the teacher is not significantly better than always answering {majority!r}: "
            f"{metric} {vs_majority.a_mean:.3f} {_ci(result['teacher'])} vs "
            f"{vs_majority.b_mean:.3f} ({vs_majority.method}, one-sided p={vs_majority.p_value:.3g}"
            f", check.alpha {check.alpha})")
    floor = cfg.teacher.min_quality
    if floor is not None and vs_majority.a_mean < floor:
        result["failures"].append(f"the teacher's {metric} {vs_majority.a_mean:.3f} "
                                  f"{_ci(result['teacher'])} is below teacher.min_quality {floor}")


def _ci(est: dict[str, float]) -> str:
    return f"[{est['ci_low']:.2f}, {est['ci_high']:.2f}]"


# --- the stage -----------------------------------------------------------------------------


def failure_message(run: Run, result: dict[str, Any]) -> str:
    what = (f"{result['n']} training prompts with gold" if result["gold"]
            else f"{result['n']} training prompts, no gold")
    lines = [f"teacher check failed ({what}; details in {run.paths.teacher_check}):"]
    lines += [f"  - {f}" for f in result["failures"]]
    if "student_base" in result:
        lines.append(f"  (the prompted base student scored {result['student_base']['value']:.3f} "
                     f"{_ci(result['student_base'])})")
    lines.append(f"What to try: {ADVICE}.")
    return "\n".join(lines)


def show(result: dict[str, Any]) -> None:
    if not result["gold"]:
        return
    table = Table(title=f"teacher check: {result['metric']} on {result['n']} training prompts")
    for col in ("answered by", result["metric"], "95% CI"):
        table.add_column(col)
    rows = [("teacher", result["teacher"]),
            (f"always {result['majority']['answer']!r}", result["majority"])]
    if "student_base" in result:
        rows.append(("base student (prompted)", result["student_base"]))
    for name, est in rows:
        table.add_row(name, f"{est['value']:.3f}", _ci(est))
    console.print(table)


def run_check(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    if not cfg.check.enabled:
        return {"skipped": "check.enabled is false"}
    sample = sample_prompts(run)
    if len(sample) < MIN_SAMPLE:
        reason = (f"only {len(sample)} training prompts: too few for the teacher check "
                  f"(it needs {MIN_SAMPLE})")
        console.print(f"[yellow]warning: {reason}; skipped[/yellow]")
        return {"skipped": reason}
    answers = cached_answers(run, sample)
    result = judge(run, answers)
    write_json_atomic(run.paths.teacher_check, {**result, "answers": answers.__dict__})
    show(result)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning: {warning}[/yellow]")
    if not result["passed"]:
        message = failure_message(run, result)
        if cfg.check.on_fail == "stop":
            raise TeacherCheckError(message)
        console.print(f"[yellow]{message}\n(check.on_fail=warn: going on)[/yellow]")
    return {k: v for k, v in result.items() if k not in ("template",)}


# --- the watch after generation --------------------------------------------------------------


def watch_generation(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """After `generate`: the teacher's label distribution over every completion, next to the
    gold of the prompts (or the prior). A collapse warns, or stops above `check.collapse_stop`
    (the completions stay on disk: a rerun with `check.on_fail=warn` generates nothing again)."""
    import pyarrow.parquet as pq

    cfg = run.cfg
    if cfg.task.type != "classification":
        return summary
    answers, gold = [], []
    for path in sorted(run.paths.generate_shards.glob("shard-*.parquet")):
        table = pq.read_table(path, columns=["completion", "label"]).to_pydict()
        answers += [normalize_label(c, cfg.task.labels or []) for c in table["completion"]]
        gold += table["label"]
    has_gold = bool(gold) and None not in gold
    found = check_labels(answers, gold if has_gold else None, cfg.task.labels or [],
                         cfg.check.collapse_warn, cfg.check.collapse_stop)
    summary["labels"] = found.to_dict()
    # Without gold the reference is a guessed prior: the watch warns, the check (on a sample
    # before generating) is where an all-one-label teacher stops.
    message = enforce(found, cfg.check, "in the generated completions",
                      f"The completions are kept in {run.paths.generate_shards}. What to try: "
                      f"{ADVICE}.")
    if message:
        summary["warnings"] = [message]
        console.print(f"[yellow]warning: {message}[/yellow]")
    return summary
