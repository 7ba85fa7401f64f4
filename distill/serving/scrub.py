"""Secrets and PII out of captured traffic, before anything reaches the disk.

Secrets are always scrubbed (a key pasted into a prompt must never land in a training set);
PII is what `serve.capture.pii_patterns` names (email and phone numbers by default).
"""

from __future__ import annotations

import re

# Credential shapes seen in the wild: provider API keys, cloud keys, bearer tokens, JWTs,
# private key blocks, and `password=...` style assignments.
SECRETS = {
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    "api_key": r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9_-]*-)?[A-Za-z0-9]{16,}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    "hf_token": r"\bhf_[A-Za-z0-9]{30,}\b",
    "aws_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "slack_token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
    "bearer": r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
    "password": r"(?i)\b(?:password|passwd|pwd|secret|api_?key|token)\s*[:=]\s*\S+",
}


class Scrubber:
    """Replaces every match with `[REDACTED:<name>]`; secrets first, then PII."""

    def __init__(self, pii_patterns: dict[str, str]):
        self.patterns = [(name, re.compile(p)) for name, p in {**SECRETS, **pii_patterns}.items()]

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        for name, pattern in self.patterns:
            text = pattern.sub(f"[REDACTED:{name}]", text)
        return text
