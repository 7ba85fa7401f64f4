"""What runs inside a Ray Serve LLM replica for serve.backend: ray_serve (ray_backend.py):
Ray Serve LLM's LLMServer with a LoRA loader that reads distill's run dir.

Kept apart from ray_backend.py because importing Ray Serve LLM's server takes seconds; the
driver names AdapterServer by its import path and only the replicas import this module.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.common.utils.lora_utils import get_lora_id
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

from distill.serving.ray_backend import RUN_DIR_ENV, TASK_ENV
from distill.serving.routes import Routes


class LocalAdapters(LoraModelLoader):
    """A version's adapter from its run-dir folder (Ray Serve LLM's own loader reads only
    s3://, gs:// and azure:// through LoraConfig.dynamic_lora_loading_path). The run dir
    must be readable where the replicas run: local Ray, or a filesystem the nodes share."""

    async def load_model_from_config(self, lora_model_id: str, llm_config) -> DiskMultiplexConfig:
        env = llm_config.runtime_env["env_vars"]
        record = Routes(Path(env[RUN_DIR_ENV]), env[TASK_ENV]).record(get_lora_id(lora_model_id))
        return DiskMultiplexConfig(model_id=lora_model_id, max_total_tokens=None,
                                   local_path=record["adapter"],
                                   lora_assigned_int_id=global_id_manager.next())


class AdapterServer(LLMServer):
    """Ray Serve LLM's server, its adapters loaded by LocalAdapters."""

    async def __init__(self, llm_config, **kwargs):
        self._lora_lock = asyncio.Lock()
        kwargs.setdefault("model_downloader", LocalAdapters)
        await super().__init__(llm_config, **kwargs)

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        # Ray 2.60: concurrent first requests for one adapter all pass the engine's "already
        # loaded?" check, and every load after the first fails with "has already been
        # loaded" (a 500; seen at concurrency 8). One resolution at a time per replica; once
        # an adapter is in, each returns at that check at once.
        async with self._lora_lock:
            await super()._maybe_resolve_lora_from_multiplex()
