"""What `/metrics` shows: requests, errors, tokens, latency percentiles, per served name.

Latencies are kept in a bounded window (the newest WINDOW requests), so percentiles follow
the current load and memory stays flat on a long-running server.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

import numpy as np

WINDOW = 10_000


class ServeMetrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self.captured = 0
        self.capture_dropped = 0

    def record(self, model: str, latency_s: float, ok: bool, prompt_tokens: int = 0,
               completion_tokens: int = 0) -> None:
        self.requests[model] += 1
        if not ok:
            self.errors[model] += 1
            return
        self.latencies.append(latency_s)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def view(self) -> dict:
        lat = np.asarray(self.latencies, dtype=float)
        pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 90, 99)}
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": sum(self.requests.values()), "errors": sum(self.errors.values()),
            "by_model": {m: {"requests": n, "errors": self.errors.get(m, 0)}
                         for m, n in sorted(self.requests.items())},
            "latency_s": {**pct, "mean": float(lat.mean()) if lat.size else None,
                          "window": int(lat.size)},
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "capture": {"rows": self.captured, "dropped": self.capture_dropped},
        }
