"""What a submitted job runs on the cluster: `python -m ray_jobs.entrypoint run|refresh|stages`.

The config arrives in the runtime env (DISTILL_JOB_CONFIG). It is written into the run dir as
`jobs/<submission_id>.yaml` first, so the result says exactly what the job ran with, and then
the ordinary `distill` command runs on that file: the same code path as on a laptop.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from ray_jobs.jobs import CONFIG_ENV, SUBMISSION_ENV


def materialize_config() -> Path:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise SystemExit(f"{CONFIG_ENV} is not set: this entrypoint runs inside a job submitted "
                         "by `distill submit`")
    data = yaml.safe_load(text)
    sid = os.environ.get(SUBMISSION_ENV, "job")
    path = Path(data["output_dir"]) / "jobs" / f"{sid}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs.entrypoint")
    parser.add_argument("command", choices=["run", "refresh", "stages"])
    parser.add_argument("--stage", action="append", default=[], help="stages command: which")
    args = parser.parse_args(argv)
    config = materialize_config()
    from typer.main import get_command

    from distill.cli import app

    cli = get_command(app)
    calls = [[s, str(config)] for s in args.stage] if args.command == "stages" \
        else [[args.command, str(config)]]
    for call in calls:
        print(f"[distill job {os.environ.get(SUBMISSION_ENV, '')}] distill {' '.join(call)}",
              flush=True)
        # standalone_mode=False: click returns a typer.Exit's code instead of exiting.
        code = cli.main(args=call, prog_name="distill", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
