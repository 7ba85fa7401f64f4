"""Serve latency: `distill serve` with the merged student, and the same vLLM server asked directly.

Starts the real CLI (`distill serve`, serve.mode: merged) on a finished run whose student is a
tiny LoRA (Gaussian noise in B, tests/adapter_helpers.py) merged into its base
(packaged:smollm2-135m-instruct); with --backend ray_serve, the same run on Ray Serve LLM (a
local Ray, one replica, the adapter as a LoRA id: that backend has no merged mode). Then sends
the same requests through the `openai` client at concurrency 1 and 8: once to the front (which
maps the name and formats the raw review as the student's prompt) and once straight to the
engine behind it (vLLM's server, or Ray Serve's proxy), with the prompt the front would send.
Every request decodes exactly --max-tokens tokens (ignore_eos), so both
sides do the same work. Front and direct rounds alternate (front, direct, direct, front) so a
change in machine load falls on both. Prints p50/p95 latency, tokens/s and requests/s of each,
and the front's overhead as a ratio of the direct figures.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/bench_serve.py [--requests 40] \
        [--backend vllm|ray_serve] [--mode merged|lora] [--replicas N] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "serving")]

from adapter_helpers import noisy_adapter  # noqa: E402
from serve_helpers import add_version, serve_config, write_config  # noqa: E402

from distill.core.config import load_config  # noqa: E402
from distill.serve import input_formatter  # noqa: E402
from distill.serving import ray_backend as RB  # noqa: E402
from distill.serving.routes import Routes  # noqa: E402
from teachers.serve import free_port  # noqa: E402

REVIEWS = [
    "The movie is a joy to watch.", "Boring and far too long.",
    "A warm, funny and moving film with a cast that clearly enjoyed making it.",
    "I walked out after forty minutes; the plot makes no sense and the acting is wooden.",
    "Not perfect, but the last act earns every tear.", "Two hours I will never get back.",
    "The soundtrack alone is worth the ticket, and the story holds up.",
    "Predictable, loud and strangely joyless for a comedy.",
]


def start_serve(tmp: Path, backend: str, mode: str,
                replicas: int) -> tuple[subprocess.Popen, str, Path, Path]:
    run_dir = tmp / "run"
    port = free_port()
    sections = {"serve": {"port": port, "mode": mode, "backend": backend, "replicas": replicas}}
    if replicas > 1:  # a local Ray: one CPU per replica's engine and one for Serve's ingress
        sections["ray"] = {"num_cpus": replicas + 1}
    cfg_path = write_config(tmp / "config.yaml", serve_config(run_dir, **sections))
    cfg = load_config(cfg_path)
    add_version(run_dir, "v0000", lambda d: noisy_adapter(cfg, d, seed=0, sigma=0.02), 0.6)
    log = tmp / "serve.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", str(cfg_path)],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            sys.exit(f"distill serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, cfg_path, log
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    sys.exit(f"distill serve not healthy in time:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT as Ctrl-C (the front, then the engine, stop); then every process it started
    that is still there (vLLM's, a local Ray's) is killed by its id."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def backend_url(log: Path) -> str:
    """The engine behind the front (vLLM's server, or Ray Serve's proxy), from the URL that
    `distill serve` prints when it is up."""
    found = re.search(r"engine, private: (http://\S+/v1)", log.read_text())
    if not found:
        sys.exit(f"no engine URL in the output of `distill serve`:\n{log.read_text()[-2000:]}")
    return found.group(1)


async def one_round(client, model: str, messages: list[list], concurrency: int,
                    max_tokens: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens = [], []

    async def ask(msgs):
        async with gate:
            t0 = time.perf_counter()
            r = await client.chat.completions.create(
                model=model, messages=msgs, temperature=0, max_tokens=max_tokens,
                extra_body={"ignore_eos": True})
            latencies.append(time.perf_counter() - t0)
            tokens.append(r.usage.completion_tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(ask(m) for m in messages))
    return {"latencies": latencies, "tokens": sum(tokens), "wall": time.perf_counter() - t0}


def summary(rounds: list[dict]) -> dict:
    lat = np.array([x for r in rounds for x in r["latencies"]])
    wall = sum(r["wall"] for r in rounds)
    return {"n": len(lat), "p50_ms": 1000 * np.percentile(lat, 50),
            "p95_ms": 1000 * np.percentile(lat, 95),
            "tok_s": sum(r["tokens"] for r in rounds) / wall, "req_s": len(lat) / wall}


async def measure(front: str, direct: str, direct_model: str, cfg_path: Path, n: int,
                  max_tokens: int) -> dict:
    import openai

    cfg = load_config(cfg_path)
    fmt = input_formatter(cfg, Routes(Path(cfg.output_dir), cfg.task.name))
    raw = [[{"role": "user", "content": REVIEWS[i % len(REVIEWS)]}] for i in range(n)]
    formatted = [fmt("v0000", m)[0] for m in raw]  # what the front sends on to vLLM
    sides = {"front": (openai.AsyncOpenAI(base_url=f"{front}/v1", api_key="-", max_retries=0),
                       cfg.task.name, raw),
             "direct": (openai.AsyncOpenAI(base_url=direct, api_key="-", max_retries=0),
                        direct_model, formatted)}
    for client, model, msgs in sides.values():  # warm-up: compiled paths, connections
        await one_round(client, model, msgs[:8], 8, max_tokens)
    results = {}
    for c in (1, 8):
        rounds = {"front": [], "direct": []}
        for side in ("front", "direct", "direct", "front"):
            client, model, msgs = sides[side]
            rounds[side].append(await one_round(client, model, msgs[: n // 2], c, max_tokens))
        results[c] = {side: summary(r) for side, r in rounds.items()}
    return results


def table(results: dict) -> str:
    lines = ["| concurrency | path | requests | p50 ms | p95 ms | tokens/s | requests/s |",
             "|---|---|---|---|---|---|---|"]
    for c, sides in results.items():
        for side, s in sides.items():
            lines.append(f"| {c} | {side} | {s['n']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                         f"{s['tok_s']:.1f} | {s['req_s']:.2f} |")
    lines += ["", "| concurrency | front/direct p50 | front/direct p95 | front/direct requests/s |",
              "|---|---|---|---|"]
    for c, s in results.items():
        f, d = s["front"], s["direct"]
        lines.append(f"| {c} | {f['p50_ms'] / d['p50_ms']:.3f} | {f['p95_ms'] / d['p95_ms']:.3f}"
                     f" | {f['req_s'] / d['req_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40, help="per path and concurrency")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--backend", choices=["vllm", "ray_serve"], default="vllm",
                    help="serve.backend; ray_serve serves the adapter (LoRA), not the merge")
    ap.add_argument("--mode", choices=["merged", "lora"], default="merged",
                    help="serve.mode with --backend vllm (ray_serve serves adapters only)")
    ap.add_argument("--replicas", type=int, default=1, help="serve.replicas (ray_serve)")
    ap.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()
    mode = "lora" if args.backend == "ray_serve" else args.mode
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        t0 = time.perf_counter()
        proc, front, cfg_path, log = start_serve(Path(tmp), args.backend, mode, args.replicas)
        print(f"distill serve ({args.backend}, {mode}) healthy after "
              f"{time.perf_counter() - t0:.0f}s")
        direct_model = "v0000" if args.backend == "vllm" else RB.model_id("v0000")
        try:
            results = asyncio.run(measure(front, backend_url(log), direct_model, cfg_path,
                                          args.requests, args.max_tokens))
        finally:
            stop(proc)
    text = table(results)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
