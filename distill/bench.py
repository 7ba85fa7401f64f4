"""Stage `bench`: latency, throughput and cost of teacher and students on the same engine.

Each model is served by vLLM's OpenAI-compatible server on 127.0.0.1, as it would be in
production: each tuned student merged into its base on its own server (`student.serve: merged`,
how a one-task student ships), or all students on one server with LoRA adapters (`lora`). A
streaming client measures time to first token and end-to-end latency at concurrency 1, and
throughput at `bench.concurrency`.
Each model gets its own prompt: the teacher its full instruction, the distilled students their
short one; that difference in prompt tokens is part of what distillation buys.
Eval measures each model on the server it answered with (distill/contenders.py), so this stage
starts a server only for a model eval did not measure under the same settings (bench keys
changed since, or eval's answers were all saved already).
"""

from __future__ import annotations

from distill.contenders import contenders, engine_groups, served_group
from distill.core.config import RunConfig
from distill.core.errors import StageNotReadyError
from distill.core.io import write_json_atomic
from distill.latency import measure_contender, saved_measure, settings


def run_bench(run) -> dict:
    cfg: RunConfig = run.cfg
    if not cfg.bench.enabled:
        return {"skipped": True}
    if not run.paths.test_prompts.exists():
        raise StageNotReadyError("bench needs prompts/test.parquet: run `distill prompts` first")
    results: dict[str, dict] = {}
    reused = []
    for group in engine_groups(cfg, contenders(run)):
        found = {c.name: saved_measure(run, c) for c in group}
        reused += [name for name, r in found.items() if r is not None]
        todo = [c for c in group if found[c.name] is None]
        if todo:  # a server only for what eval did not measure on its own
            with served_group(run, group) as served:
                found.update({c.name: measure_contender(run, served, c) for c in todo})
        results.update(found)
    write_json_atomic(run.paths.bench_results,
                      {"settings": settings(cfg), "models": results, "measured_in_eval": reused})
    return {name: {k: round(v, 4) for k, v in r.items()
                   if k in ("latency_p50_ms", "latency_p95_ms", "cost_per_1k_requests")}
            for name, r in results.items()}
