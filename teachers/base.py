"""The teacher interface: chat messages and sampling settings in, completions out.

Every backend (vLLM in-process, an OpenAI-compatible HTTP server, transformers) implements
`Generator`, so the Ray stage, eval and bench drive teacher and student the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingSpec:
    """Backend-neutral sampling settings. `seed` is the base seed of a request: sample i of a
    prompt uses seed + i (vLLM's own rule for n > 1), so every row is reproducible."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per generated token
    choices: tuple[str, ...] | None = None  # structured output: one of these strings
    json_schema: dict[str, Any] | None = None  # structured output: JSON matching this schema

    def to_json(self) -> str:
        """The settings shared by all rows of a run (the per-row seed is its own column)."""
        d = asdict(self)
        d.pop("seed")
        if d["choices"] is not None:
            d["choices"] = list(d["choices"])
        return json.dumps(d, sort_keys=True)

    def with_seed(self, seed: int | None) -> SamplingSpec:
        return SamplingSpec(**{**asdict(self), "seed": seed})


@dataclass
class Completion:
    """One sampled completion of one prompt. `error` set means the prompt was not generated
    (e.g. too long for the model) and `text` is empty; callers quarantine such rows."""

    prompt_index: int
    sample_index: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_s: float
    seed: int | None = None
    logprobs: list[dict[str, float]] | None = None  # one {token: logprob} per generated token
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Generator(Protocol):
    """What every backend offers. One `Completion` per (prompt, sample), prompt-major order.

    `seeds`, when given, is one base seed per prompt and overrides `sampling.seed`."""

    backend: str

    def generate(
        self,
        messages: list[Messages],
        sampling: SamplingSpec,
        seeds: list[int] | None = None,
    ) -> list[Completion]: ...

    def close(self) -> None: ...


def request_seeds(sampling: SamplingSpec, seeds: list[int] | None, count: int) -> list[int | None]:
    if seeds is not None:
        if len(seeds) != count:
            raise ValueError(f"got {len(seeds)} seeds for {count} prompts")
        return list(seeds)
    return [sampling.seed] * count


def row_seed(base_seed: int, prompt_id: str) -> int:
    """A stable per-prompt seed (fits in 31 bits, as some backends want a signed int)."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def error_completions(prompt_index: int, n: int, reason: str, prompt_tokens: int = 0,
                      seed: int | None = None) -> list[Completion]:
    return [
        Completion(prompt_index, i, "", prompt_tokens, 0, "error", 0.0,
                   seed=None if seed is None else seed + i, error=reason)
        for i in range(n)
    ]
