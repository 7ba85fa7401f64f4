"""`distill logs`: a submitted job's logs, whole or followed until the job ends."""

from __future__ import annotations

from typing import Iterator

from ray_jobs.client import JobError, client


def logs(address: str, sid: str) -> str:
    try:
        return client(address).get_job_logs(sid)
    except RuntimeError as exc:
        raise JobError(f"{address}: no logs for job {sid} ({exc})") from None


def follow_logs(address: str, sid: str) -> Iterator[str]:
    """Log chunks as they arrive, until the job ends."""
    import asyncio

    c = client(address)
    agen = c.tail_job_logs(sid)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()
