"""The generate stage: teacher completions for every training prompt, resumable, on Ray Data.

Resume contract: the prompts are cut, in input order, into shards of `generate.shard_size`;
a shard's file name carries a hash of its prompt ids, and it is written tmp-then-rename only
once all its prompts came back. A rerun skips every prompt id already present in a finished
shard, so a killed job generates only what is missing and never writes a row twice.
Prompts that fail (too long, engine or HTTP rejection) are quarantined to errors.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distill.core.artifacts import RunPaths
from distill.core.errors import ConfigError, EndpointError, EngineError, StageNotReadyError
from distill.core.io import write_jsonl_atomic, write_parquet_atomic, write_text_atomic
from distill.core.messages import teacher_messages, template_version
from distill.core.rundir import Run
from teachers.base import SamplingSpec, row_seed
from teachers.cost import billed_units, estimate_cost
from teachers.factory import teacher_source
from teachers.http_engine import missing_api_keys
from teachers.udf import ROW_SCHEMA, TeacherUDF

FAULT_ENV = "DISTILL_FAULT_INJECT"  # tests only: JSON, see _fault_config()
PROMPTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("example_id", pa.string()), ("text", pa.string()),
    ("label", pa.string()), ("messages", pa.string()), ("seed", pa.int64()),
    ("shard", pa.string()),
])


class FaultInjected(RuntimeError):
    """Raised only by the test-only fault injection hook: simulates a killed driver."""


@dataclass
class Shard:
    name: str  # file stem: shard-00003-<hash of its prompt ids>
    rows: list[dict[str, Any]]


def prompt_id(model_ref: str, template_ver: str, text: str, seed: int) -> str:
    blob = json.dumps([model_ref, template_ver, text, seed]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sampling_spec(run: Run) -> SamplingSpec:
    cfg, gen = run.cfg, run.cfg.generate
    choices = schema = None
    if gen.structured_output == "choice":
        if not cfg.task.labels:
            raise ConfigError("generate.structured_output", ["choice needs task.labels"])
        choices = tuple(cfg.task.labels)
    elif gen.structured_output == "json":
        if cfg.task.json_schema is None:
            raise ConfigError("generate.structured_output", ["json needs task.json_schema"])
        schema = cfg.task.json_schema
    return SamplingSpec(n=gen.n, temperature=gen.temperature, top_p=gen.top_p,
                        max_tokens=gen.max_tokens, logprobs=gen.logprobs, choices=choices,
                        json_schema=schema)


def plan_shards(run: Run, model_ref: str) -> list[Shard]:
    """Every training prompt with its id, seed and messages, cut into deterministic shards."""
    path = run.paths.train_prompts
    if not path.is_file():
        raise StageNotReadyError(f"{path} not found: run the prompts stage first")
    cfg = run.cfg
    version = template_version(cfg.task)
    rows, seen = [], set()
    for rec in pq.read_table(path, columns=["example_id", "text", "label"]).to_pylist():
        pid = prompt_id(model_ref, version, rec["text"], cfg.generate.seed)
        if pid in seen:  # the same text twice would be the same rows twice
            continue
        seen.add(pid)
        rows.append({
            "prompt_id": pid, "example_id": rec["example_id"], "text": rec["text"],
            "label": None if rec["label"] is None else str(rec["label"]),
            "messages": json.dumps(teacher_messages(cfg.task, rec["text"])),
            "seed": row_seed(cfg.generate.seed, pid),
        })
    size = cfg.generate.shard_size
    shards = []
    for k in range(math.ceil(len(rows) / size)):
        chunk = rows[k * size:(k + 1) * size]
        digest = hashlib.sha256("".join(r["prompt_id"] for r in chunk).encode()).hexdigest()[:10]
        shards.append(Shard(f"shard-{k:05d}-{digest}", chunk))
    return shards


def finished_prompt_ids(paths: RunPaths) -> set[str]:
    done: set[str] = set()
    for f in sorted(paths.generate_shards.glob("shard-*.parquet")):
        done.update(pq.read_table(f, columns=["prompt_id"]).column(0).to_pylist())
    for f in sorted(paths.generate_shard_errors.glob("shard-*.jsonl")):
        if (paths.generate_shards / f"{f.stem}.parquet").exists():
            done.update(json.loads(line)["prompt_id"] for line in f.read_text().splitlines())
    return done


def _fault_config() -> dict:
    raw = os.environ.get(FAULT_ENV)
    return json.loads(raw) if raw else {}


POOL_CLIENT_CPUS = 0.0  # waits on HTTP; the servers' actors hold the teacher's CPUs/GPUs


def _actor_resources(run: Run) -> dict[str, Any]:
    """One engine per actor: `tensor_parallel_size` GPUs each on a GPU cluster, none on CPU."""
    teacher = run.cfg.teacher
    gpus = 0
    if teacher.server == "run":  # a client of the pool's servers, which hold the resources
        return {"num_cpus": POOL_CLIENT_CPUS, "max_restarts": teacher.max_restarts,
                "max_task_retries": teacher.max_restarts}
    if not teacher.is_endpoint:
        from teachers.vllm_engine import has_gpu

        cluster_gpus = __import__("ray").cluster_resources().get("GPU", 0)
        if cluster_gpus or has_gpu():
            gpus = teacher.tensor_parallel_size
    args: dict[str, Any] = {"num_gpus": gpus, "num_cpus": teacher.cpus_per_replica}
    # Bounded restarts (Ray Data's default is forever): a batch that kills its engine every
    # time must fail the job, not loop. Ray 2.60 has no named parameter for these yet, so
    # they go in as plain remote args (deprecated there, removed in Ray 2.64).
    args.update(max_restarts=teacher.max_restarts, max_task_retries=teacher.max_restarts)
    # No runtime_env with the API key: Ray writes env_vars to runtime_env_agent.log. The
    # actors read the key from their own environment (teachers/http_engine.py: api_key):
    # a local Ray's workers inherit the driver's, a cluster's nodes have it in theirs.
    return args


class ShardWriter:
    """Collects a shard's rows as batches arrive; writes it once every prompt is back."""

    def __init__(self, paths: RunPaths, pending: dict[str, list[dict]]):
        self.shard_dir = paths.generate_shards
        self.error_dir = paths.generate_shard_errors
        self.error_dir.mkdir(parents=True, exist_ok=True)
        self.expected = {name: {r["prompt_id"] for r in rows} for name, rows in pending.items()}
        self.order = {name: [r["prompt_id"] for r in rows] for name, rows in pending.items()}
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in pending}
        self.seen: dict[str, set[str]] = {name: set() for name in pending}
        self.written = 0
        self.saved_prompts = 0  # prompts of this run in written shards

    def add(self, batch: pa.Table) -> list[str]:
        """Add a batch of UDF rows; returns the names of shards completed by it."""
        done = []
        for name in set(batch.column("shard").to_pylist()):
            part = batch.filter(pc.equal(batch.column("shard"), name))
            self.parts[name].append(part)
            self.seen[name].update(part.column("prompt_id").to_pylist())
            if self.seen[name] >= self.expected[name]:
                self._write(name)
                done.append(name)
        return done

    def _write(self, name: str) -> None:
        table = pa.concat_tables(self.parts.pop(name))
        rank = {pid: i for i, pid in enumerate(self.order[name])}
        # Keyed by row_id: a batch delivered twice (a retried task) still lands once.
        unique = {r["row_id"]: r for r in table.to_pylist()}
        rows = sorted(unique.values(), key=lambda r: (rank[r["prompt_id"]], r["sample_index"]))
        good = [r for r in rows if r["error"] is None]
        errors = {r["prompt_id"]: r for r in rows if r["error"] is not None}
        # Errors first, shard last: the shard's rename is the commit point of both files.
        err_path = self.error_dir / f"{name}.jsonl"
        write_jsonl_atomic(err_path, [_error_record(r, name) for r in errors.values()])
        out = pa.Table.from_pylist([{k: r[k] for k in ROW_SCHEMA.names} for r in good],
                                   schema=ROW_SCHEMA)
        write_parquet_atomic(self.shard_dir / f"{name}.parquet", out)
        self.written += 1
        self.saved_prompts += len(self.expected[name])


def _error_record(r: dict, shard: str) -> dict:
    return {"prompt_id": r["prompt_id"], "example_id": r["example_id"],
            "text": r["text"][:500], "text_chars": len(r["text"]), "reason": r["error"],
            "prompt_tokens": r["prompt_tokens"], "backend": r["backend"], "model": r["model"],
            "shard": shard}


def _merge_errors(paths: RunPaths) -> int:
    """errors.jsonl = the error files of finished shards (rebuilt, so never duplicated)."""
    lines = []
    for f in sorted(paths.generate_shard_errors.glob("shard-*.jsonl")):
        if (paths.generate_shards / f"{f.stem}.parquet").exists():
            lines.extend(f.read_text().splitlines())
    write_text_atomic(paths.generate_errors, "".join(x + "\n" for x in lines))
    return len(lines)


def _totals(shard_dir: Path) -> tuple[int, int]:
    prompts, rows = set(), 0
    for f in shard_dir.glob("shard-*.parquet"):
        t = pq.read_table(f, columns=["prompt_id"])
        prompts.update(t.column(0).to_pylist())
        rows += t.num_rows
    return len(prompts), rows


def run_generate(run: Run) -> dict:
    """Generate teacher completions for prompts/train.parquet into generate/shards/."""
    cfg = run.cfg
    if missing := missing_api_keys(cfg.teacher):  # before Ray or any engine starts
        raise ConfigError("teacher.endpoint.api_key_env", missing)
    start = time.perf_counter()
    sampling = sampling_spec(run)
    source = teacher_source(cfg.teacher)
    shards = plan_shards(run, cfg.teacher.model)
    run.record_model("teacher", source.manifest)
    paths = run.paths
    shard_dir = paths.generate_shards
    shard_dir.mkdir(parents=True, exist_ok=True)

    done = finished_prompt_ids(paths)
    pending = {}
    for s in shards:
        if (shard_dir / f"{s.name}.parquet").exists():
            continue
        rows = [dict(r, shard=s.name) for r in s.rows if r["prompt_id"] not in done]
        if rows:
            pending[s.name] = rows
    todo = sum(len(rows) for rows in pending.values())
    resumed = sum(len(s.rows) for s in shards) - todo

    stats = {"prompt_tokens": 0, "completion_tokens": 0, "errors": 0, "prompts": 0}
    if pending:
        _generate(run, pending, sampling, source.path, stats, todo)
    n_errors = _merge_errors(paths)
    prompts_total, completions_total = _totals(shard_dir)
    wall = time.perf_counter() - start
    price = cfg.cost.teacher
    units = billed_units(cfg.teacher.backend, cfg.teacher.replicas,
                         cfg.teacher.tensor_parallel_size)
    return {
        "prompts": prompts_total, "completions": completions_total, "errors": n_errors,
        "prompts_this_run": stats["prompts"], "resumed_prompts": resumed,
        "prompt_tokens": stats["prompt_tokens"],
        "completion_tokens": stats["completion_tokens"], "wall_s": round(wall, 2),
        "tokens_per_s": round(stats["completion_tokens"] / wall, 2) if wall else 0.0,
        "est_cost_usd": round(estimate_cost(price, wall, stats["prompt_tokens"],
                                            stats["completion_tokens"], units), 6),
        "backend": "vllm_serve" if cfg.teacher.server == "run" else cfg.teacher.backend,
        "model": cfg.teacher.model,
    }


def _generate(run: Run, pending: dict[str, list[dict]], sampling: SamplingSpec, model_path: str,
              stats: dict, todo: int) -> None:
    import ray.data

    from distill.core.ray_init import ensure_ray, ray_data_console_quiet

    cfg = run.cfg
    ensure_ray(cfg)
    # A UDF's exception comes back as itself (inside RayTaskError), not as Ray Data's
    # UserCodeException, whose link to it is lost on the way to the driver: `_named` needs it.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    fault = _fault_config()
    table = pa.Table.from_pylist([r for rows in pending.values() for r in rows],
                                 schema=PROMPTS_SCHEMA)
    # One block per batch: each batch is one Ray task, so the actor pool shares the work and
    # a crashed actor's retry redoes just that batch.
    bs = cfg.teacher.batch_size
    blocks = [table.slice(i, bs) for i in range(0, table.num_rows, bs)]
    pool = None
    if cfg.teacher.server == "run":  # the run's teacher servers, started once (teachers/pool.py)
        from teachers.pool import ensure_pool

        pool = ensure_pool(cfg, cfg.teacher).names
    ds = ray.data.from_arrow(blocks).map_batches(
        TeacherUDF,
        fn_constructor_kwargs={
            "teacher": cfg.teacher.model_dump(mode="json"), "model_path": model_path,
            "model_ref": cfg.teacher.model, "sampling": _sampling_kwargs(sampling),
            "seed": cfg.generate.seed, "fault": fault, "pool": pool,
        },
        batch_size=bs, batch_format="pyarrow", concurrency=cfg.teacher.replicas,
        **_actor_resources(run),
    )
    writer = ShardWriter(run.paths, pending)
    try:
        with ray_data_console_quiet():
            _consume(ds, writer, stats, todo, fault)
    except FaultInjected:
        raise
    except Exception as exc:
        raise _named(exc, cfg, todo, writer) from None


def _named(exc: Exception, cfg, todo: int, writer: ShardWriter) -> Exception:
    """A failure inside the Ray pool as one named error that says what is saved; a failure of
    the driver's own code as it came (its traceback is what helps there).

    Finished shards are on disk and a rerun skips them, so every message ends with how far the
    run got and that a rerun picks up there."""
    from distill.core.ray_init import named_error, ray_failure, ray_logs_dir

    saved = (f"{writer.saved_prompts} of the {todo} prompts of this run are done and saved "
             f"({writer.written} shard(s) under {writer.shard_dir})")
    err = named_error(exc)
    if isinstance(err, EndpointError):
        return EndpointError(f"{err}\n{saved}; once the endpoint is up, rerun `distill "
                             "generate` (or `distill run`): it resumes from there")
    if err is not None:
        return err
    failure = ray_failure(exc)
    if failure is None:
        return exc
    return EngineError(
        f"the teacher engine failed in Ray, after up to {cfg.teacher.max_restarts} restart(s) "
        f"(teacher.max_restarts): {failure}\n{saved}; Ray's logs: {ray_logs_dir()}. A rerun "
        "resumes from there; if the same batch fails every time (out of memory?), lower "
        "teacher.batch_size or teacher.max_model_len")


def _consume(ds, writer: ShardWriter, stats: dict, todo: int, fault: dict) -> None:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    # closing(): on any exit (a failed batch, Ctrl-C) Ray Data's executor stops here and
    # frees the engine actors, not whenever the traceback that holds the iterator is dropped.
    batches = closing(iter(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    with tqdm(total=todo, unit="prompt", desc="generate", dynamic_ncols=True) as bar, \
            batches as stream:
        for batch in stream:
            ok = batch.filter(pc.is_null(batch.column("error")))
            stats["prompt_tokens"] += pc.sum(ok.column("prompt_tokens")).as_py() or 0
            stats["completion_tokens"] += (
                pc.sum(ok.column("completion_tokens")).as_py() or 0)
            n_prompts = len(set(batch.column("prompt_id").to_pylist()))
            stats["prompts"] += n_prompts
            bar.update(n_prompts)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(tok_s=f"{stats['completion_tokens'] / elapsed:.1f}")
            writer.add(batch)
            limit = fault.get("driver_crash_after_shards")
            if limit is not None and writer.written >= limit:
                # FAULT INJECTION (tests only): the driver dies here, as if killed.
                raise FaultInjected(f"fault injection: driver stopped after {limit} shard(s)")


def _sampling_kwargs(sampling: SamplingSpec) -> dict:
    from dataclasses import asdict

    return asdict(sampling)
