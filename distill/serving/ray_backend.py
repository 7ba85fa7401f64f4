"""serve.backend: ray_serve: the student on Ray Serve LLM (`ray.serve.llm`) instead of one
`vllm serve` process.

One Serve application on the configured Ray cluster (ray.address, else a local Ray): Ray Serve
LLM's OpenAI ingress before an LLMServer deployment with serve.replicas replicas, each a vLLM
engine holding the student's base. Every version is a LoRA adapter that Ray Serve multiplexes
by model id `student:<version>`: a replica loads it on its first request for that id (at most
serve.max_loras per replica), and Serve prefers, for a request, a replica that already
holds its adapter. Replica choice, queueing and LoRA placement are Ray Serve's; the front (front.py)
only renames `<task>@vNNNN` to that id, formats, measures and captures.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BASE_ID = "student"  # the base model's id in Ray Serve; adapters are `student:<version>`
APP_NAME = "distill-serve"
RUN_DIR_ENV, TASK_ENV = "DISTILL_SERVE_RUN_DIR", "DISTILL_SERVE_TASK"
SERVER_CLS = "distill.serving.ray_replica:AdapterServer"


def model_id(version: str) -> str:
    return f"{BASE_ID}:{version}"


def engine_kwargs(max_model_len: int, lora_rank: int, max_loras: int, gpu: bool,
                  seed: int = 0) -> dict:
    """vLLM's engine arguments for each replica: LoRA on, and on a CPU-only cluster the same
    CPU settings as `vllm serve` gets here (teachers/serve.py)."""
    from teachers.vllm_engine import CPU_DTYPE, CPU_ENGINE_DEFAULTS, cpu_batched_tokens

    kwargs = {"max_model_len": max_model_len, "seed": seed, "enable_lora": True,
              "max_lora_rank": lora_rank, "max_loras": max_loras}
    if not gpu:
        kwargs.update(CPU_ENGINE_DEFAULTS, dtype=CPU_DTYPE,
                      max_num_batched_tokens=cpu_batched_tokens(max_model_len))
    return kwargs


def llm_config(*, base_path: str, run_dir: Path, task: str, replicas: int, max_loras: int,
               engine: dict, gpu: bool, env: dict[str, str]) -> dict:
    """The LLMConfig (as a dict, validated by Ray Serve LLM) of the student's deployment."""
    cfg = {
        "model_loading_config": {"model_id": BASE_ID, "model_source": base_path},
        "engine_kwargs": engine,
        # Ray Serve LLM loads adapters from cloud storage only; ours are run-dir folders,
        # found by AdapterServer's loader from these two variables.
        "lora_config": {"max_num_adapters_per_replica": max_loras},
        "runtime_env": {"env_vars": {**env, RUN_DIR_ENV: str(run_dir), TASK_ENV: task}},
        "deployment_config": {"num_replicas": replicas},
        "server_cls": SERVER_CLS,
    }
    if not gpu:
        # Ray Serve LLM assumes a GPU unless the bundles say otherwise: one CPU bundle for
        # the engine, and the replica actor itself takes no CPU of its own beside it.
        cfg.update(accelerator_config={"kind": "cpu"},
                   placement_group_config={"bundles": [{"CPU": 1}]})
        cfg["deployment_config"]["ray_actor_options"] = {"num_cpus": 0}
    return cfg


@contextmanager
def ray_serve_app(llm: dict, host: str, port: int, timeout_s: float = 900) -> Iterator[str]:
    """Deploy the app through Serve's proxy on host:port; yield its OpenAI base URL, healthy
    (every replica's engine started); delete the app on exit. Only this app is deleted: on
    a shared cluster, other Serve applications keep running."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    serve.start(http_options={"host": host, "port": port})
    app = build_openai_app({"llm_configs": [llm]})
    # not serve.run: it waits without a time limit, also on a cluster too small for it
    serve.run_many([serve.RunTarget(target=app, name=APP_NAME, route_prefix="/")],
                   wait_for_applications_running=False)
    try:
        wait_running(serve, timeout_s)
        yield f"http://{host}:{port}/v1"
    finally:
        serve.delete(APP_NAME)


def wait_running(serve, timeout_s: float) -> None:
    import time

    from distill.core.errors import DistillError

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(APP_NAME)
        state = str(app.status) if app else "NOT_STARTED"
        if state.endswith("RUNNING"):
            return
        if state.endswith("DEPLOY_FAILED") or time.monotonic() > deadline:
            why = app.message if app else ""
            raise DistillError(f"Ray Serve did not start the student ({state}): "
                               f"{why.strip()[:2000]}")
        time.sleep(2)
