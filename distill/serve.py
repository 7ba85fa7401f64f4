"""`distill serve`: the distilled student behind an OpenAI-compatible endpoint.

One `vllm serve` process holds the student's base model and every evaluated version as a LoRA
adapter named after the version (serve.mode: lora), or the promoted version's merged model
(merged). Before it, a thin Starlette front (distill/serving/front.py) on serve.host:port maps
the request's `model` to a version, formats raw inputs as the student's training prompt,
measures, and captures traffic (serve.capture). vLLM's runtime LoRA endpoint is switched on
in LoRA mode, so a version made after the server started is loaded on its first request and a
promotion is live on the next request, without a restart.

Versions: v0000 is the first run's own student (the run dir itself), v0001... are refreshes
(refresh/vNNNN/train). The default name `<task>` follows promoted.json; before any
promotion it is v0000.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from distill.core.artifacts import RunPaths
from distill.core.config import RunConfig
from distill.core.errors import DistillError, StageNotReadyError
from distill.core.io import read_json
from distill.core.models import resolve
from distill.serving import ray_backend as RB
from distill.serving.capture import TrafficWriter
from distill.serving.front import Backend, Front, build_app
from distill.serving.metrics import ServeMetrics
from distill.serving.routes import Routes

console = Console()
RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def input_formatter(cfg: RunConfig, routes: Routes) -> Callable[[str, list], tuple[list, bool]]:
    """serve.format_inputs: one user turn is the task's raw input, rendered as the student saw
    it in training (student instruction and system prompt, the template, the input cut to the
    version's trained prompt budget). Anything else (a system turn, a conversation) is
    passed unchanged: the client then owns the prompt."""
    from students.fit import load_fitter
    from students.modeling import load_tokenizer

    tokenizer = load_tokenizer(resolve(cfg.student.model).path)

    @lru_cache(maxsize=None)
    def fitter(version: str):
        record = routes.record(version)
        stage = Path(record["adapter"]).parent.name
        budget = (read_json(RunPaths(record["run_dir"]).train_summary(stage)) or {}).get(
            "prompt_budget")
        return load_fitter(cfg, budget, tokenizer)

    def format_messages(version: str, messages: list) -> tuple[list, bool]:
        if (len(messages) == 1 and isinstance(messages[0], dict)
                and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), str)):
            return fitter(version).messages(messages[0]["content"]), True
        return messages, False
    return format_messages


@contextmanager
def start_backend(cfg: RunConfig, routes: Routes, log: Path) -> Iterator[Backend]:
    from distill.engines import student_max_len
    from teachers.serve import vllm_server

    common = dict(max_model_len=student_max_len(cfg), log_path=log)
    # A version trained on another base (refresh.retrain_from: previous) is no LoRA of this
    # one: it is left out, and asking for it says to serve it merged.
    adapters = {v: r["adapter"] for v, r in routes.records.items()
                if r.get("base_model") in (None, cfg.student.model)}
    if cfg.serve.backend == "ray_serve":
        with ray_serve_backend(cfg, routes, common["max_model_len"]) as url:
            yield Backend(url, set(), runtime_lora=True, base_model=cfg.student.model,
                          model_prefix=RB.BASE_ID, health_path="/v1/models", notes=[
                              f"Ray Serve: {cfg.serve.replicas} replica(s); `loaded` lists "
                              "the versions asked for, Ray Serve loads each on the replica a "
                              "request lands on (vLLM's log: Ray's session logs, serve/)"])
        return
    if cfg.serve.mode == "lora":
        with vllm_server(resolve(cfg.student.model).path, served_name="base",
                         lora_modules=adapters, max_lora_rank=cfg.student.lora.r,
                         extra_args=["--max-loras", str(cfg.serve.max_loras)],
                         env=RUNTIME_LORA_ENV, **common) as url:
            yield Backend(url, set(adapters), runtime_lora=True, base_model=cfg.student.model)
        return
    version = routes.default_version()
    with vllm_server(str(merged_model(cfg, routes.record(version))), served_name=version,
                     **common) as url:
        yield Backend(url, {version}, runtime_lora=False, notes=[
            "merged mode: one version per server; a promotion needs a restart"])


@contextmanager
def ray_serve_backend(cfg: RunConfig, routes: Routes, max_model_len: int) -> Iterator[str]:
    """The student as a Ray Serve LLM app (distill/serving/ray_backend.py); yields its URL."""
    from distill.core.ray_init import ensure_ray
    from teachers.vllm_engine import cpu_engine_env

    ray = ensure_ray(cfg)
    gpu = ray.cluster_resources().get("GPU", 0) > 0
    engine = RB.engine_kwargs(max_model_len, cfg.student.lora.r, cfg.serve.max_loras, gpu,
                              cfg.seed)
    llm = RB.llm_config(base_path=resolve(cfg.student.model).path, run_dir=routes.base,
                        task=routes.task, replicas=cfg.serve.replicas,
                        max_loras=cfg.serve.max_loras, engine=engine, gpu=gpu,
                        env={} if gpu else cpu_engine_env())
    with RB.ray_serve_app(llm, "127.0.0.1", free_port("127.0.0.1")) as url:
        yield url


def merged_model(cfg: RunConfig, record: dict) -> Path:
    """The version's merged model: export's, else merged once into its run dir's cache."""
    if record.get("merged_model"):
        return Path(record["merged_model"])
    from students.merge import merge

    adapter = Path(record["adapter"])
    dest = RunPaths(record["run_dir"]).merged(adapter.parent.name)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The version's record names what its adapter was trained on (a pruned run's own copy).
    base = resolve(record.get("base_model") or cfg.student.model).path
    return merge(base, adapter, dest, cfg.export.merged_dtype)


def serve(cfg: RunConfig, run_dir: Path | None = None, version: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM): the front stops, the last captured rows are
    written, then vLLM is stopped."""
    import uvicorn

    base = Path(run_dir or cfg.output_dir)
    routes = Routes(base, cfg.task.name, pinned=version)
    if not routes.records:
        raise StageNotReadyError(f"{base}: no evaluated student to serve (eval/results.json and "
                                 "an adapter); run `distill run CONFIG` first")
    if version is not None:
        routes.record(version)  # a named error for a version that does not exist
    paths = RunPaths(base)
    port = cfg.serve.port or free_port(cfg.serve.host)
    metrics = ServeMetrics()
    capture = TrafficWriter(paths.traffic, cfg.serve.capture, metrics) \
        if cfg.serve.capture.enabled else None
    formatter = input_formatter(cfg, routes) if cfg.serve.format_inputs else None
    where = ("Ray Serve, vLLM's log in Ray's session logs" if cfg.serve.backend == "ray_serve"
             else f"vLLM, log {paths.serve_log}")
    console.print(f"starting {where} ({cfg.serve.mode}: {', '.join(routes.records)})",
                  soft_wrap=True)
    with start_backend(cfg, routes, paths.serve_log) as backend:
        front = Front(backend, routes, metrics, capture, formatter)
        console.print(f"serving {', '.join(routes.names())} on http://{cfg.serve.host}:{port}/v1 "
                      f"(default: {routes.default_version()}"
                      f"{', capture on: ' + str(paths.traffic) if capture else ''}; "
                      f"engine, private: {backend.url})", soft_wrap=True)
        try:
            uvicorn.run(build_app(front), host=cfg.serve.host, port=port, log_level="warning")
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise DistillError(f"cannot serve on {cfg.serve.host}:{port} (in use?)") from exc
