"""Stage `eval`: held-out quality of teacher, base student and the tuned students (SFT, SFT+DPO,
SFT+OPD).

All answer the same held-out rows, greedily, each model on its group's OpenAI-compatible server
(distill/contenders.py; bench measures latency on that same server before it stops); each is
scored with the task's metrics and a bootstrap 95% CI. The students also answer a few broad
instruction-following prompts (distill/forgetting.py: IFBench items, scored 0/1), so forgetting
shows up next to the task gain. Each contender's answers are saved as
soon as they exist, so a crash in the middle resumes without re-running the finished ones.

Answers get `cfg.answer_tokens` tokens; those cut at the limit are scored as they are and
counted per contender ("truncated"), so a low score from a short budget shows. Free-text tasks
also get a pairwise judge (distill/judge.py): each student against the teacher, both orders.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import ExitStack
from typing import TYPE_CHECKING, Callable

import pyarrow as pa

from distill import forgetting, judge, metrics
from distill.contenders import (Contender, contenders, engine_groups, has_server,
                                served_generator, served_group, trained_budget)
from distill.core.config import RunConfig, TaskConfig
from distill.data import majority_label, read_examples
from distill.core.errors import ConfigError, StageNotReadyError
from distill.curation.collapse import check_labels
from distill.curation.labels import canonical_json, normalize_label
from distill.core.messages import teacher_messages
from distill.core.io import read_json, write_json_atomic, write_parquet_atomic
from distill.latency import measure_contender, saved_measure
from distill.core.rundir import Run
from distill.server_queue import ServerQueue
from distill.stats import compare

if TYPE_CHECKING:
    from distill.engines import ServedModel

MAIN_METRIC = metrics.MAIN_METRIC


def shortened_inputs(run: Run, stage: str, texts: list[str]) -> int:
    """How many of these inputs a tuned student sees shortened (as in training)."""
    from students.fit import load_fitter

    fitter = load_fitter(run.cfg, trained_budget(run, stage))
    for text in texts:
        fitter.messages(text)
    return fitter.shortened


def score(task: TaskConfig, answers: list[str], gold: list[str], resamples: int,
          seed: int) -> tuple[dict[str, dict], list]:
    """The task's metrics with CIs (each a bootstrap over rows), plus the parsed answers."""
    if task.type == "classification":
        labels = task.labels or []
        parsed = [normalize_label(a, labels) for a in answers]
        items = {"accuracy": (metrics.accuracy, parsed),
                 "macro_f1": (lambda p, g: metrics.macro_f1(p, g, labels), parsed)}
    elif task.type == "json":
        parsed = [canonical_json(a) for a in answers]
        items = json_metric_items(task, answers, gold)
    else:
        parsed = answers
        items = {"rouge_l": (metrics.mean_rouge_l, parsed),
                 "exact_match": (metrics.exact_match, parsed)}
    scores = {name: metrics.bootstrap(fn, rows, gold, resamples, seed).to_dict()
              for name, (fn, rows) in items.items()}
    if task.type == "json":
        scores["field_exact"] = metrics.field_exact_match(items["field_f1"][1])
    return scores, parsed


def json_metric_items(task: TaskConfig, answers: list[str], gold: list[str]) -> dict[str, tuple]:
    """JSON metrics as (metric over rows, per-row values): field-level F1 (the main one, with
    its precision and recall), whole-answer match, JSON and schema validity. Per-row values are
    computed once, so the bootstrap only re-adds them."""
    counts = [metrics.field_counts(a, g) for a, g in zip(answers, gold)]
    valid = [float(metrics.parse_json(a)[0]) for a in answers]
    in_schema = [float(metrics.schema_valid(a, task.json_schema)) for a in answers]
    equal = [float(metrics.json_equal(a, g)) for a, g in zip(answers, gold)]
    return {"field_f1": (lambda c, _: metrics.field_f1_of(c), counts),
            "field_precision": (lambda c, _: metrics.field_precision_of(c), counts),
            "field_recall": (lambda c, _: metrics.field_recall_of(c), counts),
            "exact_match": (metrics.mean, equal),
            "json_valid": (metrics.mean, valid),
            "schema_valid": (metrics.mean, in_schema)}


def _requests(cfg: RunConfig, c: Contender, examples, general: list[forgetting.Item]):
    """(message lists, max_tokens) per request: the task, and for students the forgetting check
    (IFBench's instructions need room: `eval.forgetting_max_tokens`; own short questions: 32)."""
    requests = [([c.prompt(cfg.task, ex.text) for ex in examples], cfg.answer_tokens)]
    if c.role == "student" and general:
        tokens = cfg.eval.forgetting_max_tokens if general[0].instruction_ids else 32
        requests.append(([[{"role": "user", "content": p.prompt}] for p in general], tokens))
    return requests


def _saved_answers(run: Run, group: list[Contender], general: list[forgetting.Item]
                   ) -> dict[str, dict]:
    """Answers saved by an earlier run for this group; not asked again. Students' answers
    saved for another forgetting item list (older code, other items) are dropped."""
    cached = {c.name: read_json(run.paths.eval_answers(c.name)) for c in group
              if run.paths.eval_answers(c.name).exists()}
    students = {c.name for c in group if c.role == "student"}
    return {name: a for name, a in cached.items()
            if name not in students or len(a.get("general", [])) == len(general)}


# Measured on 2 cores (benchmarks/results/eval_overlap.md): the quickstart's eval took 394.5 s
# overlapped and 392.9 s not: the waits for servers fell 148 -> 90 s, and the answers slowed by
# as much, both servers sharing the same two cores. With a core to spare, the start's imports
# run beside the answers (not measured here: no such machine).
OVERLAP_MIN_CPUS = 4


def _overlap_starts(cfg: RunConfig) -> bool:
    from teachers.vllm_engine import has_gpu

    setting = cfg.eval.overlap_server_starts
    if setting == "auto":
        return not has_gpu() and (os.cpu_count() or 1) >= OVERLAP_MIN_CPUS
    return setting


def _answer_all(run: Run, group: list[Contender], cached: dict[str, dict], examples,
                general: list[forgetting.Item], servers: ServerQueue, seconds: Counter,
                after: Callable[[ServedModel, dict], None] | None = None) -> dict[str, dict]:
    """Greedy answers of the contenders of one engine group; each saved as soon as it ends.
    They are asked on the group's server (from `servers`, which may have started it while the
    group before answered); when bench is on (and this is seed 0, whose students bench
    measures), latency is measured on that same server before it stops, so bench need not
    start it again. `seconds` adds up where the time went (waiting for the server to start,
    task answers, forgetting check, latency). `after(served, answers)` runs last, on the same
    server, with the group's answers."""
    todo = [c for c in group if c.name not in cached]
    if not todo:
        return cached
    if not has_server(run.cfg, group):
        return _answer_in_process(run, todo, examples, general, cached, seconds)
    bench = run.cfg.bench.enabled and run.seed_index == 0
    start = time.perf_counter()
    with servers.serve(group) as served:
        seconds["server_start"] += time.perf_counter() - start
        for c in todo:
            cached[c.name] = _answers(run, served_generator(run.cfg, served, c), c, examples,
                                      general, seconds)
        start = time.perf_counter()
        for c in group if bench else []:
            if saved_measure(run, c) is None:
                measure_contender(run, served, c)
        seconds["latency"] += time.perf_counter() - start
        if after is not None:
            after(served, cached)
    return cached


def _answer_groups(run: Run, everyone: list[Contender], examples,
                   general: list[forgetting.Item], seconds: Counter
                   ) -> tuple[dict[str, dict], dict | None]:
    """Every contender's answers, group by group; the servers of the groups that still have
    questions to answer start one ahead (`eval.overlap_server_starts`). Where the teacher's
    vLLM server is also the judge (free-text tasks), the teacher answers last and the judge
    asks that server before it stops: the judge's verdicts come back too (else None)."""
    cfg = run.cfg
    groups = engine_groups(cfg, everyone)
    judge_on_teacher = _judges_on_teacher_server(cfg)
    if judge_on_teacher:
        groups = [g for g in groups if g[0].role != "teacher"] + \
                 [g for g in groups if g[0].role == "teacher"]
    saved = [_saved_answers(run, g, general) for g in groups]
    to_serve = [g for g, done in zip(groups, saved)
                if len(done) < len(g) and has_server(cfg, g)]
    answers: dict[str, dict] = {}
    judged: dict | None = None

    def judge_here(served: ServedModel, teachers: dict[str, dict]) -> None:
        from distill.engines import chat

        nonlocal judged
        start = time.perf_counter()
        teacher = next(c for c in everyone if c.role == "teacher")
        ask = chat(served_generator(cfg, served, teacher), cfg.judge.max_tokens, cfg.seed)
        everyones = {**answers, **teachers}
        judged = judge_students(run, examples, {c.name: everyones[c.name] for c in everyone},
                                has_gold(examples), ask)
        seconds["judge"] += time.perf_counter() - start

    with ServerQueue(lambda g, cancel: served_group(run, g, cancel), to_serve,
                     ahead=_overlap_starts(cfg)) as servers:
        for group, done in zip(groups, saved):
            after = judge_here if judge_on_teacher and group[0].role == "teacher" else None
            answers.update(_answer_all(run, group, done, examples, general, servers, seconds,
                                       after=after))
    return {c.name: answers[c.name] for c in everyone}, judged


def _judges_on_teacher_server(cfg: RunConfig) -> bool:
    """Free-text eval judged by the teacher itself (no `judge.engine`), which eval serves on
    vLLM anyway: the judge asks that server instead of starting the teacher again."""
    return (cfg.task.type == "free_text" and cfg.judge.in_eval and cfg.judge.engine is None
            and cfg.teacher.backend == "vllm" and not cfg.teacher.is_endpoint)


def has_gold(examples) -> bool:
    return all(ex.label is not None for ex in examples)


def _answers(run: Run, generator, c: Contender, examples, general, seconds: Counter) -> dict:
    """One contender's answers (task, and forgetting items for students), saved."""
    from teachers.base import SamplingSpec

    answers, finished = [], []
    for part, (message_lists, max_tokens) in zip(("task", "forgetting"),
                                                 _requests(run.cfg, c, examples, general)):
        start = time.perf_counter()
        sampling = SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens, seed=run.cfg.seed)
        completions = generator.generate(message_lists, sampling)
        answers.append([x.text if x.ok else "" for x in completions])
        finished.append([x.finish_reason if x.ok else "error" for x in completions])
        seconds[part] += time.perf_counter() - start
    found = {**dict(zip(("task", "general"), answers)), "finish_reasons": finished[0],
             "max_tokens": run.cfg.answer_tokens}
    write_json_atomic(run.paths.eval_answers(c.name), found)
    return found


def _answer_in_process(run: Run, todo: list[Contender], examples, general,
                       cached: dict[str, dict], seconds: Counter) -> dict[str, dict]:
    """A `transformers` teacher, which has no server: asked in this process."""
    from distill.engines import open_generator

    with open_generator(run.cfg, "teacher") as generator:
        for c in todo:
            cached[c.name] = _answers(run, generator, c, examples, general, seconds)
    return cached


def majority_baseline(run: Run, teacher_parsed: list, gold: list[str]) -> dict:
    """Always answering the training set's most common gold answer, on the held-out rows, and
    the teacher against it (paired, same rows): a teacher must clear this to mean anything."""
    cfg = run.cfg
    answer = majority_label(read_examples(run.paths.train_prompts)) or gold[0]
    scores, parsed = score(cfg.task, [answer] * len(gold), gold, cfg.eval.bootstrap, cfg.seed)
    metric = MAIN_METRIC[cfg.task.type]
    if cfg.task.type == "json":  # per-row field F1, compared by a paired bootstrap
        teacher_items = [metrics.field_f1_of([metrics.field_counts(a, g)])
                         for a, g in zip(teacher_parsed, gold)]
        majority_items = [metrics.field_f1_of([metrics.field_counts(answer, g)]) for g in gold]
    else:
        teacher_items = [float(a is not None and a == g) for a, g in zip(teacher_parsed, gold)]
        majority_items = [float(p == g) for p, g in zip(parsed, gold)]
    return {"answer": answer, "metric": metric, metric: scores[metric],
            "teacher_vs_majority": compare(teacher_items, majority_items, cfg.seed).to_dict()}


def label_collapse(cfg: RunConfig, parsed: dict[str, list], gold: list[str]) -> dict:
    """Each model's held-out answers against the gold's label shares, by the teacher check's
    collapse rule (`check.collapse_warn` / `collapse_stop`): a student that prints one label
    for every row can still beat a base student that prints none."""
    labels = cfg.task.labels or []
    return {name: check_labels(answers, gold, labels, cfg.check.collapse_warn,
                               cfg.check.collapse_stop).to_dict()
            for name, answers in parsed.items()}


def truncated(cfg: RunConfig, answers: dict[str, dict]) -> dict:
    """Per contender, the task answers that stopped at the token limit (finish reason
    "length"): they are scored as they are, and the count is reported next to the metric.
    None for answers saved before finish reasons were kept."""
    models = {}
    for name, ans in answers.items():
        reasons = ans.get("finish_reasons")
        models[name] = {"cut": None if reasons is None else sum(r == "length" for r in reasons),
                        "of": len(ans["task"]), "max_tokens": ans.get("max_tokens")}
    return {"max_tokens": cfg.answer_tokens, "models": models}


def judge_students(run: Run, examples, answers: dict[str, dict], has_gold: bool,
                   ask: judge.Ask | None = None) -> dict | None:
    """Free-text tasks (`judge.in_eval`): every student contender against the teacher, by the
    pairwise judge (distill/judge.py), with the gold answer as reference where there is one.
    `ask`: the judge already running (the teacher's eval server); else the judge's engine is
    loaded, and only when a verdict is not saved yet."""
    cfg = run.cfg
    if cfg.task.type != "free_text" or not cfg.judge.in_eval:
        return None
    requests = [teacher_messages(cfg.task, ex.text, few_shot=False)[-1]["content"]
                for ex in examples]
    refs = [ex.label if has_gold else None for ex in examples]
    teacher = answers["teacher"]["task"]
    results = {}
    asked_on = "the teacher's eval server" if ask else "its own engine"
    with ExitStack() as stack:
        ask = ask or lazy_judge(cfg, stack)
        for name, ans in answers.items():
            if name == "teacher":
                continue
            items = [judge.Item(ex.example_id, req, mine, theirs, ref)
                     for ex, req, mine, theirs, ref
                     in zip(examples, requests, ans["task"], teacher, refs)]
            results[name] = judge.judge_model(items, ask, cfg.judge.rubric,
                                              run.paths.eval_judge(name), cfg.eval.bootstrap,
                                              cfg.seed)
    engine = cfg.judge.engine
    return {"judge": engine.model if engine else f"{cfg.teacher.model} (the teacher)",
            "asked_on": asked_on, "against": "teacher",
            "reference": "gold" if has_gold else "none",
            "rubric": cfg.judge.rubric, "models": results}


def check_judge_key(cfg: RunConfig) -> None:
    """A judge on an API needs its key: fail now, not after every contender has answered."""
    from teachers.http_engine import missing_api_keys

    judged = cfg.task.type == "free_text" and cfg.judge.in_eval and cfg.judge.engine
    if judged and (missing := missing_api_keys(cfg.judge.engine)):
        raise ConfigError("judge.engine.endpoint.api_key_env", missing)


def lazy_judge(cfg: RunConfig, stack: ExitStack) -> judge.Ask:
    """The judge's chat function, its engine opened (into `stack`) on the first call only."""
    reply: judge.Ask | None = None

    def ask(conversations):
        nonlocal reply
        if reply is None:
            from distill.engines import chat, open_judge

            reply = chat(stack.enter_context(open_judge(cfg)), cfg.judge.max_tokens, cfg.seed)
        return reply(conversations)
    return ask


def run_eval(run: Run) -> dict:
    cfg: RunConfig = run.cfg
    test_path = run.paths.test_prompts
    if not test_path.exists():
        raise StageNotReadyError("eval needs prompts/test.parquet: run `distill prompts` first")
    examples = read_examples(test_path)[: cfg.eval.max_examples]
    general, general_source = forgetting.items_for(cfg.eval.general_prompts,
                                                   cfg.eval.forgetting_items)
    check_judge_key(cfg)
    everyone = contenders(run)
    seconds: Counter = Counter()
    answers, judged = _answer_groups(run, everyone, examples, general, seconds)

    gold = [ex.label for ex in examples]
    reference = "gold"
    if not has_gold(examples):
        gold, reference = answers["teacher"]["task"], "teacher"  # no gold: agreement w/ teacher
    results, rows, parsed_by_model = {}, [], {}
    for name, ans in answers.items():
        scores, parsed = score(cfg.task, ans["task"], gold, cfg.eval.bootstrap, cfg.seed)
        results[name], parsed_by_model[name] = scores, parsed
        finish = ans.get("finish_reasons") or [None] * len(examples)
        rows += [{"example_id": ex.example_id, "model": name, "answer": a, "parsed": p,
                  "gold": g, "finish_reason": f}
                 for ex, a, p, g, f in zip(examples, ans["task"], parsed, gold, finish)]
    write_parquet_atomic(run.paths.eval_predictions, pa.Table.from_pylist(rows))
    check = forgetting.summarize(general, {name: a["general"] for name, a in answers.items()
                                           if "general" in a}, general_source)
    general_scores = {name: m["value"] for name, m in check["models"].items()}
    summary = {"main_metric": MAIN_METRIC[cfg.task.type], "reference": reference,
               "examples": len(examples), "models": results, "general_ability": general_scores,
               "truncated": truncated(cfg, answers)}
    if judged is None:  # not judged on the teacher's server: the judge's own engine
        start = time.perf_counter()
        judged = judge_students(run, examples, answers, reference == "gold")
        if judged is not None:
            seconds["judge"] += time.perf_counter() - start
    if judged is not None:
        summary["judge"] = judged
    tuned = [c.adapter.parent.name for c in everyone if c.adapter is not None]
    if tuned:
        summary["inputs_shortened_for_student"] = shortened_inputs(
            run, tuned[-1], [e.text for e in examples])
    summary["forgetting"] = check
    # this run's time only: answers saved by an earlier, interrupted run are not asked again
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    if reference == "gold" and cfg.task.type == "classification":
        summary["label_collapse"] = label_collapse(cfg, parsed_by_model, gold)
    if reference == "gold" and cfg.task.type != "free_text":
        teacher_parsed = [r["parsed"] for r in rows if r["model"] == "teacher"]
        summary["majority_baseline"] = majority_baseline(run, teacher_parsed, gold)
    write_json_atomic(run.paths.eval_results, summary)
    cut = [m["cut"] for m in summary["truncated"]["models"].values() if m["cut"] is not None]
    return {"examples": len(examples), "main_metric": summary["main_metric"],
            **{name: r[summary["main_metric"]]["value"] for name, r in results.items()},
            "answers_cut": sum(cut), "general_ability": general_scores,
            "seconds_by_part": summary["seconds"],
            **({"judge_wins": {n: m["win"] for n, m in summary["judge"]["models"].items()}}
               if "judge" in summary else {})}
