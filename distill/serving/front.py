"""The thin front before vLLM's OpenAI-compatible server, or Ray Serve LLM's (serve.backend)
(Starlette, httpx; no router of ours).

    POST /v1/chat/completions, /v1/completions   `model` -> version (routes.py), proxied to vLLM
    GET  /v1/models    the names this server answers
    GET  /health       200 when vLLM is healthy: the default version, what is loaded, notes
    GET  /metrics      requests, errors, latency percentiles, tokens, capture (JSON)

vLLM does the serving (batching, LoRA per request); the front only renames, formats a raw
input as the student's prompt (serve.format_inputs), measures and captures. A version that
is not loaded yet (a refresh finished after start) is loaded into the running engine through
vLLM's runtime LoRA endpoint; with a merged model that is impossible, and the answer says so.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from distill.core.errors import DistillError
from distill.serving.capture import TrafficWriter
from distill.serving.metrics import ServeMetrics
from distill.serving.routes import Routes, UnknownModel

Formatter = Callable[[str, list], "tuple[list, bool]"]  # (version, messages) -> (messages, done)


@dataclass
class Backend:
    """The vLLM server behind the front and the versions its engine holds."""

    url: str                        # http://127.0.0.1:PORT/v1
    loaded: set[str]
    runtime_lora: bool              # LoRA mode with VLLM_ALLOW_RUNTIME_LORA_UPDATING
    notes: list[str] = field(default_factory=list)
    base_model: str | None = None   # the model the adapters apply to (LoRA mode)
    # Ray Serve LLM (serve.backend: ray_serve): a version is the model id "<prefix>:<version>",
    # loaded by Ray Serve's multiplexing on a replica's first request for it
    model_prefix: str | None = None
    health_path: str = "/health"

    def model_id(self, version: str) -> str:
        return f"{self.model_prefix}:{version}" if self.model_prefix else version

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")


class NotServable(Exception):
    """A known version the engine cannot serve without a restart (merged mode)."""


@dataclass
class Front:
    backend: Backend
    routes: Routes
    metrics: ServeMetrics
    capture: TrafficWriter | None = None
    format_messages: Formatter | None = None
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=None))
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure_loaded(self, version: str) -> None:
        if version in self.backend.loaded:
            return
        if not self.backend.runtime_lora:
            raise NotServable(
                f"{version} is not loaded: this server runs a merged model "
                f"({', '.join(sorted(self.backend.loaded))}); restart `distill serve` to serve "
                f"it (serve.mode: lora switches versions without a restart)")
        record = self.routes.record(version)
        if record.get("base_model") not in (None, self.backend.base_model):
            raise NotServable(  # refresh.retrain_from: previous trains on the merged parent
                f"{version} was trained on {record['base_model']}, not on the served base "
                f"{self.backend.base_model}: serve it with serve.mode: merged")
        if self.backend.model_prefix:  # Ray Serve loads it where the request lands
            self.backend.loaded.add(version)
            return
        async with self.load_lock:  # one load per version, however many requests wait on it
            if version in self.backend.loaded:
                return
            adapter = record["adapter"]
            r = await self.client.post(f"{self.backend.root}/v1/load_lora_adapter",
                                       json={"lora_name": version, "lora_path": adapter})
            if r.status_code != 200:
                raise NotServable(f"vLLM refused to load {version} ({adapter}): {r.text[:300]}")
            self.backend.loaded.add(version)

    # --- requests ------------------------------------------------------------------------------

    async def complete(self, request: Request, kind: str):
        started = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "the body is not a JSON object")
        name = body.get("model") or self.routes.task
        try:
            version = self.routes.resolve(name)
            await self.ensure_loaded(version)
        except UnknownModel as exc:
            self.metrics.record(name, time.perf_counter() - started, ok=False)
            return _error(404, str(exc), "model_not_found")
        except NotServable as exc:
            self.metrics.record(name, time.perf_counter() - started, ok=False)
            return _error(409, str(exc), "version_not_loaded")
        try:
            prompt, formatted = self._prepare(body, kind, version)
        except DistillError as exc:  # an input the task's template cannot take, by name
            self.metrics.record(name, time.perf_counter() - started, ok=False)
            return _error(400, str(exc))
        body["model"] = self.backend.model_id(version)
        served = f"{self.routes.task}@{version}"
        row = {"request_id": uuid.uuid4().hex, "model": name, "version": version,
               "prompt": prompt, "formatted": formatted}
        url = f"{self.backend.url}/{kind}"
        if body.get("stream"):
            return StreamingResponse(self._stream(url, body, kind, served, row, started),
                                     media_type="text/event-stream")
        try:
            r = await self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            self._done(row, started, ok=False)
            return _error(502, f"vLLM did not answer: {exc}")
        data = r.json()
        ok = r.status_code == 200
        if ok:
            data["model"] = served  # which version answered, in the standard field
            usage = data.get("usage") or {}
            row.update(answer=_text(data["choices"][0], kind),
                       prompt_tokens=usage.get("prompt_tokens"),
                       completion_tokens=usage.get("completion_tokens"))
        self._done(row, started, ok)
        return JSONResponse(data, status_code=r.status_code, headers={"x-distill-version": version})

    def _prepare(self, body: dict, kind: str, version: str) -> tuple[str | None, bool]:
        """The captured prompt (the last user turn as sent), and the body rewritten for the
        student where serve.format_inputs applies."""
        if kind == "completions":
            p = body.get("prompt")
            return (p if isinstance(p, str) else json.dumps(p)), False
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1].get("content") if users else None
        if not isinstance(prompt, str):
            prompt = json.dumps(prompt) if prompt is not None else None
        formatted = False
        if self.format_messages is not None:
            body["messages"], formatted = self.format_messages(version, messages)
        return prompt, formatted

    async def _stream(self, url, body, kind, served, row, started):
        """Pass the server-sent events through; the answer and usage are collected on the way.
        Usage is asked for when the client did not, and that extra chunk is not forwarded."""
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        parts, ok = [], False
        try:
            async with self.client.stream("POST", url, json=body) as r:
                ok = r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        if line:
                            yield line + "\n\n"
                        continue
                    chunk = json.loads(line[6:])
                    chunk["model"] = served
                    if chunk.get("usage"):
                        row.update(prompt_tokens=chunk["usage"].get("prompt_tokens"),
                                   completion_tokens=chunk["usage"].get("completion_tokens"))
                    for choice in chunk.get("choices") or []:
                        parts.append(_text(choice, kind, delta=True) or "")
                    if chunk.get("choices") or wants_usage:
                        yield f"data: {json.dumps(chunk)}\n\n"
        except httpx.HTTPError:
            ok = False
        finally:  # also when the client hangs up after [DONE] and the generator is closed
            row["answer"] = "".join(parts)
            self._done(row, started, ok)

    def _done(self, row: dict, started: float, ok: bool) -> None:
        row.update(latency_s=time.perf_counter() - started, status="ok" if ok else "error")
        self.metrics.record(row["model"], row["latency_s"], ok, row.get("prompt_tokens") or 0,
                            row.get("completion_tokens") or 0)
        if self.capture is not None:
            self.capture.add(row)

    # --- views ---------------------------------------------------------------------------------

    async def health(self, request: Request):
        try:
            r = await self.client.get(f"{self.backend.root}{self.backend.health_path}", timeout=5)
            healthy = r.status_code == 200
        except httpx.HTTPError:
            healthy = False
        try:
            default = self.routes.default_version()
        except UnknownModel:
            default = None
        notes = list(self.backend.notes)
        if default and default not in self.backend.loaded and not self.backend.runtime_lora:
            notes.append(f"promoted {default} is not loaded: restart `distill serve` (merged)")
        return JSONResponse({"status": "ok" if healthy else "vllm unhealthy", "default": default,
                             "loaded": sorted(self.backend.loaded),
                             "runtime_lora": self.backend.runtime_lora, "notes": notes},
                            status_code=200 if healthy else 503)

    async def models(self, request: Request):
        self.routes.scan()
        now = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": now, "owned_by": "distill"}
            for n in self.routes.names()]})

    async def metrics_view(self, request: Request):
        view = self.metrics.view()
        try:
            view["default_version"] = self.routes.default_version()
        except UnknownModel:
            view["default_version"] = None
        return JSONResponse(view)


def _text(choice: dict, kind: str, delta: bool = False) -> str | None:
    if kind == "completions":
        return choice.get("text")
    return (choice.get("delta" if delta else "message") or {}).get("content")


def _error(status: int, message: str, code: str = "bad_request") -> JSONResponse:
    # OpenAI's error shape, so the openai client raises its usual exceptions with the message
    return JSONResponse({"error": {"message": message, "type": code, "code": status}},
                        status_code=status)


def build_app(front: Front) -> Starlette:
    @asynccontextmanager
    async def lifespan(app):
        flusher = asyncio.create_task(_flush_loop(front)) if front.capture else None
        try:
            yield
        finally:
            if flusher:
                flusher.cancel()
            if front.capture:
                front.capture.close()  # the rows still buffered: a shard, before exit
            await front.client.aclose()

    async def chat(request):
        return await front.complete(request, "chat/completions")

    async def completions(request):
        return await front.complete(request, "completions")

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", front.models),
        Route("/health", front.health),
        Route("/metrics", front.metrics_view),
    ], lifespan=lifespan)


async def _flush_loop(front: Front) -> None:
    while True:
        await asyncio.sleep(min(front.capture.cfg.flush_s, 5.0))
        front.capture.flush_if_due()
