"""Any OpenAI-compatible chat endpoint (hosted API, `vllm serve`, SGLang, llama.cpp server).

Each sample is its own request with seed + i (the vLLM backend's rule), so rows are
reproducible where the server honours seeds and usage is exact per row. The openai client
does the retries: exponential backoff on 408/409/429/5xx and timeouts, up to `max_retries`.
A request the server rejects (4xx, e.g. a prompt too long) quarantines that prompt; a server
that stays unreachable fails the job, so a rerun resumes instead of quarantining everything.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from distill.core.config import EndpointConfig, TeacherConfig
from distill.core.errors import ConfigError, EndpointError
from teachers.base import Completion, Messages, SamplingSpec, error_completions, request_seeds


def api_key(endpoint: EndpointConfig) -> str:
    """The key, read from this process's environment where it is used (a Ray worker inherits
    it from the node's environment), so it never travels through a config, a manifest or
    Ray's runtime env (which Ray writes to its logs)."""
    if endpoint.api_key_env is None:
        return "EMPTY"  # local servers ignore it; the client insists on some value
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise ConfigError("teacher.endpoint.api_key_env", [_unset(endpoint.api_key_env)])
    return key


def _unset(name: str) -> str:
    return (f"environment variable {name} is not set on {socket.gethostname()} (it holds the "
            "API key; on a Ray cluster every node needs it in its environment, see the "
            "README, \"A hosted OpenAI-compatible API\")")


def missing_api_keys(teacher: TeacherConfig) -> list[str]:
    """The driver's check before Ray or any engine starts: every named key variable is set."""
    ep = teacher.endpoint
    if not teacher.is_endpoint or ep is None or ep.api_key_env is None:
        return []
    return [] if os.environ.get(ep.api_key_env) else [_unset(ep.api_key_env)]


class OpenAIGenerator:
    backend = "openai"

    def __init__(self, endpoint: EndpointConfig, key: str | None = None,
                 backend: str | None = None, **_ignored):
        """`key`: given by the caller (the teacher pool's own), else read from the endpoint's
        `api_key_env`. `backend`: what rows record as their backend (the pool: vllm_serve)."""
        self.endpoint = endpoint
        self._key = key if key is not None else api_key(endpoint)
        self.backend = backend or OpenAIGenerator.backend
        self.startup_s = 0.0

    def generate(self, messages: list[Messages], sampling: SamplingSpec,
                 seeds: list[int] | None = None) -> list[Completion]:
        base_seeds = request_seeds(sampling, seeds, len(messages))
        return asyncio.run(self._generate(messages, sampling, base_seeds))

    async def _generate(self, messages, sampling, base_seeds) -> list[Completion]:
        from openai import AsyncOpenAI

        ep = self.endpoint
        client = AsyncOpenAI(base_url=ep.base_url, api_key=self._key, timeout=ep.timeout_s,
                             max_retries=ep.max_retries)
        limit = asyncio.Semaphore(ep.max_concurrency)

        async def one(i: int, s: int) -> Completion | list[Completion]:
            async with limit:
                return await self._request(client, i, s, messages[i], sampling, base_seeds[i])

        try:
            jobs = [one(i, s) for i in range(len(messages)) for s in range(sampling.n)]
            done = await asyncio.gather(*jobs)
        finally:
            await client.close()
        out: list[Completion] = []
        failed: set[int] = set()
        for c in done:
            if c.error is not None:
                failed.add(c.prompt_index)
        for c in done:
            # A prompt with one rejected sample is quarantined whole: rows stay n per prompt.
            if c.prompt_index in failed:
                if c.sample_index == 0:
                    reason = next(d.error for d in done
                                  if d.prompt_index == c.prompt_index and d.error)
                    out.extend(error_completions(c.prompt_index, sampling.n, reason,
                                                 c.prompt_tokens, base_seeds[c.prompt_index]))
                continue
            out.append(c)
        return out

    async def _request(self, client, i: int, s: int, msgs: Messages, sampling: SamplingSpec,
                       base_seed: int | None) -> Completion:
        import openai

        seed = None if base_seed is None else base_seed + s
        kwargs = dict(model=self.endpoint.model, messages=msgs, temperature=sampling.temperature,
                      top_p=sampling.top_p, max_tokens=sampling.max_tokens, n=1)
        if seed is not None:
            kwargs["seed"] = seed
        if sampling.logprobs is not None:
            kwargs.update(logprobs=True, top_logprobs=sampling.logprobs)
        if sampling.json_schema is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": sampling.json_schema}}
        elif sampling.choices:
            # vLLM/SGLang extension; hosted APIs without it reject the request (quarantined).
            kwargs["extra_body"] = {"structured_outputs": {"choice": list(sampling.choices)}}
        start = time.perf_counter()
        try:
            resp = await client.chat.completions.create(**kwargs)
        except (openai.BadRequestError, openai.UnprocessableEntityError,
                openai.NotFoundError) as exc:
            reason = f"http_{exc.status_code}: {_message(exc)}"[:1000]
            failed = error_completions(i, 1, reason, 0, seed)[0]
            failed.sample_index = s
            return failed
        except openai.APIError as exc:
            raise self._endpoint_error(exc) from None
        latency = time.perf_counter() - start
        choice = resp.choices[0]
        usage = resp.usage
        return Completion(
            prompt_index=i, sample_index=s, text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "stop", latency_s=latency, seed=seed,
            logprobs=_logprobs(choice.logprobs),
        )

    def _endpoint_error(self, exc) -> EndpointError:
        """The endpoint, not the prompt, failed (the client has used up its retries)."""
        import openai

        ep = self.endpoint
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            named = f" (from {ep.api_key_env})" if ep.api_key_env else ""
            return EndpointError(f"teacher endpoint {ep.base_url} refused the API key{named}: "
                                 f"HTTP {exc.status_code}: {_message(exc)}"[:1000])
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}: {_message(exc)}" if status else _connection_detail(exc)
        return EndpointError(f"teacher endpoint {ep.base_url} still failing after "
                             f"{ep.max_retries} retries: {what}"[:1000])

    def close(self) -> None:
        pass


def _connection_detail(exc) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{exc} ({type(cause).__name__}: {cause})" if cause else str(exc)


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body)
    return str(exc)


def _logprobs(lp) -> list[dict[str, float]] | None:
    if lp is None or not lp.content:
        return None
    # Servers return token strings, not ids: keyed by the token text.
    return [{t.token: float(t.logprob) for t in pos.top_logprobs} for pos in lp.content]
