"""Throughput of our Ray generate stage vs plain `vllm.LLM.chat` on the same prompts.

    python benchmarks/bench_generation.py --prompts 256 --max-tokens 64

One process: plain vLLM first (engine start-up timed apart from generation), then
`teachers.generate.run_generate` on a local Ray with one replica. Our figure is reported twice:
end to end (Ray start, actor and engine start-up included) and steady state (generation wall
time inside the actor pool, start-up excluded), so the ratio is honest either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "teachers"))


def reviews(n: int) -> list[str]:
    words = ["gripping", "dull", "warm", "clumsy", "brilliant", "boring", "tender", "loud"]
    return [f"review {i}: a {words[i % 8]} and {words[(i * 3) % 8]} film, scene {i}"
            for i in range(n)]


def plain_vllm(path: str, messages: list, max_tokens: int, temperature: float,
               engine: dict) -> dict:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=path, max_model_len=512, seed=0, **engine)
    t1 = time.perf_counter()
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=i)
              for i in range(len(messages))]
    outs = llm.chat(messages, params, use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    return {"startup_s": t1 - t0, "gen_s": t2 - t1, "tokens": tokens}


def ours(texts: list[str], max_tokens: int, temperature: float, batch_size: int,
         engine: dict, actor_env: dict[str, str]) -> dict:
    import ray

    from teacher_helpers import make_run
    from teachers.generate import run_generate

    t0 = time.perf_counter()
    os.environ.update(actor_env)  # inherited by Ray's workers (an experiment's switch)
    ray.init(num_cpus=2, include_dashboard=False)
    ray_s = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), n=1, texts=texts,
                       teacher={"batch_size": batch_size, "max_model_len": 512,
                                "engine_kwargs": engine},
                       generate={"max_tokens": max_tokens, "shard_size": batch_size,
                                 "temperature": temperature})
        summary = run_generate(run)
        import pyarrow.parquet as pq

        files = sorted((run.dir / "generate" / "shards").glob("*.parquet"))
        lat = [x for f in files for x in pq.read_table(f, columns=["latency_s"]).column(0).to_pylist()]
    ray.shutdown()
    return {"total_s": time.perf_counter() - t0, "ray_init_s": ray_s, "summary": summary,
            "tokens": summary["completion_tokens"],
            "max_batch_latency_s": max(lat) if lat else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    # Greedy by default: both sides then generate the same tokens, so the ratio compares
    # equal work (sampled runs differ in length by seed).
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--actor-env", action="append", default=[], metavar="K=V",
                    help="environment for our Ray workers only (to try an engine setting)")
    ap.add_argument("--skip-plain", action="store_true", help="ours only (a quick try)")
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    args = ap.parse_args()
    from distill.core.models import resolve
    from distill.core.messages import teacher_messages
    from teacher_helpers import make_run  # noqa: F401  (same task as the tests)
    from teachers.vllm_engine import engine_args

    path = resolve(args.model).path
    engine = {k: v for k, v in engine_args(path, max_model_len=512, dtype="auto",
                                           engine_kwargs=None, lora_path=None, max_lora_rank=16,
                                           seed=0).items()
              if k not in ("model", "max_model_len", "seed")}
    texts = reviews(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        task = make_run(Path(tmp), texts=texts[:1]).cfg.task
    messages = [teacher_messages(task, t) for t in texts]

    actor_env = dict(kv.split("=", 1) for kv in args.actor_env)
    if args.skip_plain:
        print(json.dumps(ours(texts, args.max_tokens, args.temperature, args.batch_size, engine,
                              actor_env), indent=2, default=str))
        return
    plain = plain_vllm(path, messages, args.max_tokens, args.temperature, engine)
    mine = ours(texts, args.max_tokens, args.temperature, args.batch_size, engine, actor_env)
    plain_tps = plain["tokens"] / plain["gen_s"]
    e2e_tps = mine["tokens"] / mine["total_s"]
    plain_e2e_tps = plain["tokens"] / (plain["gen_s"] + plain["startup_s"])
    result = {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "temperature": args.temperature, "actor_env": actor_env,
        "load_1min_start": os.getloadavg()[0],
        "engine": engine,
        "plain_vllm": {"startup_s": round(plain["startup_s"], 1), "gen_s": round(plain["gen_s"], 1),
                       "tokens": plain["tokens"], "tokens_per_s": round(plain_tps, 2),
                       "tokens_per_s_with_startup": round(plain_e2e_tps, 2)},
        "ours": {"total_s": round(mine["total_s"], 1), "ray_init_s": round(mine["ray_init_s"], 1),
                 "tokens": mine["tokens"],
                 "tokens_per_s_with_startup": round(e2e_tps, 2),
                 "stage_summary": mine["summary"]},
        "ratio_end_to_end": round(e2e_tps / plain_e2e_tps, 3),
    }
    if mine["max_batch_latency_s"] and args.batch_size >= args.prompts:
        # One batch: its wall time inside the actor is our generation time, start-up excluded.
        steady = mine["tokens"] / mine["max_batch_latency_s"]
        result["ours"]["tokens_per_s_steady"] = round(steady, 2)
        result["ratio_steady_state"] = round(steady / plain_tps, 3)
    result["load_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    print(f"plain vLLM: {plain_tps:.1f} tok/s generation, {plain_e2e_tps:.1f} tok/s incl. start-up")
    print(f"ours (Ray): {e2e_tps:.1f} tok/s incl. Ray + actor + engine start-up")
    print(f"ratio (end to end, start-up included both sides): {result['ratio_end_to_end']:.3f}")
    if "ratio_steady_state" in result:
        print(f"ratio (steady state, generation only): {result['ratio_steady_state']:.3f}")


if __name__ == "__main__":
    main()
