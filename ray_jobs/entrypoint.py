"""What a submitted job runs on the cluster: `python -m ray_jobs.entrypoint run|refresh|stages`.

The config arrives in the runtime env (DISTILL_JOB_CONFIG). It is written into the run dir as
`jobs/<submission_id>.yaml` first, so the result says exactly what the job ran with, and then
the ordinary `distill` command runs on that file, in a child process: the same code path as on
a laptop, and this module needs nothing from the CLI layer above it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from distill.core.artifacts import RunPaths
from distill.core.io import write_text_atomic
from ray_jobs.submit import CONFIG_ENV, SUBMISSION_ENV


def materialize_config() -> Path:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise SystemExit(f"{CONFIG_ENV} is not set: this entrypoint runs inside a job submitted "
                         "by `distill submit`")
    data = yaml.safe_load(text)
    sid = os.environ.get(SUBMISSION_ENV, "job")
    path = RunPaths(data["output_dir"]).jobs / f"{sid}.yaml"
    write_text_atomic(path, text)
    return path


def calls(command: str, stages: list[str], config: Path) -> list[list[str]]:
    """The `distill` command lines the job runs, in order."""
    if command == "stages":
        return [["run", str(config), "--stage", s] for s in stages]
    return [[command, str(config)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs.entrypoint")
    parser.add_argument("command", choices=["run", "refresh", "stages"])
    parser.add_argument("--stage", action="append", default=[], help="stages command: which")
    args = parser.parse_args(argv)
    config = materialize_config()
    for call in calls(args.command, args.stage, config):
        print(f"[distill job {os.environ.get(SUBMISSION_ENV, '')}] distill {' '.join(call)}",
              flush=True)
        code = subprocess.call([sys.executable, "-m", "distill.cli", *call])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
