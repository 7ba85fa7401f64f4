"""The answer users come for: student vs teacher quality, latency and cost, and a verdict.

Reads what eval, bench and curation wrote; computes nothing expensive. Writes report.json
(machine-readable), report.md, and report.html (self-contained: plots are inline PNGs).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from distill import decision as D
from distill.core.artifacts import RunPaths
from distill.metrics import HIGHER_IS_BETTER, MAIN_METRIC
from distill.core.io import read_json, write_json_atomic, write_text_atomic
from distill.core.config import RunConfig
from distill.core.rundir import run_tags

MODELS = ("teacher", "student_base", "student_sft", "student_dpo", "student_opd")
LABELS = {"teacher": "teacher", "student_base": "student (base, prompted)",
          "student_sft": "student SFT", "student_dpo": "student SFT+DPO",
          "student_opd": "student SFT+OPD"}
COLORS = {"teacher": "#4c72b0", "student_base": "#999999", "student_sft": "#dd8452",
          "student_dpo": "#55a868", "student_opd": "#8172b3"}


def _read(path: Path) -> dict:
    return read_json(path) or {}


def build_report(run_dir: Path, manifest: dict, cfg: RunConfig) -> dict[str, Any]:
    """Merge eval and bench results into the report's one table, plus the verdict: the
    decision rule (distill/decision.py) on eval's per-item predictions, with its cost side."""
    paths = RunPaths(run_dir)
    evals = _read(paths.eval_results)
    bench = _read(paths.bench_results)
    task = manifest.get("config", {}).get("task", {})
    main = evals.get("main_metric") or MAIN_METRIC.get(task.get("type"), "accuracy")
    models: dict[str, dict] = {}
    for name in MODELS:
        quality = evals.get("models", {}).get(name)
        speed = bench.get("models", {}).get(name, {})
        if quality is None and not speed:
            continue
        row = {"main_metric": main, main: (quality or {}).get(main)}
        row.update({k: v for k, v in (quality or {}).items() if k not in row})
        for key in ("served_as", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms",
                    "tokens_per_s", "requests_per_s", "prompt_tokens_per_request",
                    "completion_tokens_per_request", "cost_per_1k_requests",
                    "cost_per_1m_tokens"):
            row[key] = speed.get(key)
        models[name] = row
    summaries = manifest.get("summaries", {})
    check = teacher_check(paths)
    majority = evals.get("majority_baseline")
    scores = D.read_item_scores(paths.eval_predictions, cfg.task.type) or {}
    decision = D.decide(scores, evals, D.Rule.from_config(cfg.eval),
                        D.decision_metric(cfg.task.type), cfg.seed)
    seeds = None
    if cfg.eval.seeds > 1:  # the rule on each training seed; ship only where they agree
        per_seed = seed_results(run_dir, cfg, main, decision)
        decision = D.over_seeds(per_seed)
        seeds = {"count": len(per_seed), "metric": main, "models": D.seed_spread(per_seed),
                 "decisions": decision["seeds"]}
    return {
        "run_id": manifest.get("run_id"),
        "task": task.get("name"),
        "main_metric": main,
        "higher_is_better": HIGHER_IS_BETTER.get(main, True),
        "reference": evals.get("reference"),
        "examples": evals.get("examples"),
        "models": models,
        "verdict": verdict(models, main, decision, cost_side(manifest, cfg, models, decision),
                           check, majority, evals.get("label_collapse")),
        "seeds": seeds,
        "teacher_check": check,
        "majority_baseline": majority,
        "labels": (summaries.get("curate") or {}).get("labels"),
        "funnel": _funnel(summaries, check),
        "student_costs": student_costs(summaries, models),
        "general_ability": evals.get("general_ability"),
        "truncated": evals.get("truncated"),
        "judge": evals.get("judge"),
        "bench_settings": bench.get("settings"),
        "stage_seconds": {**{k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
                          **{f"{k} (seed {seed})": v.get("seconds")
                             for seed, book in manifest.get("seeds", {}).items()
                             for k, v in book["stages"].items()}},
        "forgetting": {k: v for k, v in (evals.get("forgetting") or {}).items()
                       if k != "item_scores"} or None,
    }


def seed_results(run_dir: Path, cfg: RunConfig, main: str, first: dict) -> list[dict]:
    """Each training seed's main metric per model and the decision rule on its eval (seed 0's
    decision is `first`); a seed whose eval has not run has no models and no verdict."""
    rule, metric = D.Rule.from_config(cfg.eval), D.decision_metric(cfg.task.type)
    out = []
    for k in range(cfg.eval.seeds):
        paths = RunPaths(run_dir, seed=k)
        evals = _read(paths.eval_results)
        decision = first if k == 0 else D.decide(
            D.read_item_scores(paths.eval_predictions, cfg.task.type) or {}, evals, rule,
            metric, cfg.seed)
        models = {name: _value(row, main) for name, row in evals.get("models", {}).items()}
        out.append({"seed": k, "train_seed": cfg.seed + k, "models": models,
                    "decision": decision})
    return out


def _value(row: dict | None, metric: str) -> float | None:
    est = (row or {}).get(metric)
    return est.get("value") if isinstance(est, dict) else est


def teacher_check(paths: RunPaths) -> dict | None:
    """The teacher check's figures (no answers), or None where no check ran."""
    found = _read(paths.teacher_check)
    return {k: v for k, v in found.items() if k != "answers"} or None


def _check_sentence(check: dict) -> str:
    if not check.get("gold"):
        return "; ".join(check.get("failures") or ["no gold to score against"])
    t, m = check["teacher"], check["majority"]
    p = check["teacher_vs_majority"]["p_value"]
    return (f"{check['metric']} {t['value']:.3f} [{t['ci_low']:.2f}, {t['ci_high']:.2f}] on "
            f"{check['n']} training prompts vs {m['value']:.3f} for always answering "
            f"{m['answer']!r} (one-sided p={p:.3g})")


def _reference_sentence(teacher: float | None, metric: str, majority: dict | None) -> str:
    """The teacher's own held-out score against the gold and its gap to the majority label."""
    if not majority or teacher is None:
        return ""
    base = majority[majority["metric"]]["value"]
    test = majority["teacher_vs_majority"]
    return (f" The teacher itself scores {teacher:.3f} {metric} on held-out gold; always "
            f"answering {majority['answer']!r} scores {base:.3f} (gap {teacher - base:+.3f}, "
            f"{test['method']} one-sided p={test['p_value']:.3g}).")


def cost_side(manifest: dict, cfg: RunConfig, models: dict[str, dict],
              decision: dict) -> dict[str, Any]:
    """One-off cost of distilling, and for the student the decision is about: its saving per
    1k requests against the teacher (bench's prices) and the break-even volume."""
    one_off = D.one_off_cost(manifest, cfg)
    student = decision.get("student")
    per_1k = {n: (models.get(n) or {}).get("cost_per_1k_requests") for n in ("teacher", student)}
    return {"one_off": one_off, "student": student,
            **D.break_even(one_off["total_usd"], per_1k["teacher"], per_1k.get(student))}


def collapse_warnings(collapse: dict | None) -> list[str]:
    """A tuned or base student that answers (nearly) one label to every held-out row."""
    out = []
    for name, c in (collapse or {}).items():
        if name != "teacher" and c["level"] == "stop":
            out.append(f"{D.NAMES.get(name, name).removeprefix('the ')} answered {c['label']!r} "
                       f"on {c['answers'].get(c['label'], 0)} of {c['n']} held-out rows (the "
                       f"{c['reference']} has it for {c['reference_share']:.0%}): it has "
                       "collapsed to one label")
    return out


def verdict(models: dict[str, dict], metric: str, decision: dict, cost: dict | None = None,
            check: dict | None = None, majority: dict | None = None,
            collapse: dict | None = None) -> dict[str, Any]:
    """The decision rule's output, with the cost side and the teacher's own standing. Never
    against a teacher that failed its check: "close to the teacher" would mean nothing."""
    teacher = _value(models.get("teacher"), metric)
    if check and not check.get("passed", True):
        return {"passes": False, "ship": None, "teacher_failed_check": True,
                "text": "No verdict against the teacher: it failed its check ("
                        + _check_sentence(check) + "), so a student's standing against it "
                        "means nothing. Fix the teacher first (`distill check`: prompt placement, "
                        "few-shot examples, a stronger model)."
                        + _reference_sentence(teacher, metric, majority)}
    out = dict(decision)
    if out.get("passes") is None:
        return out
    best = out["student"]
    t_lat = (models.get("teacher") or {}).get("latency_p50_ms")
    s_lat = (models.get(best) or {}).get("latency_p50_ms")
    if t_lat and s_lat:
        out["latency_ratio"] = s_lat / t_lat
    t_cost = (models.get("teacher") or {}).get("cost_per_1k_requests")
    s_cost = (models.get(best) or {}).get("cost_per_1k_requests")
    if t_cost and s_cost is not None:
        out["cost_ratio"] = s_cost / t_cost
    if cost:
        out["cost"] = cost
        out["text"] += " " + D.cost_sentence(cost, D.NAMES[best], out["passes"])
    out["text"] += _reference_sentence(teacher, metric, majority)
    if warnings := collapse_warnings(collapse):
        out["collapsed"] = warnings
        out["text"] += " Warning: " + "; ".join(warnings) + "."
    return out


def _funnel(summaries: dict, check: dict | None = None) -> list[dict]:
    """What is left after each step (with its unit and what it dropped), prompts to pairs."""
    def step(name: str, unit: str, rows, dropped=None, note: str = "") -> dict:
        return {"step": name, "unit": unit, "rows": rows, "dropped": dropped, "note": note}

    funnel = []
    if prompts := summaries.get("prompts", {}):
        funnel.append(step("train prompts", "prompts", prompts.get("train_prompts")))
    if check and check.get("n"):
        state = "passed" if check.get("passed") else "FAILED (accepted)" if check.get(
            "accepted") else "FAILED"
        funnel.append({**step("teacher check (sample)", "prompts", check["n"], None,
                              f"{state}: {_check_sentence(check)}"), "in_plot": False})
    if gen := summaries.get("generate", {}):
        funnel.append(step("teacher completions", "rows", gen.get("completions"),
                           gen.get("errors")))
    for s in summaries.get("curate", {}).get("funnel", []):
        funnel.append(step(s["step"], s.get("unit", "rows"), s.get("out"), s.get("dropped"),
                           s.get("note", "")))
    if pairs := summaries.get("pairs", {}):
        funnel.append(step("preference pairs", "pairs", pairs.get("pairs")))
    if (sft := summaries.get("sft", {})).get("inputs_total"):
        funnel.append({**step("student inputs shortened", "examples", sft["inputs_total"], None,
                              f"{sft['inputs_shortened']} cut ({sft['shorten']}) to "
                              f"{sft['prompt_budget']} prompt tokens, none dropped"),
                       "in_plot": False})
    return funnel


FUNNEL_HEADER = ["step", "unit", "dropped", "left", "note"]


def _funnel_cells(f: dict) -> list[str]:
    dropped = f.get("dropped")
    return [f["step"], f.get("unit", ""), "" if dropped is None else str(dropped),
            str(f.get("rows")), f.get("note") or ""]


# --- plots ---------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict, bench: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, metric, out = report["models"], report["main_metric"], {}
    names = [n for n in MODELS if _value(models.get(n), metric) is not None]
    if names:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        vals = [_value(models[n], metric) for n in names]
        lows = [v - models[n][metric]["ci_low"] for v, n in zip(vals, names)]
        highs = [models[n][metric]["ci_high"] - v for v, n in zip(vals, names)]
        ax.bar([LABELS[n] for n in names], vals, yerr=[lows, highs], capsize=5,
               color=[COLORS[n] for n in names])
        rule, v = report["verdict"].get("rule"), report["verdict"]
        if rule and v.get("metric") == metric and "teacher" in names:
            floor = _value(models["teacher"], metric) - rule["non_inferiority_margin"]
            ax.axhline(floor, ls="--", c="k", lw=1, label="teacher - margin")
            ax.legend(loc="lower right")
        ax.set_ylabel(f"{metric} (95% CI, {_direction(report)})")
        ax.set_ylim(0, 1)
        ax.set_title("Held-out quality")
        ax.tick_params(axis="x", labelsize=8)
        out["quality"] = _png(fig)
        plt.close(fig)
    lat = {n: m.get("latencies_ms") for n, m in bench.get("models", {}).items()
           if m.get("latencies_ms")}
    if lat:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        order = [n for n in MODELS if n in lat]
        ax.boxplot([lat[n] for n in order], showfliers=True)
        ax.set_xticks(range(1, len(order) + 1), [LABELS[n] for n in order], fontsize=8)
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title("Latency per request at concurrency 1")
        out["latency"] = _png(fig)
        plt.close(fig)
    costs = {n: models[n].get("cost_per_1k_requests") for n in MODELS
             if n in models and models[n].get("cost_per_1k_requests") is not None}
    if costs:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([LABELS[n] for n in costs], list(costs.values()),
               color=[COLORS[n] for n in costs])
        ax.set_ylabel("USD per 1k requests")
        ax.set_title("Cost per 1k requests")
        ax.tick_params(axis="x", labelsize=8)
        out["cost"] = _png(fig)
        plt.close(fig)
        both = [n for n in costs if _value(models.get(n), metric) is not None]
        if both:
            fig, ax = plt.subplots(figsize=(6, 3.2))
            for n in both:
                ax.scatter(costs[n], _value(models[n], metric), s=80, c=COLORS[n],
                           label=LABELS[n])
            ax.set_xlabel("USD per 1k requests")
            ax.set_ylabel(metric)
            ax.set_title("Quality vs cost")
            ax.legend(fontsize=8)
            out["quality_vs_cost"] = _png(fig)
            plt.close(fig)
    if judged := judge_plot(report.get("judge")):
        out["judge"] = judged
    if labels := label_plot(report.get("labels")):
        out["labels"] = labels
    funnel = [f for f in report["funnel"]
              if f.get("rows") is not None and f.get("in_plot", True)]
    if funnel:
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(funnel) + 1))
        ax.barh([f"{f['step']} ({f['unit']})" for f in funnel][::-1],
                [f["rows"] for f in funnel][::-1], color="#8172b3")
        ax.set_xlabel("left after the step")
        ax.set_title("Data funnel")
        out["funnel"] = _png(fig)
        plt.close(fig)
    return out


def judge_plot(judged: dict | None) -> str | None:
    """Win / tie / loss of each student against the teacher, as stacked horizontal bars."""
    models = (judged or {}).get("models") or {}
    if not models:
        return None
    import matplotlib.pyplot as plt

    names = [n for n in MODELS if n in models][::-1]  # top to bottom in the table's order
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    left = [0.0] * len(names)
    for outcome, color in (("win", "#55a868"), ("tie", "#cccccc"), ("loss", "#c44e52")):
        shares = [models[n][outcome] for n in names]
        ax.barh([LABELS[n] for n in names], shares, left=left, color=color, label=outcome)
        left = [a + b for a, b in zip(left, shares)]
    ax.axvline(0.5, ls=":", c="k", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out rows")
    ax.set_title("Judge: student vs teacher (both orders)")
    ax.legend(ncol=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.12))
    png = _png(fig)
    plt.close(fig)
    return png


def label_plot(labels: dict | None) -> str | None:
    """Label shares: the gold (or the prior) next to the teacher's voted answers and the kept
    training targets: a collapsed teacher shows as one tall bar."""
    if not labels or not labels.get("teacher"):
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    names = [k for k in labels["teacher"]]
    series = {"gold" if labels.get("gold") else "prior": labels.get("gold")
              or labels["check"]["expected"]}
    series["teacher (voted)"] = labels["teacher"]
    if labels.get("kept"):
        series["kept for training"] = labels["kept"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x, width = np.arange(len(names)), 0.8 / len(series)
    for i, (name, counts) in enumerate(series.items()):
        total = sum(counts.values()) or 1
        ax.bar(x + i * width, [counts.get(k, 0) / total for k in names], width, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, names, fontsize=8)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.set_title("Labels: gold vs teacher")
    ax.legend(fontsize=8)
    png = _png(fig)
    plt.close(fig)
    return png


# --- rendering -----------------------------------------------------------------------------

COLUMNS = [("served_as", "served as", "{}"), ("latency_p50_ms", "p50 ms", "{:.0f}"), ("latency_p95_ms", "p95 ms", "{:.0f}"),
           ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"), ("tokens_per_s", "tokens/s", "{:.1f}"),
           ("prompt_tokens_per_request", "prompt tok/req", "{:.0f}"),
           ("cost_per_1k_requests", "$ / 1k req", "{:.4f}"),
           ("cost_per_1m_tokens", "$ / 1M tok", "{:.3f}")]


def _fmt(value, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float, str)) else "n/a"


def _metric_cell(row: dict, metric: str) -> str:
    est = row.get(metric)
    if not isinstance(est, dict):
        return "n/a"
    return f"{est['value']:.3f} [{est['ci_low']:.3f}, {est['ci_high']:.3f}]"


def _direction(report: dict) -> str:
    return "higher is better" if report.get("higher_is_better", True) else "lower is better"


def _cut_cell(found: dict | None, limit: int | None) -> str:
    """"3/200": answers cut at the token limit, of all; "unknown" for old saved answers."""
    if not found:
        return "n/a"
    if found.get("cut") is None:
        return "unknown"
    cell = f"{found['cut']}/{found['of']}"
    saved_at = found.get("max_tokens")
    return cell + (f" (at {saved_at})" if saved_at and saved_at != limit else "")


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The main table: each model's main metric (with its direction) and, beside it, its
    answers cut at the token limit; then speed and cost."""
    metric = report["main_metric"]
    cut = report.get("truncated")
    header = ["model", f"{metric} (95% CI, {_direction(report)})"]
    if cut:
        header.append(f"cut at {cut['max_tokens']} tok")
    header += [c[1] for c in COLUMNS]
    rows = []
    for name, row in report["models"].items():
        cells = [LABELS[name], _metric_cell(row, metric)]
        if cut:
            cells.append(_cut_cell(cut["models"].get(name), cut["max_tokens"]))
        rows.append(cells + [_fmt(row.get(k), f) for k, _, f in COLUMNS])
    return header, rows


def reference_lines(report: dict) -> list[str]:
    """What the main metric was measured against, said plainly, and the cut answers."""
    metric, n = report["main_metric"], report.get("examples")
    rows = f"{n} held-out rows" if n else "the held-out rows"
    lines = []
    if report.get("reference") == "teacher":
        lines.append(f"No gold answers for this task: the teacher's answer is the reference. "
                     f"Every {metric} here measures agreement with the teacher on {rows}, not "
                     "correctness (the teacher scores 1.0 against itself by construction).")
    elif report.get("reference") == "gold":
        lines.append(f"Scored against the gold answers of {rows} ({metric}: "
                     f"{_direction(report)}).")
    if cut := report.get("truncated"):
        counts = ", ".join(f"{LABELS.get(name, name)} {_cut_cell(found, cut['max_tokens'])}"
                           for name, found in cut["models"].items())
        lines.append(f"Answers cut at {cut['max_tokens']} tokens (scored as they are, not "
                     f"dropped): {counts}.")
    return lines


JUDGE_HEADER = ["student", "win", "tie", "loss", "mean score (95% CI)", "n",
                "unparseable verdicts"]


def judge_rows(report: dict) -> list[list[str]]:
    models = (report.get("judge") or {}).get("models", {})
    return [[LABELS.get(name, name), f"{j['win']:.1%}", f"{j['tie']:.1%}", f"{j['loss']:.1%}",
             _metric_cell(j, "score"), str(j["n"]), f"{j['unparseable']}/{j['verdicts']}"]
            for name, j in models.items()]


def judge_sentence(report: dict) -> str:
    judged = report.get("judge")
    if not judged:
        return ""
    ref = ("with the gold answer as reference" if judged.get("reference") == "gold" else
           "with no reference answer (no gold: the teacher's answer is one of the two compared)")
    return (f"Judge {judged['judge']} compares each student with the teacher on every held-out "
            f"row, {ref}, asked in both orders (A/B, then B/A) so a preferred position cancels. "
            "Score: the mean over the two orders of win 1, tie 0.5, loss 0 (0.5 = on par with "
            "the teacher); an unreadable verdict counts as a tie.")


def teacher_check_lines(report: dict) -> list[str]:
    """The teacher's own standing: its check on training prompts, its held-out score vs the
    majority label."""
    lines = []
    if check := report.get("teacher_check"):
        state = "passed" if check.get("passed") else "FAILED"
        lines.append(f"check {state}: {_check_sentence(check)}")
        if "student_base" in check:
            sb = check["student_base"]
            lines.append(f"prompted base student on the same prompts: {sb['value']:.3f} "
                         f"[{sb['ci_low']:.2f}, {sb['ci_high']:.2f}]")
        lines += [f"warning: {w}" for w in check.get("warnings", [])]
    if majority := report.get("majority_baseline"):
        teacher = _value(report["models"].get("teacher"), report["main_metric"])
        if sentence := _reference_sentence(teacher, report["main_metric"], majority).strip():
            lines.append(sentence)
    if warning := (report.get("labels") or {}).get("warning"):
        lines.append(f"warning: {warning}")
    return lines


DECISION_HEADER = ["comparison", "difference [95% CI]", "p (better)", "p (within margin)",
                   "test", "passes"]


def _test_cells(label: str, t: dict, passes: bool | None) -> list[str]:
    within = t.get("p_noninferior", t.get("p_within"))
    return [label, f"{t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]",
            f"{t['p_value']:.3g}" if "p_value" in t else "",
            "" if within is None else f"{within:.3g}",
            t.get("method", "") + (f" / {t['noninferior_method']}" if "noninferior_method" in t
                                   else ""), "" if passes is None else "yes" if passes else "no"]


def decision_rows(report: dict) -> list[list[str]]:
    """The paired tests behind the verdict: each tuned student vs the base student and vs the
    teacher, its forgetting, and the base student vs the teacher."""
    v = report["verdict"]
    rows = []
    for name, a in (v.get("students") or {}).items():
        short = LABELS[name]
        rows.append(_test_cells(f"{short} - base student", a["vs_base"], a["better_than_base"]))
        rows.append(_test_cells(f"{short} - teacher", a["vs_teacher"],
                                a["noninferior_to_teacher"]))
        f = a["forgetting"]
        if f.get("measured") == "paired":
            rows.append(_test_cells(f"forgetting: base - {short}", {**f, "diff": f["value"]},
                                    f["within"]))
        elif f.get("measured") == "point":
            rows.append([f"forgetting: base - {short}", f"{f['value']:+.3f} (point)", "", "",
                         "general_ability", "yes" if f["within"] else "no"])
    if b := v.get("base_vs_teacher"):
        rows.append(_test_cells("base student - teacher", b, None))
    return rows


COST_HEADER = ["one-off cost", "seconds", "units", "tokens", "USD"]


def cost_rows(report: dict) -> list[list[str]]:
    cost = report["verdict"].get("cost") or {}
    rows = []
    for x in (cost.get("one_off") or {}).get("items", []):
        tokens = (x.get("prompt_tokens") or 0) + (x.get("completion_tokens") or 0)
        rows.append([x["item"], _fmt(x.get("seconds"), "{:.0f}"), str(x.get("units", "")),
                     str(tokens or ""), _fmt(x.get("usd"), "{:.4f}") if x.get("usd") is not None
                     else x.get("note", "n/a")])
    if cost:
        rows.append(["total", "", "", "", f"{cost['one_off']['total_usd']:.4f}"])
        student = LABELS.get(cost.get("student"), "student")
        rows.append([f"saving per 1k requests ({student} vs teacher)", "", "", "",
                     _fmt(cost.get("saving_per_1k_requests"), "{:.4f}")])
        rows.append(["break-even (requests)", "", "", "",
                     _fmt(cost.get("break_even_requests"), "{}")])
    return rows


def student_costs(summaries: dict, models: dict) -> dict[str, dict]:
    """What each tuned student (seed 0) took to make, counting the stages it builds on: the
    teacher's tokens (generation; OPD adds every token the teacher scored) and the student-side
    compute seconds (training; on-policy pairs add the SFT student's sampling)."""
    gen = summaries.get("generate") or {}
    generated = (gen.get("prompt_tokens") or 0) + (gen.get("completion_tokens") or 0)

    def ran(stage: str) -> dict:
        found = summaries.get(stage) or {}
        return {} if found.get("skipped") else found

    sft, dpo, opd, policy = ran("sft"), ran("dpo"), ran("opd"), ran("policy_pairs")
    out = {}
    if "student_sft" in models and sft:
        out["student_sft"] = {"teacher_tokens": generated, "seconds": sft.get("seconds"),
                              "peak_rss_mb": _peak(sft),
                              "data": f"{sft.get('train_examples', '?')} teacher examples"}
    if "student_dpo" in models and sft and dpo:
        on_policy = dpo.get("pairs_from") == "on_policy"
        out["student_dpo"] = {
            "teacher_tokens": generated,
            "seconds": _sum(sft.get("seconds"), dpo.get("seconds"),
                            policy.get("seconds") if on_policy else 0),
            "peak_rss_mb": _peak(sft, dpo),
            "data": f"{dpo.get('pairs', '?')} " + (
                f"on-policy pairs ({policy.get('samples', '?')} student samples)" if on_policy
                else "teacher pairs")}
    if "student_opd" in models and sft and opd:
        out["student_opd"] = {"teacher_tokens": generated + (opd.get("train_tokens") or 0),
                              "seconds": _sum(sft.get("seconds"), opd.get("seconds")),
                              "peak_rss_mb": _peak(sft, opd),
                              "data": f"{opd.get('steps', '?')} steps of student samples "
                                      f"scored by the teacher"}
    return out


def _peak(*summaries: dict) -> float | None:
    """The highest training-stage peak RSS among these stages (None when one did not record
    it: a run made before stages measured their own peak)."""
    peaks = [s.get("stage_peak_rss_mb") for s in summaries]
    return None if any(p is None for p in peaks) else max(peaks)


def _sum(*values) -> float | None:
    return None if any(v is None for v in values) else round(sum(values), 1)


STUDENT_COST_HEADER = ["student", "teacher tokens", "training seconds (incl. SFT)",
                       "training peak RSS MB", "trained on"]


def student_cost_rows(report: dict) -> list[list[str]]:
    return [[LABELS.get(name, name), f"{c['teacher_tokens']:,}", _fmt(c["seconds"], "{:.0f}"),
             _fmt(c.get("peak_rss_mb"), "{:,.0f}"), c["data"]]
            for name, c in (report.get("student_costs") or {}).items()]


def _rule_line(report: dict) -> str:
    rule = report["verdict"].get("rule")
    if not rule:
        return ""
    return (f"Decision metric {report['verdict']['metric']}; ship a tuned student only if it "
            f"beats the base student (one-sided p < {rule['alpha']:g}), is shown within "
            f"{rule['non_inferiority_margin']:g} of the teacher, and loses at most "
            f"{rule['max_forgetting']:g} general ability.")


FORGETTING_HEADER = ["model", "instructions followed (95% CI)"]


def forgetting_rows(report: dict) -> tuple[str, list[list[str]]]:
    """The forgetting check's caption and one row per student (eval/results.json)."""
    found = report.get("forgetting") or {}
    if not found.get("models"):
        return "", []
    rows = [[LABELS.get(name, name), f"{m['value']:.3f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"]
            for name, m in found["models"].items()]
    return (f"{found['items']} instruction-following prompts ({found['source']}), each "
            "answer scored 0/1 by its checker; a tuned student well below the base has "
            "forgotten some general instruction following."), rows


def seed_tables(report: dict) -> tuple[str, list[str], list[list[str]], list[list[str]]]:
    """Training seeds: a caption, each model's metric per seed with mean, min-max and sd, and
    each seed's own decision. Empty for a single-seed run."""
    seeds = report.get("seeds")
    if not seeds:
        return "", [], [], []
    count, metric = seeds["count"], seeds["metric"]
    header = ["model", *[f"seed {k}" for k in range(count)], "mean", "min-max", "sd"]
    rows = [[LABELS.get(name, name), *[_fmt(v, "{:.3f}") for v in m["values"]],
             _fmt(m["mean"], "{:.3f}"),
             "" if m["min"] is None else f"{m['min']:.3f}-{m['max']:.3f}",
             _fmt(m["std"], "{:.3f}")] for name, m in seeds["models"].items()]
    decided = [[str(d["seed"]), str(d["train_seed"]), LABELS.get(d["ship"], str(d["ship"])),
                d["text"] or ""] for d in seeds["decisions"]]
    caption = (f"{metric} of each model trained with {count} training seeds on the same data "
               "(teacher and base student answer once: they do not train). The table above "
               "and the paired tests below are seed 0's; the verdict ships only if the "
               "seeds agree.")
    return caption, header, rows, decided


SEED_DECISION_HEADER = ["seed", "training seed", "decision", "why"]


def render_markdown(report: dict) -> str:
    header, rows = table_rows(report)
    lines = [f"# distill report: {report['run_id']}", "", f"**Verdict:** {report['verdict']['text']}",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for note in reference_lines(report):
        lines += ["", note]
    if judged := judge_rows(report):
        lines += ["", "## Judge: student vs teacher", "", judge_sentence(report), "",
                  "| " + " | ".join(JUDGE_HEADER) + " |", "|" + "---|" * len(JUDGE_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in judged]
    if check_lines := teacher_check_lines(report):
        lines += ["", "## Teacher check", "", *[f"- {x}" for x in check_lines]]
    caption, header, rows, decided = seed_tables(report)
    if rows:
        lines += ["", "## Training seeds", "", caption, "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "| " + " | ".join(SEED_DECISION_HEADER) + " |",
                  "|" + "---|" * len(SEED_DECISION_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in decided]
    if decision := decision_rows(report):
        lines += ["", "## Ship decision", "", _rule_line(report), "",
                  "| " + " | ".join(DECISION_HEADER) + " |", "|" + "---|" * len(DECISION_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in decision]
    if costs := cost_rows(report):
        lines += ["", "## Cost of distilling", "", "| " + " | ".join(COST_HEADER) + " |",
                  "|" + "---|" * len(COST_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in costs]
    if made := student_cost_rows(report):
        lines += ["", "## What each student took", "",
                  "| " + " | ".join(STUDENT_COST_HEADER) + " |",
                  "|" + "---|" * len(STUDENT_COST_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in made]
    if report["funnel"]:
        lines += ["", "## Data funnel", "", "| " + " | ".join(FUNNEL_HEADER) + " |",
                  "|" + "---|" * len(FUNNEL_HEADER)]
        lines += ["| " + " | ".join(_funnel_cells(f)) + " |" for f in report["funnel"]]
    caption, rows = forgetting_rows(report)
    if rows:
        lines += ["", "## Forgetting check", "", caption, "",
                  "| " + " | ".join(FORGETTING_HEADER) + " |", "|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distill report {run_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.verdict {{ padding: 12px 16px; border-radius: 6px; font-size: 16px; }}
.pass {{ background: #e6f4ea; border: 1px solid #55a868; }}
.fail {{ background: #fdecea; border: 1px solid #c44e52; }}
.plots img {{ max-width: 470px; margin: 4px; border: 1px solid #eee; }}
</style></head><body>
<h1>distill report</h1>
<p>run <code>{run_id}</code>, task <code>{task}</code></p>
<div id="verdict" class="verdict {verdict_class}"><b>Verdict:</b> {verdict}</div>
<h2>Teacher vs student</h2>
{table}
{notes}
{judge}
<h2>Teacher check</h2>
<ul>{check}</ul>
{seeds}
<h2>Ship decision</h2>
<p>{rule}</p>
{decision}
<h2>Cost of distilling</h2>
{cost}
{made}
<div class="plots">{images}</div>
<h2>Data funnel</h2>
{funnel}
{forgetting}
<script>
// Mark images that failed to load, and record the count (headless checks read it).
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  imgs.filter(i => !ok.includes(i)).forEach(i => i.replaceWith("[plot failed to load]"));
  document.body.dataset.imagesLoaded = ok.length + "/" + imgs.length;
}});
</script>
</body></html>
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _judge_html(report: dict) -> str:
    if not (rows := judge_rows(report)):
        return ""
    return (f'<h2 id="judge">Judge: student vs teacher</h2>'
            f"<p>{html.escape(judge_sentence(report))}</p>{_html_table(JUDGE_HEADER, rows)}")


def render_html(report: dict, images: dict[str, str]) -> str:
    header, rows = table_rows(report)
    imgs = "".join(f'<img alt="{name}" src="data:image/png;base64,{data}">'
                   for name, data in images.items())
    funnel = _html_table(FUNNEL_HEADER, [_funnel_cells(f) for f in report["funnel"]])
    passes = report["verdict"].get("passes")
    caption, forgetting = forgetting_rows(report)
    forgetting_html = (f"<h2>Forgetting check</h2><p>{html.escape(caption)}</p>"
                       + _html_table(FORGETTING_HEADER, forgetting)) if forgetting else ""
    made = student_cost_rows(report)
    caption, seed_header, seed_rows, decided = seed_tables(report)
    seeds_html = (f'<h2 id="seeds">Training seeds</h2><p>{html.escape(caption)}</p>'
                  + _html_table(seed_header, seed_rows)
                  + _html_table(SEED_DECISION_HEADER, decided)) if seed_rows else ""
    return PAGE.format(forgetting=forgetting_html, seeds=seeds_html,
                       run_id=html.escape(str(report["run_id"])),
                       task=html.escape(str(report["task"])),
                       verdict=html.escape(report["verdict"]["text"]),
                       verdict_class="pass" if passes else "fail",
                       table=_html_table(header, rows), images=imgs, funnel=funnel,
                       notes="".join(f"<p>{html.escape(x)}</p>" for x in reference_lines(report)),
                       judge=_judge_html(report),
                       check="".join(f"<li>{html.escape(x)}</li>"
                                     for x in teacher_check_lines(report)) or "<li>not run</li>",
                       rule=html.escape(_rule_line(report)),
                       decision=_html_table(DECISION_HEADER, decision_rows(report)),
                       cost=_html_table(COST_HEADER, cost_rows(report)),
                       made=('<h2 id="students">What each student took</h2>'
                             + _html_table(STUDENT_COST_HEADER, made) if made else ""))


def run_report(run) -> dict:
    """Stage `report`: write report/{report.json, report.md, report.html}."""
    paths = run.paths
    report = build_report(run.dir, run.manifest, run.cfg)
    report["tags"] = run_tags(run)  # where the student came from (also on the exported card)
    images = plots(report, _read(paths.bench_results))
    write_json_atomic(paths.report_json, report)
    write_text_atomic(paths.report_md, render_markdown(report))
    write_text_atomic(paths.report_html, render_html(report, images))
    return {"verdict": report["verdict"].get("text"), "passes": report["verdict"].get("passes"),
            "html": str(paths.report_html), "plots": sorted(images)}
