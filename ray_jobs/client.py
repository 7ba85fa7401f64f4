"""The Ray Jobs API client every job command uses, with the cluster's auth token."""

from __future__ import annotations

from distill.core.errors import DistillError


class JobError(DistillError):
    """The cluster refused or lost a job (unreachable address, unknown id, failed job)."""


def _use_token_if_available() -> None:
    """Send the cluster's auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
    like `ray.init` and `ray job submit` do; Ray 2.60 clusters require one by default."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_token_if_available()
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None
