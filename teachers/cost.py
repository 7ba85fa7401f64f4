"""Estimated cost of generation (or serving) from the config's price table. Pure: no I/O."""

from __future__ import annotations

from distill.core.config import PriceConfig


def estimate_cost(price: PriceConfig, wall_s: float, prompt_tokens: int,
                  completion_tokens: int, replicas_or_gpus: int = 1) -> float:
    """US dollars. Hardware prices bill wall time on every GPU (or node) held, busy or not;
    API prices bill tokens: input and output per million."""
    if price.per_hour_usd is not None:
        return price.per_hour_usd * max(replicas_or_gpus, 1) * wall_s / 3600.0
    cost_in = (price.input_per_1m_usd or 0.0) * prompt_tokens / 1e6
    cost_out = (price.output_per_1m_usd or 0.0) * completion_tokens / 1e6
    return cost_in + cost_out


def billed_units(backend: str, replicas: int, tensor_parallel_size: int) -> int:
    """What a per-hour price multiplies: GPUs held on a GPU cluster, else one per replica
    (on CPU a replica is one machine slot); an API endpoint bills tokens, so 1."""
    if backend == "openai":
        return 1
    return replicas * tensor_parallel_size
