"""serve.backend: ray_serve without starting Ray: the config rules, the LLMConfig that Ray Serve
LLM itself validates, the run-dir adapter loader the replicas use, and the front's names.

The deployment itself (a vLLM engine per replica) needs minutes on 2 cores; it is run by hand
with benchmarks/bench_serve.py --backend ray_serve (README, "Deploy and watch")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serve_helpers import fake_version, serve_config

from distill.core import versions as V
from distill.core.config import RunConfig
from distill.serving import ray_backend as RB
from distill.serving.front import Backend, Front, NotServable
from distill.serving.metrics import ServeMetrics
from distill.serving.routes import Routes


def test_replicas_and_merged_need_the_ray_serve_backend(tmp_path):
    with pytest.raises(Exception, match="serve.replicas > 1 needs serve.backend: ray_serve"):
        RunConfig.model_validate(serve_config(tmp_path, serve={"replicas": 2}))
    with pytest.raises(Exception, match="use serve.mode: lora"):
        RunConfig.model_validate(serve_config(tmp_path, serve={"backend": "ray_serve",
                                                               "mode": "merged"}))
    cfg = RunConfig.model_validate(serve_config(tmp_path, serve={"backend": "ray_serve",
                                                                 "replicas": 2}))
    assert cfg.serve.replicas == 2


def test_llm_config_is_valid_for_ray_serve_llm_and_loads_run_dir_adapters(tmp_path):
    from ray.serve.llm import LLMConfig

    from distill.serving.ray_replica import AdapterServer, LocalAdapters

    fake_version(tmp_path, "v0000", 0.6)
    fake_version(tmp_path, "v0001", 0.7)
    engine = RB.engine_kwargs(256, lora_rank=8, max_loras=3, gpu=False)
    llm = LLMConfig(**RB.llm_config(base_path="/models/base", run_dir=tmp_path, task="sentiment",
                                    replicas=2, max_loras=3, engine=engine, gpu=False,
                                    env={"VLLM_CPU_KVCACHE_SPACE": "2"}))
    assert llm.server_cls is AdapterServer and llm.model_id == RB.BASE_ID
    assert llm.accelerator_config.kind == "cpu" and llm.deployment_config["num_replicas"] == 2
    assert llm.multiplex_config().max_num_models_per_replica == 3
    assert llm.engine_kwargs["enable_lora"] and llm.engine_kwargs["max_loras"] == 3
    assert llm.engine_kwargs["dtype"] == "float32" and llm.engine_kwargs["enforce_eager"]
    assert RB.engine_kwargs(256, 8, 3, gpu=True).get("dtype") is None  # the GPU picks its own

    loader = LocalAdapters()
    disk = asyncio.run(loader.load_model_from_config(RB.model_id("v0001"), llm))
    adapter = V.student_record(tmp_path, "v0001")["adapter"]
    assert disk.model_id == "student:v0001" and Path(disk.local_path) == Path(adapter)


def test_front_names_versions_as_ray_serve_lora_ids_without_loading_calls(tmp_path):
    fake_version(tmp_path, "v0000", 0.6)
    routes = Routes(tmp_path, "sentiment")
    # nothing listens on this URL: a load request to it would fail the test
    backend = Backend("http://127.0.0.1:9/v1", set(), runtime_lora=True,
                      base_model="packaged:smollm2-135m-instruct", model_prefix=RB.BASE_ID)
    front = Front(backend, routes, ServeMetrics())
    asyncio.run(front.ensure_loaded("v0000"))
    assert backend.loaded == {"v0000"} and backend.model_id("v0000") == "student:v0000"
    assert Backend("http://x/v1", set(), runtime_lora=True).model_id("v0000") == "v0000"

    routes.records["v0000"]["base_model"] = "/runs/v0000/merged"  # retrain_from: previous
    backend.loaded.clear()
    with pytest.raises(NotServable, match="serve.mode: merged"):
        asyncio.run(front.ensure_loaded("v0000"))
