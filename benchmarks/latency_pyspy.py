"""Sample the three processes of a CPU `vllm serve` while it decodes one request at a time.

    python benchmarks/latency_pyspy.py --model packaged:smollm2-135m-instruct --seconds 15

Starts the server as the product does (teachers/serve.py; `--env` adds variables), sends
32-token ignore_eos requests back to back, and runs `py-spy record --nonblocking --idle` on the
API server, the engine core and the model worker for the same seconds. Prints, per process,
the share of samples in each of a few buckets (model forward, waiting, sampling, ...), read
from py-spy's raw (collapsed stack) output, which it also keeps under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import time
from pathlib import Path

from teachers.serve import vllm_server

PYSPY = str(Path(__import__("sys").executable).parent / "py-spy")
BUCKETS = [  # first match wins, on the whole collapsed stack
    ("model forward", ("_model_forward", "forward (vllm/model_executor")),
    ("sampling", ("sample (vllm/v1/sample", "sampler")),
    ("prepare inputs", ("_prepare_inputs", "_update_states", "prepare_inputs")),
    ("shm wait / poll", ("shm_broadcast", "sched_yield", "wait (vllm/distributed")),
    ("zmq / asyncio idle", ("select (selectors", "_run_once", "poll (zmq", "recv_multipart")),
    ("scheduler", ("schedule (vllm/v1/core/sched",)),
    ("detokenize / output", ("detokeniz", "output_processor", "process_outputs")),
    ("HTTP / serving", ("uvicorn", "starlette", "fastapi", "serving")),
]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]


def processes(root: int) -> dict[str, int]:
    """API server = root; engine core = its python child; worker = the engine core's child."""
    found = {"api_server": root}
    for child in children(root):
        for grandchild in children(child):
            if "python" in comm(grandchild) or "VLLM" in comm(grandchild):
                found["engine_core"], found["worker"] = child, grandchild
    return found


async def load(url: str, seconds: float) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=32, temperature=0.0, extra_body={"ignore_eos": True})
        n += 1
    await client.close()
    return n


def summarise(raw: Path) -> dict[str, float]:
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        bucket = next((name for name, keys in BUCKETS if any(k in stack for k in keys)), "other")
        counts[bucket] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def main() -> None:
    from distill.core.models import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--out", default="/tmp/lat/pyspy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(kv.split("=", 1) for kv in args.env)
    with vllm_server(resolve(args.model).path, served_name="m", max_model_len=512, env=env,
                     log_path=out / "server.log") as url:
        asyncio.run(load(url, 3))  # warm-up
        port = url.rsplit(":", 1)[1].split("/")[0]
        root = subprocess.run(["pgrep", "-f", "--", f"--port {port} "], capture_output=True,
                              text=True).stdout.split()
        procs = processes(int(root[0]))
        spies = {name: subprocess.Popen([PYSPY, "record", "--nonblocking", "--idle", "-r", "50",
                              "-d", str(int(args.seconds)), "-f", "raw",
                              "-o", str(out / f"{name}.txt"), "--pid", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in procs.items()}
        n = asyncio.run(load(url, args.seconds + 1))
        for p in spies.values():
            p.wait()
    print(f"{n} requests of 32 tokens in {args.seconds + 1:.0f} s; processes {procs}")
    for name in spies:
        print(name, summarise(out / f"{name}.txt"))


if __name__ == "__main__":
    main()
