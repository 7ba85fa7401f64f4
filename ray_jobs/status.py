"""`distill status`: a submitted job's state, entrypoint and timings."""

from __future__ import annotations

import time

from ray_jobs.client import JobError, client

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_info(address: str, sid: str):
    try:
        return client(address).get_job_info(sid)
    except RuntimeError as exc:
        raise JobError(f"{address}: no job {sid} ({exc})") from None


def status(address: str, sid: str) -> str:
    return str(job_info(address, sid).status)


def wait(address: str, sid: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> str:
    """Block until the job reaches a terminal state; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(address, sid)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise JobError(f"job {sid} still {state} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def jobs_with_id(address: str, sid: str) -> list:
    """Every job the cluster knows under this submission id (0 or 1 when ids are honoured)."""
    return [j for j in client(address).list_jobs() if j.submission_id == sid]
