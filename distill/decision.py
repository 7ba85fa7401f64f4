"""The ship decision: is a tuned student worth shipping, on the evidence of the held-out items?

Every contender answered the same held-out items, so each comparison is paired: exact McNemar
for per-item correctness, a paired bootstrap for continuous per-item scores (ROUGE-L), and for
"no more than a margin worse" Tango's score test (0/1) or the bootstrap. The rule (`eval.alpha`,
`eval.non_inferiority_margin`, `eval.max_forgetting`) ships a tuned student only if it is
significantly better than its baseline (the prompted base student; in a refresh, the promoted
student), shown no more than the margin below the teacher, and shown to keep its general
ability within the allowed loss. Otherwise it names what to ship instead. The cost side (what
distilling cost once, the saving per 1k requests, the break-even volume) comes with it.

Pure functions over what eval, bench and the manifest wrote; the report and the refresh gate
call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from distill import metrics, stats

STUDENTS = ("student_dpo", "student_opd", "student_sft")  # tuned, preferred first on a tie
NAMES = {"teacher": "the teacher", "student_base": "the base student (prompted)",
         "student_sft": "the SFT student", "student_dpo": "the SFT+DPO student",
         "student_opd": "the SFT+OPD student"}


# --- per-item scores ------------------------------------------------------------------------


# Each scorer maps eval/predictions.parquet rows (example_id, model, answer, parsed, gold) of one
# model to per-item scores.


def classification_items(rows: Sequence[dict]) -> list[float]:
    """1 where the parsed label is the gold label (an unparseable answer is wrong)."""
    return [float(r["parsed"] is not None and r["parsed"] == r["gold"]) for r in rows]


def free_text_items(rows: Sequence[dict]) -> list[float]:
    return [metrics.rouge_l(r["parsed"] or "", r["gold"] or "") for r in rows]


def json_items(rows: Sequence[dict]) -> list[float]:
    """Each row's own field-level F1 against the gold fields (distill/metrics.py); the
    report's field_f1 is the micro F1 over all rows, the paired test compares row means."""
    return [metrics.field_f1_of([metrics.field_counts(r.get("answer", r["parsed"]), r["gold"])])
            for r in rows]


# task type -> (the metric the decision is taken on, per-item scorer)
ITEM_SCORES: dict[str, tuple[str, Callable[[Sequence[dict]], list[float]]]] = {
    "classification": ("accuracy", classification_items),
    "free_text": ("rouge_l", free_text_items),
    "json": ("field_f1", json_items),
}


def decision_metric(task_type: str) -> str:
    return ITEM_SCORES[task_type][0]


def item_scores(task_type: str, rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{model: {example_id: score}} from eval/predictions.parquet rows."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    scorer = ITEM_SCORES[task_type][1]
    return {m: dict(zip([r["example_id"] for r in rs], scorer(rs))) for m, rs in by_model.items()}


def read_item_scores(predictions: Path, task_type: str) -> dict[str, dict[str, float]] | None:
    """Per-item scores of every model in a run's eval/predictions.parquet; None if absent."""
    import pyarrow.parquet as pq

    if not Path(predictions).exists():
        return None
    return item_scores(task_type, pq.read_table(predictions).to_pylist())


def aligned(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]]:
    """Scores of the items both models answered, in the same order (pairing is by item)."""
    ids = [i for i in a if i in b]
    return [a[i] for i in ids], [b[i] for i in ids]


# --- paired comparisons ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The decision rule, from the config's eval section."""

    alpha: float = 0.05
    margin: float = 0.02
    max_forgetting: float = 0.05

    @classmethod
    def from_config(cls, ev) -> Rule:
        return cls(ev.alpha, ev.non_inferiority_margin, ev.max_forgetting)

    def to_dict(self) -> dict[str, float]:
        return {"alpha": self.alpha, "non_inferiority_margin": self.margin,
                "max_forgetting": self.max_forgetting}


def _p(p: float) -> float:
    return float(f"{p:.3g}")  # p-values keep 3 significant digits, however small


def compare(a: Sequence[float], b: Sequence[float], margin: float | None = None,
            seed: int = 0) -> dict[str, Any]:
    """A minus B on paired items: difference, 95% CI, one-sided p for "A better than B", and
    with a margin the p-value for "A is no more than `margin` worse than B"."""
    test = stats.compare(a, b, seed)
    out = {"method": test.method, "n": test.n, "a_mean": round(test.a_mean, 4),
           "b_mean": round(test.b_mean, 4), "diff": round(test.diff, 4),
           "ci_low": round(test.ci_low, 4), "ci_high": round(test.ci_high, 4),
           "p_value": _p(test.p_value)}
    if test.a_only is not None:
        out.update(a_only=test.a_only, b_only=test.b_only)
    if margin is not None:
        binary = stats.is_binary(a) and stats.is_binary(b)
        out.update(margin=margin, p_noninferior=_p(stats.noninferiority(a, b, margin, seed)),
                   noninferior_method="Tango score test" if binary else "paired bootstrap")
    return out


def forgetting(evals: dict, tuned: str, base: str, rule: Rule, seed: int = 0) -> dict[str, Any]:
    """Base minus tuned on the forgetting check. With per-item scores (eval's `forgetting`
    section) a paired test must show the loss within `max_forgetting`; with point values only
    (`general_ability`), the point loss must be within it."""
    section = evals.get("forgetting") or {}
    items = section.get("item_scores") or {}
    if items.get(tuned) and items.get(base) and len(items[tuned]) == len(items[base]):
        t = compare(items[tuned], items[base], rule.max_forgetting, seed)
        return {"measured": "paired", "items": t["n"], "source": section.get("source"),
                "value": round(-t["diff"], 4), "ci_low": round(-t["ci_high"], 4),
                "ci_high": round(-t["ci_low"], 4), "p_within": t["p_noninferior"],
                "method": t["noninferior_method"], "max": rule.max_forgetting,
                "within": t["p_noninferior"] < rule.alpha}
    points = {m: v.get("value") for m, v in (section.get("models") or {}).items()
              if isinstance(v, dict)} or evals.get("general_ability") or {}
    if points.get(tuned) is not None and points.get(base) is not None:
        value = points[base] - points[tuned]
        return {"measured": "point", "value": round(value, 4), "max": rule.max_forgetting,
                "within": value <= rule.max_forgetting + 1e-9}
    return {"measured": None, "max": rule.max_forgetting, "within": True}


def assess(candidate: dict[str, float], baseline: dict[str, float], teacher: dict[str, float],
           lost: dict[str, Any], rule: Rule, seed: int = 0) -> dict[str, Any]:
    """The three checks of one tuned student: better than its baseline, non-inferior to the
    teacher, forgetting within bounds (`lost` from `forgetting`)."""
    vs_base = compare(*aligned(candidate, baseline), seed=seed)
    vs_teacher = compare(*aligned(candidate, teacher), margin=rule.margin, seed=seed)
    better = vs_base["p_value"] < rule.alpha
    close = vs_teacher["p_noninferior"] < rule.alpha
    return {"vs_base": vs_base, "vs_teacher": vs_teacher, "forgetting": lost,
            "better_than_base": better, "noninferior_to_teacher": close,
            "forgetting_ok": lost["within"], "ships": better and close and lost["within"]}


# --- sentences ------------------------------------------------------------------------------


def _ci(t: dict) -> str:
    return f"{t['diff']:+.3f} [95% CI {t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"


def _forgot(lost: dict) -> str:
    if lost["measured"] is None:
        return "forgetting was not measured"
    how = f", paired p={lost['p_within']:.3g}" if lost["measured"] == "paired" else ""
    return f"it lost {lost['value']:+.3f} general ability (allowed {lost['max']:g}{how})"


def failures(a: dict, name: str, base: str, rule: Rule, metric: str) -> list[str]:
    """Why a tuned student does not ship, one clause per failed check."""
    out = []
    if not a["better_than_base"]:
        out.append(f"{name} is not significantly better than {base} ({metric} "
                   f"{_ci(a['vs_base'])}, p={a['vs_base']['p_value']:.3g} >= {rule.alpha:g})")
    if not a["noninferior_to_teacher"]:
        t = a["vs_teacher"]
        out.append(f"{name} is not shown within {rule.margin:g} of the teacher ({_ci(t)}, "
                   f"non-inferiority p={t['p_noninferior']:.3g})")
    if not a["forgetting_ok"]:
        out.append(f"{name} forgets too much: {_forgot(a['forgetting'])}")
    return out


def ship_sentence(a: dict, name: str, base: str, rule: Rule, metric: str) -> str:
    vb, vt = a["vs_base"], a["vs_teacher"]
    return (f"{name} beats {base} by {metric} {_ci(vb)} on {vb['n']} held-out items "
            f"(p={vb['p_value']:.3g}), is {vt['diff']:+.3f} against the teacher, within the "
            f"{rule.margin:g} margin (non-inferiority p={vt['p_noninferior']:.3g}), and "
            f"{_forgot(a['forgetting'])}")


def _focus(assessed: dict[str, dict]) -> str:
    """The tuned student to talk about when none ships: the one that passed the most checks,
    then the higher score."""
    def key(name):
        a = assessed[name]
        passed = a["better_than_base"] + a["noninferior_to_teacher"] + a["forgetting_ok"]
        return passed, a["vs_base"]["a_mean"], -STUDENTS.index(name)
    return max(assessed, key=key)


def decide(scores: dict[str, dict[str, float]], evals: dict, rule: Rule, metric: str,
           seed: int = 0) -> dict[str, Any]:
    """The verdict: which model to ship, and why, from per-item scores of teacher, base student
    and tuned students. `passes` is whether a tuned student ships."""
    tuned = [s for s in STUDENTS if scores.get(s)]
    missing = [m for m in ("teacher", "student_base") if not scores.get(m)]
    if missing or not tuned:
        lacking = ", ".join(missing or ["a tuned student"])
        return {"passes": None, "ship": None, "branch": None,
                "text": f"not enough results for a verdict (eval incomplete: no per-item "
                        f"predictions for {lacking})"}
    base, teacher = scores["student_base"], scores["teacher"]
    assessed = {s: assess(scores[s], base, teacher, forgetting(evals, s, "student_base", rule,
                                                                seed), rule, seed)
                for s in tuned}
    base_vs_teacher = compare(*aligned(base, teacher), margin=rule.margin, seed=seed)
    base_ok = base_vs_teacher["p_noninferior"] < rule.alpha
    out = {"metric": metric, "rule": rule.to_dict(), "students": assessed,
           "base_vs_teacher": base_vs_teacher}
    winners = [s for s in tuned if assessed[s]["ships"]]
    B = NAMES["student_base"]
    if winners:
        best = max(winners, key=lambda s: (assessed[s]["vs_base"]["a_mean"], -STUDENTS.index(s)))
        sentence = ship_sentence(assessed[best], NAMES[best], B, rule, metric)
        return {**out, "passes": True, "ship": best, "branch": "ship_student", "student": best,
                "text": f"Ship {NAMES[best].removeprefix('the ')}: {sentence}."}
    focus = _focus(assessed)
    a = assessed[focus]
    why = "; ".join(failures(a, NAMES[focus], B, rule, metric))
    blocked = a["better_than_base"] and a["noninferior_to_teacher"]
    branch = "blocked_by_forgetting" if blocked else "ship_base" if base_ok else "keep_teacher"
    t = base_vs_teacher
    base_clause = (f"{B} itself is within {rule.margin:g} of the teacher ({_ci(t)}, "
                   f"non-inferiority p={t['p_noninferior']:.3g})" if base_ok else
                   f"{B} is not shown within {rule.margin:g} of the teacher either ({_ci(t)}, "
                   f"non-inferiority p={t['p_noninferior']:.3g})")
    head = "Ship the base student (prompted)" if base_ok else "Keep the teacher"
    if blocked:
        head += f" instead of {NAMES[focus].removeprefix('the ')}"
    return {**out, "passes": False, "ship": "student_base" if base_ok else "teacher",
            "branch": branch, "student": focus, "text": f"{head}: {why}; {base_clause}."}


def gate(candidate: dict[str, float], baseline: dict[str, float], teacher: dict[str, float],
         lost: dict[str, Any], rule: Rule, metric: str, name: str, baseline_name: str,
         seed: int = 0) -> tuple[bool, str, dict]:
    """The refresh gate: the same three checks, with the promoted student as the baseline."""
    a = assess(candidate, baseline, teacher, lost, rule, seed)
    if a["ships"]:
        return True, ship_sentence(a, name, baseline_name, rule, metric), a
    return False, "; ".join(failures(a, name, baseline_name, rule, metric)), a


# --- cost -----------------------------------------------------------------------------------


def _priced(item: str, price, seconds: float | None, units: int = 1, prompt_tokens: int = 0,
            completion_tokens: int = 0, tokens_known: bool = True) -> dict[str, Any]:
    """One line of the one-off cost: hardware time on `units` GPUs/workers, or API tokens."""
    from teachers.cost import estimate_cost

    row = {"item": item, "seconds": seconds, "units": units, "prompt_tokens": prompt_tokens,
           "completion_tokens": completion_tokens}
    if price.per_hour_usd is None and not tokens_known:
        return {**row, "usd": None, "note": "token-priced, but its tokens are not recorded"}
    if seconds is None and price.per_hour_usd is not None:
        return {**row, "usd": None, "note": "its time is not recorded"}
    usd = estimate_cost(price, seconds or 0.0, prompt_tokens, completion_tokens, units)
    return {**row, "usd": round(usd, 6)}


def one_off_cost(manifest: dict, cfg) -> dict[str, Any]:
    """What distilling cost once, from what the stages recorded: the teacher's generation
    (tokens and wall time in the generate summary), the judge's calls (wall time of the stages
    that called it), on-policy pairs, SFT, DPO and OPD of every training seed (seconds, workers
    and tokens in their summaries), each priced from `cost:`. Stages that did not run cost nothing; a line that cannot be priced says why."""
    from teachers.cost import billed_units

    summaries, stages = manifest.get("summaries", {}), manifest.get("stages", {})
    teacher = cfg.teacher
    lines = []
    if gen := summaries.get("generate"):
        lines.append(_priced("teacher generation", cfg.cost.teacher, gen.get("wall_s"),
                             billed_units(teacher.backend, teacher.replicas,
                                          teacher.tensor_parallel_size),
                             gen.get("prompt_tokens") or 0, gen.get("completion_tokens") or 0))
    judged = [s for s, on in (("curate", cfg.curate.target == "judge"),
                              ("pairs", cfg.pairs.enabled and cfg.pairs.scorer == "judge"))
              if on and s in stages]
    judge = cfg.judge.engine or teacher
    for stage in judged:
        lines.append(_priced(f"judge calls ({stage})", cfg.cost.judge or cfg.cost.teacher,
                             stages[stage].get("seconds"),
                             billed_units(judge.backend, judge.replicas,
                                          judge.tensor_parallel_size), tokens_known=False))
    # every training seed trained (eval.seeds): seed 0 in the summaries, seed k in seeds/<k>
    trained = [("", summaries)] + [(f" (seed {k})", book.get("summaries", {}))
                                   for k, book in manifest.get("seeds", {}).items()]
    for seed, found in trained:
        if (s := found.get("policy_pairs") or {}) and not s.get("skipped"):
            # the SFT student sampling the training prompts (and the scorer's calls)
            lines.append(_priced(f"on-policy pairs{seed}", cfg.cost.student, s.get("seconds")))
        for stage in ("sft", "dpo", "opd"):  # OPD: the teacher scores inside its training job
            s = found.get(stage) or {}
            if s and not s.get("skipped"):
                lines.append(_priced(f"{stage.upper()} training{seed}",
                                     cfg.cost.training or cfg.cost.student, s.get("seconds"),
                                     s.get("world_size") or 1, s.get("train_tokens") or 0))
    known = [x["usd"] for x in lines if x["usd"] is not None]
    return {"items": lines, "total_usd": round(sum(known), 6),
            "complete": len(known) == len(lines)}


def break_even(one_off_usd: float, teacher_per_1k: float | None,
               student_per_1k: float | None) -> dict[str, Any]:
    """Saving per 1k requests (teacher minus student) and the requests after which the saving
    has paid for the one-off cost: "never" when the student saves nothing per request."""
    if teacher_per_1k is None or student_per_1k is None:
        return {"saving_per_1k_requests": None, "break_even_requests": None}
    saving = teacher_per_1k - student_per_1k
    if saving <= 0:
        return {"saving_per_1k_requests": round(saving, 6), "break_even_requests": "never"}
    return {"saving_per_1k_requests": round(saving, 6),
            "break_even_requests": math.ceil(one_off_usd / saving * 1000)}


def cost_sentence(cost: dict, name: str, shipped: bool) -> str:
    """One sentence: what distilling cost, what the student saves, when it has paid off."""
    total, saving = cost["one_off"]["total_usd"], cost.get("saving_per_1k_requests")
    spent = f"Distilling cost ${total:.2f} once"
    if not cost["one_off"]["complete"]:
        spent += " (some lines could not be priced)"
    if saving is None:
        return f"{spent}; the per-request saving is unknown (bench did not run)."
    if saving == 0 and total == 0:
        return ("Cost is not priced: set cost.teacher and cost.student (per_hour_usd or token "
                "prices) for the saving and the break-even volume.")
    verb = "saves" if shipped else "would save"
    if cost["break_even_requests"] == "never":
        extra = f" (${-saving:.4f} more per 1k requests)" if saving < 0 else ""
        return (f"{spent}; {name} {verb} nothing per request against the teacher{extra}, so "
                "it never pays for itself.")
    return (f"{spent}; {name} {verb} ${saving:.4f} per 1k requests against the teacher, so it "
            f"pays for itself after {cost['break_even_requests']:,} requests.")


# --- over training seeds (eval.seeds) -------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, min, max and sample standard deviation (0 for one value) of a metric over seeds."""
    xs = [float(v) for v in values]
    if not xs:
        return {"n": 0, "mean": None, "min": None, "max": None, "std": None}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"n": len(xs), "mean": mean, "min": min(xs), "max": max(xs), "std": std}


def seed_spread(per_seed: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per model: each seed's main metric (None where that seed has none) and their spread.
    `per_seed`: [{"seed", "train_seed", "models": {name: value}, "decision"}], seed 0 first."""
    names = list(dict.fromkeys(n for s in per_seed for n in s["models"]))
    out = {}
    for name in names:
        values = [s["models"].get(name) for s in per_seed]
        out[name] = {"values": values, **spread([v for v in values if v is not None])}
    return out


def _short(ship: str | None) -> str:
    return NAMES.get(ship, str(ship)).removeprefix("the ")


def _steady(decisions: Sequence[dict]) -> list[str]:
    """Tuned students the rule ships on every seed, the higher mean score first."""
    found = [s for s in STUDENTS if all((d["students"].get(s) or {}).get("ships")
                                        for d in decisions)]
    return sorted(found, key=lambda s: (-sum(d["students"][s]["vs_base"]["a_mean"]
                                             for d in decisions), STUDENTS.index(s)))


def over_seeds(per_seed: Sequence[dict]) -> dict[str, Any]:
    """The decision rule applied to each training seed, and a ship decision only where the
    seeds agree: every seed ships the same model, or one tuned student ships on every seed.
    Otherwise the seeds disagree and the safer choice stands: the base student where it is
    shown within the margin of the teacher, else the teacher. Seed 0's tests stay as the
    detail (`students`, `base_vs_teacher`); `seeds` holds each seed's outcome."""
    decisions = [s["decision"] for s in per_seed]
    rows = [{"seed": s["seed"], "train_seed": s["train_seed"], "ship": d.get("ship"),
             "passes": d.get("passes"), "branch": d.get("branch"), "text": d.get("text")}
            for s, d in zip(per_seed, decisions)]
    out = {**decisions[0], "seeds": rows, "seed_count": len(rows)}
    n = len(rows)
    if lacking := [r["seed"] for r in rows if r["passes"] is None]:
        return {**out, "passes": None, "ship": None, "branch": None, "agree": None,
                "text": f"not enough results for a verdict over {n} training seeds: seed "
                        f"{', '.join(map(str, lacking))} has no complete eval"}
    votes = "; ".join(f"seed {r['seed']}: {_short(r['ship'])}" for r in rows)
    if len({r["ship"] for r in rows}) == 1:
        return {**out, "agree": True,
                "text": f"All {n} training seeds agree ({votes}). Seed 0: {out['text']}"}
    if steady := _steady(decisions):
        best = steady[0]
        return {**out, "passes": True, "ship": best, "branch": "ship_student", "student": best,
                "agree": True,
                "text": f"Ship {_short(best)}: the rule ships it on all {n} training seeds "
                        f"(the best student differed by seed: {votes})."}
    base_ok = all(d["base_vs_teacher"]["p_noninferior"] < d["rule"]["alpha"] for d in decisions)
    safer = "student_base" if base_ok else "teacher"
    why = ("the base student is shown within the margin of the teacher" if base_ok else
           "the base student is not shown within the margin of the teacher")
    head = "ship the base student (prompted)" if base_ok else "keep the teacher"
    return {**out, "passes": False, "ship": safer, "branch": "seeds_disagree", "agree": False,
            "text": f"The training seeds disagree ({votes}), so no tuned student ships: "
                    f"{head}, the safer choice ({why}), until a tuned student ships on every "
                    f"seed."}
