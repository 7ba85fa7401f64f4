"""The teacher pool (`teacher.server: run`): the teacher started once for a whole run.

`teacher.replicas` `vllm serve` processes, each in a Ray actor that holds the teacher's
resources (`tensor_parallel_size` GPUs on a cluster with GPUs), so on a cluster they run on the
GPU nodes wherever the driver is. Every role that runs the teacher sends them requests through
the OpenAI-compatible API: generation's Ray Data actors, the check, the judge (when it is the
teacher, or `judge.engine` with its own `server: run`), eval and bench. With `server: stage`
(the default) each of those starts its own engine: in-process vLLM in the generation actors,
the check and the judge (in the driver's process), `vllm serve` for eval.

Lifetime: the actors belong to the driver and stop with it (each server gets SIGTERM when its
actor dies, even by SIGKILL), or earlier through `release_idle` / `release_all`, which
`distill run` calls between stages. A pool without GPUs is stopped before a stage that does not
use the teacher: an idle vLLM engine core spins a CPU core (a busy wait on its queue), which
training on a small CPU cannot spare; it starts again for the next stage that needs it.

Each pool has its own random API key, passed to the servers in their environment
(VLLM_API_KEY) and to the clients through Ray's object store: never on a command line, in the
config or in a file. The servers listen on their node's address, not 127.0.0.1, so the
generation actors on other nodes can reach them.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.core.artifacts import RunPaths
from distill.core.config import EndpointConfig, RunConfig, TeacherConfig
from distill.core.errors import DistillError

BACKEND = "vllm_serve"  # what generated rows record as their backend
REQUEST_TIMEOUT_S = 3600.0  # our own server: a long batch on a CPU is slow, not dead
START_TIMEOUT_S = 1800.0


class TeacherServer:
    """A Ray actor holding one `vllm serve` of the teacher on its node."""

    def __init__(self) -> None:
        from contextlib import ExitStack

        self._stack = ExitStack()
        self._endpoint: tuple[str, str] | None = None

    def start(self, engine: dict, model_path: str, log_path: str, key: str) -> str:
        import ray

        from teachers.factory import serve_flags, vllm_engine_kwargs
        from teachers.serve import vllm_server

        teacher = TeacherConfig.model_validate(engine)
        # The engine's flags are worked out here, on the GPU node (tensor parallelism picks its
        # executor from the devices this process sees).
        url = self._stack.enter_context(vllm_server(
            model_path, served_name="teacher", max_model_len=teacher.max_model_len,
            dtype=teacher.dtype, extra_args=serve_flags(vllm_engine_kwargs(teacher)),
            startup_timeout_s=START_TIMEOUT_S, log_path=log_path, env={"VLLM_API_KEY": key},
            host=ray.util.get_node_ip_address(), die_with_parent=True))
        self._endpoint = (url, key)
        return url

    def endpoint(self) -> tuple[str, str]:
        """(base URL, API key), for a client in another actor (generation)."""
        if self._endpoint is None:
            raise DistillError("the teacher pool's server is not started")
        return self._endpoint

    def stop(self) -> None:
        self._stack.close()
        self._endpoint = None


@dataclass
class Pool:
    engine: TeacherConfig
    role: str  # "teacher" or "judge"
    names: list[str]  # Ray actor names, one per replica
    actors: list[Any]
    urls: list[str]
    key: str = field(repr=False)
    gpus: float
    log: Path  # the pool's start/stop records


_POOLS: dict[str, Pool] = {}


def pool_key(cfg: RunConfig, engine: TeacherConfig, role: str) -> str:
    text = json.dumps([str(cfg.output_dir), role, engine.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def server_resources(engine: TeacherConfig) -> dict[str, float]:
    """The teacher's GPUs where the cluster (or this machine) has GPUs, none on CPUs."""
    import ray

    from teachers.vllm_engine import has_gpu

    gpus = engine.tensor_parallel_size if ray.cluster_resources().get("GPU", 0) or has_gpu() else 0
    free = ray.available_resources().get("CPU", 0)
    return {"num_gpus": gpus, "num_cpus": server_cpus(engine, free)}


def server_cpus(engine: TeacherConfig, free_cpus: float) -> float:
    """`cpus_per_replica`, less where the pool would take every free CPU: Ray Data needs one
    for its own tasks (`from_arrow` reads block metadata in a task), and with none left the
    stage waits forever (measured: replicas 2 on a 2-CPU local Ray never sent a request). The
    servers run outside Ray's accounting anyway; the figure only reserves room."""
    spare = max(free_cpus - 1.0, 0.0) / engine.replicas
    return round(min(engine.cpus_per_replica, spare), 3)


def ensure_pool(cfg: RunConfig, engine: TeacherConfig, role: str = "teacher") -> Pool:
    """The running pool for this run's engine, started now if it is not running."""
    key = pool_key(cfg, engine, role)
    if key in _POOLS:
        return _POOLS[key]
    from distill.core.ray_init import ensure_ray
    from teachers.factory import teacher_source

    ray = ensure_ray(cfg)
    paths = RunPaths(cfg.output_dir)
    resources = server_resources(engine)
    api_key = secrets.token_urlsafe(24)
    names = [f"distill-{role}-pool-{key}-{i}" for i in range(engine.replicas)]
    actor_class = ray.remote(max_restarts=0)(TeacherServer)
    actors = [actor_class.options(name=n, **resources).remote() for n in names]
    start = time.perf_counter()
    refs = [a.start.remote(engine.model_dump(mode="json"), teacher_source(engine).path,
                           str(paths.root / "logs" / f"{role}_pool_{i}.log"), api_key)
            for i, a in enumerate(actors)]
    try:
        urls = ray.get(refs)
    except Exception as exc:  # noqa: BLE001 - said as one named error below
        for a in actors:
            ray.kill(a)
        raise _start_error(exc, role, paths) from None
    pool = Pool(engine, role, names, actors, urls, api_key, resources["num_gpus"],
                paths.root / "logs" / "teacher_pool.jsonl")
    _record(pool, "start", seconds=round(time.perf_counter() - start, 1), urls=urls,
            gpus_per_server=pool.gpus, cpus_per_server=resources["num_cpus"])
    _POOLS[key] = pool
    if len(_POOLS) == 1:
        atexit.register(release_all)  # before Ray's own exit handler (atexit runs in reverse)
    return pool


def _start_error(exc: BaseException, role: str, paths: RunPaths) -> DistillError:
    from distill.core.ray_init import named_error, ray_failure

    found = named_error(exc)
    detail = str(found) if found is not None else (ray_failure(exc) or str(exc))
    return DistillError(f"the {role} pool (teacher.server: run) did not start: {detail}; its "
                        f"logs: {paths.root / 'logs'}/{role}_pool_*.log")


def _record(pool: Pool, event: str, **fields: Any) -> None:
    pool.log.parent.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "role": pool.role, "model": pool.engine.model,
            "replicas": len(pool.actors),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    with pool.log.open("a") as f:
        f.write(json.dumps(line) + "\n")


def client(url: str, key: str, batch_size: int):
    """A teacher generator for one of the pool's servers. As many requests in flight as a
    generation batch holds: the server batches them."""
    from teachers.http_engine import OpenAIGenerator

    endpoint = EndpointConfig(base_url=url, model="teacher", max_concurrency=batch_size,
                              timeout_s=REQUEST_TIMEOUT_S, max_retries=2)
    return OpenAIGenerator(endpoint, key=key, backend=BACKEND)


def pooled_generator(cfg: RunConfig, engine: TeacherConfig, role: str = "teacher"):
    """A client of the pool's first server, with the interface of every teacher backend."""
    pool = ensure_pool(cfg, engine, role)
    return client(pool.urls[0], pool.key, pool.engine.batch_size)


class PoolClients:
    """In a generation actor: the pool's servers as one teacher generator. A batch's prompts
    are dealt out, every N-th to each of the N servers, all at once. (One batch per server,
    chosen by its first seed, left a server idle when batches were few: all 3 of a test's
    batches went to one of 2.) Each row keeps its own seed, so which server answers does not
    change what it samples."""

    backend = BACKEND

    def __init__(self, names: list[str], batch_size: int):
        import ray

        found = ray.get([ray.get_actor(n).endpoint.remote() for n in names])
        self.servers = [client(url, key, batch_size) for url, key in found]

    def generate(self, messages: list, sampling, seeds: list[int]) -> list:
        from concurrent.futures import ThreadPoolExecutor
        from dataclasses import replace

        if len(self.servers) == 1:
            return self.servers[0].generate(messages, sampling, seeds=seeds)
        n = len(self.servers)
        parts = [list(range(k, len(messages), n)) for k in range(n)]

        def ask(k: int) -> list:
            part = parts[k]
            if not part:
                return []
            done = self.servers[k].generate([messages[i] for i in part], sampling,
                                            seeds=[seeds[i] for i in part])
            return [replace(c, prompt_index=part[c.prompt_index]) for c in done]

        with ThreadPoolExecutor(n) as threads:
            answers = [c for cs in threads.map(ask, range(n)) for c in cs]
        return sorted(answers, key=lambda c: (c.prompt_index, c.sample_index))


def running() -> list[Pool]:
    return list(_POOLS.values())


def release_idle(needed_next: bool) -> None:
    """Between stages: a pool without GPUs stops unless the next stage uses the teacher."""
    for key, pool in list(_POOLS.items()):
        if not needed_next and not pool.gpus:
            _stop(key, "the next stage does not use the teacher (a pool without GPUs "
                       "would spin a CPU core while it waits)")


def release_all() -> None:
    for key in list(_POOLS):
        _stop(key, "the run is over")


def _stop(key: str, why: str) -> None:
    import ray

    pool = _POOLS.pop(key)
    start = time.perf_counter()
    if ray.is_initialized():
        try:
            ray.get([a.stop.remote() for a in pool.actors], timeout=120)
        except Exception:  # noqa: BLE001 - a dead actor's server died with it
            pass
        for a in pool.actors:
            ray.kill(a)
    _record(pool, "stop", why=why, seconds=round(time.perf_counter() - start, 1))
