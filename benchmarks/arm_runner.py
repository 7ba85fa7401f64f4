"""Run one arm of a benchmark in a fresh Python process (so each arm's peak RSS is its own) and
read back the JSON it prints on its `ARM_RESULT ` line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_arm(script: str, name: str, argv: list[str], cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, script, "--arm", name, *argv], capture_output=True,
                          text=True, cwd=cwd)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ARM_RESULT "):
            return json.loads(line[len("ARM_RESULT "):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise SystemExit(f"arm {name} failed (exit {proc.returncode})")
