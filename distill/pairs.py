"""Preference pairs for DPO: (prompt, chosen, rejected) with a minimum score margin.

Every teacher sample of a curated example is scored; the best and worst distinct answers make
a pair when their scores differ by at least `pairs.min_margin` (ties are dropped). Scorers
(distill/curation/scorers.py, shared with curate's target choice):
- verifier: 1 if the answer equals the reference (gold label when present, else the majority
  vote in curate/train.parquet), else 0 (json: 0.25 for valid JSON that differs);
- judge: the `judge:` section's LLM judge (any backend), or any callable (text, completion) ->
  score in [0, 1]; scores are cached by (example_id, completion) in the run dir, so what
  `curate.target: judge` asked is not asked again;
- rule: a built-in rule by name (`RULES`).
JSON answers are compared repaired and canonical (as curate stores them) with
`pairs.normalize_answers`, so the chosen side looks like an SFT target.
Classification tasks where all samples agree would give no pair; `synthesize_rejected` then
pairs the answer with a wrong label from the label set (origin "label_swap").
On-policy pairs (`pairs.on_policy`, stage policy_pairs after SFT, `distill pairs --on-policy`):
the SFT student samples the curated prompts, and the curated target is chosen over each of its
samples that scores `min_margin` lower (origin "on_policy", `make_on_policy_pairs`); DPO then
trains on those.
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from rich.console import Console

from distill.core.config import PairsConfig, TaskConfig
from distill.core.errors import ConfigError, StageNotReadyError
from distill.core.io import write_parquet_atomic
from distill.core.rundir import Run
from distill.curation.json_repair import repair_json
from distill.curation.labels import normalize_label
from distill.curation.scorers import (  # noqa: F401  (RULES, JudgeScorer: the public API)
    RULES, CachedJudge, ExampleScorer, JudgeScorer, Scorer, open_judge_scorer, reference, rule,
    verifier)

console = Console()

PAIR_COLUMNS = ("example_id", "text", "chosen", "rejected", "chosen_score", "rejected_score",
                "margin", "origin")


# --- scorers (distill/curation/scorers.py; re-exported for library users) -------------------


def example_scorer(cfg: PairsConfig, task: TaskConfig, judge: Scorer | ExampleScorer | None = None
                   ) -> ExampleScorer:
    if cfg.scorer == "verifier":
        return verifier(task)
    if cfg.scorer == "rule":
        return rule(cfg.rule, task)
    if judge is None:
        raise ConfigError("config", ["pairs.scorer: judge needs a judge callable"])
    if isinstance(judge, CachedJudge):
        return judge
    return lambda example, completion: judge(example["text"], completion)


# --- pairs -----------------------------------------------------------------------------------


@dataclass
class PairStats:
    examples: int = 0
    ties: int = 0  # every distinct answer scored the same
    below_margin: int = 0  # best - worst < min_margin
    teacher: int = 0
    label_swap: int = 0


def _display(completion: str, task: TaskConfig, normalize: bool) -> str:
    """How an answer appears in a pair: the bare label when normalising, like SFT targets."""
    if normalize and task.type == "classification":
        label = normalize_label(completion, task.labels or [])
        if label is not None:
            return label
    return completion.strip()


def _swap_label(answer: str, right: str, wrong: str) -> str:
    """`answer` with the label `right` replaced by `wrong`, keeping its capitalisation."""
    def repl(m: re.Match) -> str:
        word = m.group(0)
        if word.isupper():
            return wrong.upper()
        return wrong.capitalize() if word[:1].isupper() else wrong
    swapped, n = re.subn(re.escape(right), repl, answer, count=1, flags=re.IGNORECASE)
    return swapped if n else wrong


def _wrong_label(example_id: str, right: str, labels: list[str]) -> str | None:
    others = [label for label in labels if label.casefold() != right.casefold()]
    if not others:
        return None
    return others[int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % len(others)]


def pair_row(example: dict[str, Any], chosen: str, rejected: str, cs: float, rs: float,
             origin: str) -> dict[str, Any]:
    return {"example_id": example["example_id"], "text": example["text"], "chosen": chosen,
            "rejected": rejected, "chosen_score": float(cs), "rejected_score": float(rs),
            "margin": round(float(cs - rs), 6), "origin": origin}


def pairs_for_example(
    example: dict[str, Any], completions: Sequence[str], scores: Sequence[float], task: TaskConfig,
    cfg: PairsConfig, score: ExampleScorer, stats: PairStats,
) -> list[dict[str, Any]]:
    """The pairs of one example from its scored samples (see the module docstring)."""
    stats.examples += 1
    by_answer: dict[str, list[float]] = {}
    for c, s in zip(completions, scores):
        by_answer.setdefault(_display(c, task, cfg.normalize_answers), []).append(float(s))
    ranked = sorted(((sum(v) / len(v), a) for a, v in by_answer.items() if a), reverse=True)
    combos = sorted(
        ((hi[0] - lo[0], hi, lo) for i, hi in enumerate(ranked) for lo in ranked[i + 1:]
         if hi[0] > lo[0]),
        key=lambda t: -t[0],
    )
    good = [(m, hi, lo) for m, hi, lo in combos if m >= cfg.min_margin]
    out = [pair_row(example, hi[1], lo[1], hi[0], lo[0], "teacher")
           for _, hi, lo in good[: cfg.max_pairs_per_prompt]]
    stats.teacher += len(out)
    if out:
        return out
    if combos:
        stats.below_margin += 1
    else:
        stats.ties += 1
    if cfg.synthesize_rejected and task.type == "classification" and ranked:
        swap = _label_swap(example, ranked[0], task, cfg, score)
        if swap:
            stats.label_swap += 1
            return [swap]
    return []


def _label_swap(example, best: tuple[float, str], task: TaskConfig, cfg: PairsConfig,
                score: ExampleScorer) -> dict[str, Any] | None:
    best_score, answer = best
    right = normalize_label(answer, task.labels or [])
    wrong = _wrong_label(example["example_id"], right, list(task.labels or [])) if right else None
    if wrong is None:
        return None
    rejected = _swap_label(answer, right, wrong)
    rejected_score = score(example, rejected)
    if best_score - rejected_score < max(cfg.min_margin, 1e-9):
        return None
    return pair_row(example, answer, rejected, best_score, rejected_score, "label_swap")


def make_on_policy_pairs(
    examples: Sequence[dict[str, Any]], student_answers: Sequence[str] | dict[str, Any],
    task: TaskConfig, cfg: PairsConfig | None = None, score: ExampleScorer | None = None,
) -> list[dict[str, Any]]:
    """Pairs whose rejected side is the student's own wrong answer (origin "on_policy").

    `examples` are curated rows (example_id, text, label, target); `student_answers` is a list
    aligned with them, or a dict example_id -> answer or list of answers. The chosen side is the
    curated target. A pair needs target score - student score >= min_margin.
    """
    cfg = cfg or PairsConfig()
    score = score or verifier(task)
    if not isinstance(student_answers, dict):
        if len(student_answers) != len(examples):
            raise ValueError(f"{len(student_answers)} student answers for {len(examples)} examples")
        student_answers = {e["example_id"]: a for e, a in zip(examples, student_answers)}
    out: list[dict[str, Any]] = []
    for ex in examples:
        answers = student_answers.get(ex["example_id"])
        if answers is None:
            continue
        chosen = _display(ex["target"], task, cfg.normalize_answers)
        cs = score(ex, chosen)
        seen: set[str] = set()
        for ans in [answers] if isinstance(answers, str) else answers:
            rejected = _display(ans, task, cfg.normalize_answers)
            if rejected in seen or rejected == chosen:
                continue
            seen.add(rejected)
            rs = score(ex, rejected)
            if cs - rs >= max(cfg.min_margin, 1e-9):
                out.append(pair_row(ex, chosen, rejected, cs, rs, "on_policy"))
    return out


def length_bias(pairs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Do chosen answers win by being longer? DPO learns that bias too if it is there."""
    pairs = list(pairs)
    if not pairs:
        return {"pairs": 0}
    c = [len(p["chosen"]) for p in pairs]
    r = [len(p["rejected"]) for p in pairs]
    return {
        "pairs": len(pairs),
        "mean_chosen_chars": round(sum(c) / len(c), 2),
        "mean_rejected_chars": round(sum(r) / len(r), 2),
        "mean_diff_chars": round((sum(c) - sum(r)) / len(c), 2),
        "frac_chosen_longer": round(sum(a > b for a, b in zip(c, r)) / len(c), 4),
        "frac_same_length": round(sum(a == b for a, b in zip(c, r)) / len(c), 4),
    }


BatchScore = Callable[[list[tuple[dict[str, Any], str]]], list[float]]  # (example, completion)s


def make_pairs(examples: Sequence[dict[str, Any]], samples: dict[str, list[str]], task: TaskConfig,
               cfg: PairsConfig, score: ExampleScorer, batch_score: BatchScore | None = None
               ) -> tuple[list[dict[str, Any]], PairStats]:
    """Teacher pairs for every example from its samples (example_id -> completions).

    `batch_score` (the judge) scores every sample of every example in one call."""
    stats = PairStats()
    items = [(ex, c) for ex in examples for c in samples.get(ex["example_id"], [])]
    if batch_score is not None:
        flat = iter(batch_score(items))
    else:
        flat = iter([score(ex, c) for ex, c in items])
    pairs: list[dict[str, Any]] = []
    for ex in examples:
        comps = samples.get(ex["example_id"], [])
        scores = [next(flat) for _ in comps]
        pairs += pairs_for_example(ex, comps, scores, task, cfg, score, stats)
    return pairs, stats


def prepare_completion(completion: str, task: TaskConfig, cfg: PairsConfig) -> str:
    """A sample as pairs score and show it: stripped; JSON repaired and canonical (when it can
    be) with `normalize_answers`, as curate stored the targets. The judge's cache is keyed on
    this form, so curate's scores are found again."""
    text = completion.strip()
    if task.type == "json" and cfg.normalize_answers:
        return repair_json(text).canonical or text
    return text


# --- the stage -------------------------------------------------------------------------------


def gold_rejected(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Examples `curate.gold: filter` took out of SFT: the teacher's answer was wrong, which
    makes them the best DPO pairs there are (the gold chosen over the teacher's mistake)."""
    import pyarrow.parquet as pq

    if not run.paths.rejects.exists():
        return []
    rejects = pq.read_table(run.paths.rejects, columns=["example_id", "filter"]).to_pylist()
    ids = {r["example_id"] for r in rejects if r["filter"] == "gold"}
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["example_id"] in ids and row["example_id"] not in found:
            found[row["example_id"]] = {"example_id": row["example_id"], "text": row["text"],
                                        "label": row["label"], "target": None}
    return list(found.values())


def _pair_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c.endswith("score") or c == "margin" else pa.string())
                      for c in PAIR_COLUMNS])


def run_pairs(run: Run, judge: Scorer | None = None) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.curate import read_generate_rows

    cfg, task = run.cfg.pairs, run.cfg.task
    train_path = run.paths.curated
    if not train_path.exists():
        raise StageNotReadyError(f"pairs need {train_path}: run `distill curate` first")
    examples = pq.read_table(train_path).to_pylist()
    samples: dict[str, list[str]] = {}
    rows = read_generate_rows(run)
    for row in rows:
        samples.setdefault(row["example_id"], []).append(
            prepare_completion(row["completion"], task, cfg))
    examples += gold_rejected(run, rows)
    batch_score = None
    judged = None
    with ExitStack() as engines:
        if cfg.scorer == "judge":
            judged = open_judge_scorer(run.cfg, engines, run.paths.judge_scores, judge)
            batch_score = judged.score_examples
        score = example_scorer(cfg, task, judged)
        pairs, stats = make_pairs(examples, samples, task, cfg, score, batch_score)

    write_parquet_atomic(run.paths.pairs, pa.Table.from_pylist(pairs, schema=_pair_schema()))
    summary = {
        "examples": stats.examples, "pairs": len(pairs), "scorer": cfg.scorer,
        "min_margin": cfg.min_margin,
        "by_origin": {"teacher": stats.teacher, "label_swap": stats.label_swap},
        "ties_dropped": stats.ties, "below_margin": stats.below_margin,
        "length_bias": length_bias(pairs),
    }
    if judged is not None:
        summary["judge"] = {"asked": judged.asked, "reused": judged.reused}
    console.print(f"pairs: {len(pairs)} from {stats.examples} examples "
                  f"(teacher {stats.teacher}, label_swap {stats.label_swap}; ties {stats.ties}, "
                  f"below margin {stats.below_margin}); length bias "
                  f"{summary['length_bias'].get('mean_diff_chars', 0)} chars")
    return summary


# --- on-policy pairs (pairs.on_policy): the SFT student's own samples -------------------------


def student_samples(run: Run, examples: Sequence[dict[str, Any]]) -> tuple[list[list[str]], int]:
    """`pairs.on_policy_samples` samples of the SFT student per example, on the short prompt
    it trained on (input shortened to its budget), served as eval serves it (merged or LoRA);
    and how many samples failed (counted in the summary, not silently dropped)."""
    from distill.contenders import fitted_prompt
    from distill.engines import merged_student, open_student
    from teachers.base import SamplingSpec

    cfg = run.cfg
    adapter = run.paths.finished_adapter("sft")
    prompt = fitted_prompt(run, "sft")
    chats = [prompt(cfg.task, ex["text"]) for ex in examples]
    spec = SamplingSpec(n=cfg.pairs.on_policy_samples, temperature=cfg.pairs.on_policy_temperature,
                        max_tokens=cfg.answer_tokens, seed=run.train_seed)
    merged = merged_student(run, adapter) if cfg.student.serve == "merged" else None
    with open_student(cfg, adapter=None if merged else adapter, model_path=merged) as student:
        completions = student.generate(chats, spec)
    out: list[list[str]] = [[] for _ in examples]
    for c in completions:
        if c.ok:
            out[c.prompt_index].append(c.text)
    return out, sum(not c.ok for c in completions)


def run_policy_pairs(run: Run, judge: Scorer | None = None) -> dict[str, Any]:
    """Stage policy_pairs: DPO's pairs from the SFT student's own samples of the curated
    training prompts, each scored by `pairs.scorer`; the curated target is chosen over every
    sample that scores `min_margin` lower (the student's own mistakes as rejected)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.core.io import file_sha256

    cfg, task = run.cfg.pairs, run.cfg.task
    if not cfg.on_policy:
        return {"skipped": True, "reason": "pairs.on_policy is off: DPO trains on the teacher's "
                                           "pairs"}
    adapter = run.paths.finished_adapter("sft")
    if adapter is None:
        raise StageNotReadyError(f"{run.paths.adapter('sft')} not found: on-policy pairs need "
                                 "the SFT student: run `distill train sft` first")
    if not run.paths.curated.exists():
        raise StageNotReadyError(f"on-policy pairs need {run.paths.curated}: run `distill "
                                 "curate` first")
    start = time.perf_counter()
    examples = [ex for ex in pq.read_table(run.paths.curated).to_pylist() if ex.get("target")]
    answers, failed = student_samples(run, examples)
    prepared = {ex["example_id"]: [prepare_completion(a, task, cfg) for a in found]
                for ex, found in zip(examples, answers)}
    with ExitStack() as engines:
        judged = None
        if cfg.scorer == "judge":
            judged = open_judge_scorer(run.cfg, engines, run.paths.judge_scores, judge)
            judged.score_examples([(ex, _display(c, task, cfg.normalize_answers))
                                   for ex in examples
                                   for c in [ex["target"], *prepared[ex["example_id"]]]])
        score = example_scorer(cfg, task, judged)
        pairs = make_on_policy_pairs(examples, prepared, task, cfg, score)
        target_scores = {ex["example_id"]: score(ex, _display(ex["target"], task,
                                                                cfg.normalize_answers))
                         for ex in examples}
        sample_rows = [{"example_id": ex["example_id"], "sample": i, "completion": c,
                        "score": score(ex, _display(c, task, cfg.normalize_answers)),
                        "target_score": target_scores[ex["example_id"]]}
                       for ex in examples for i, c in enumerate(prepared[ex["example_id"]])]
    write_parquet_atomic(run.paths.policy_samples, pa.Table.from_pylist(
        sample_rows, schema=pa.schema([("example_id", pa.string()), ("sample", pa.int64()),
                                       ("completion", pa.string()), ("score", pa.float64()),
                                       ("target_score", pa.float64())])))
    write_parquet_atomic(run.paths.policy_pairs, pa.Table.from_pylist(pairs, schema=_pair_schema()))
    as_good = sum(r["score"] >= r["target_score"] for r in sample_rows)
    summary = {
        "examples": len(examples), "samples": len(sample_rows), "sample_errors": failed,
        "pairs": len(pairs),
        "scorer": cfg.scorer, "min_margin": cfg.min_margin,
        "samples_per_prompt": cfg.on_policy_samples, "temperature": cfg.on_policy_temperature,
        "samples_as_good_as_target": round(as_good / len(sample_rows), 4) if sample_rows else None,
        "by_origin": {"on_policy": len(pairs)},
        "from_adapter": str(adapter),
        "from_adapter_sha256": file_sha256(next(adapter.glob("adapter_model.*"))),
        "length_bias": length_bias(pairs),
        "seconds": round(time.perf_counter() - start, 2),
    }
    if judged is not None:
        summary["judge"] = {"asked": judged.asked, "reused": judged.reused}
    console.print(f"on-policy pairs: {len(pairs)} from {len(sample_rows)} student samples of "
                  f"{len(examples)} prompts ({summary['samples_as_good_as_target']} as good as "
                  "the target)")
    return summary
