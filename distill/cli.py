"""The `distill` command. Each command parses the config once, then calls one stage function.

User errors (DistillError) are printed as one message and exit with status 2, never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from functools import wraps
from pathlib import Path
from typing import Callable, NoReturn, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from distill import pipeline, promote as promotion, refresh as refreshing
from distill import drift as drifting, serve as serving
from distill.core.artifacts import RunPaths
from distill.core.config import load_config
from distill.core.errors import DistillError
from distill.core.logs import route_library_logs
from distill.core.models import PACKAGED, list_models, prepare_packaged
from distill.core.rundir import Run
from ray_jobs import logs as job_logs_api
from ray_jobs import schedule as scheduling
from ray_jobs import status as job_status_api
from ray_jobs import submit as submission

app = typer.Typer(help="Teacher-student distillation: generate, curate, train, evaluate, report.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Validate and inspect run configs.", no_args_is_help=True)
models_app = typer.Typer(help="Model sources: packaged GGUFs, local folders, hub ids.",
                         no_args_is_help=True)
train_app = typer.Typer(help="Student training.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a message is never cut mid-line

ConfigArg = typer.Argument(..., help="run config (YAML)", show_default=False)
OverrideOpt = typer.Option(None, "--set", "-s", help="override a key: --set sft.max_steps=10")
ForceOpt = typer.Option(False, "--force", help="rerun even if the manifest says done")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `ray job stop`, `kill`), unwound like Ctrl-C: without it Python
    dies at once, and the vLLM servers eval and serve start (each in its own session) live on."""


_sigterm_received = False


def _raise_terminated(signum, frame) -> None:
    global _sigterm_received
    _sigterm_received = True
    raise Terminated()


def stop_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread, so every `with` block stops what it
    started (servers, engines, Ray) on the way out."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def user_errors(func: Callable) -> Callable:
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DistillError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(2)
        except KeyboardInterrupt as exc:
            # Ctrl-C is a choice, not a crash: no traceback. Finished work is on disk.
            _stopped(isinstance(exc, Terminated))
        except Exception:
            # A library that catches the interruption and raises its own error instead (vLLM
            # waiting for its engine core: a TimeoutError, seen here) is still a SIGTERM.
            if _sigterm_received:
                _stopped(terminated=True)
            raise
    return wrapper


def _stopped(terminated: bool) -> NoReturn:
    how = "terminated" if terminated else "interrupted"
    err_console.print(f"{how}: what was finished is saved; rerun the same command to continue",
                      highlight=False)
    raise typer.Exit(143 if terminated else 130)


@app.callback()
def options(verbose: bool = typer.Option(
        False, "--verbose", "-v", envvar="DISTILL_VERBOSE",
        help="Ray, vLLM and training library logs on the console (by default they go to "
             "<run>/logs/libraries.log)")):
    """Teacher-student distillation: generate, curate, train, evaluate, report."""
    global VERBOSE
    VERBOSE = verbose


VERBOSE = False


def _run(config: Path, overrides: Optional[list[str]]):
    run = Run(load_config(config, overrides))
    if not VERBOSE:
        route_library_logs(run.paths.library_log)
    return run


def _logs_note(run: Run) -> None:
    if run.paths.library_log.exists():
        # soft_wrap: a path cut across lines can't be copied
        console.print(f"[dim]library logs: {run.paths.library_log}[/dim]", soft_wrap=True)


def _stage(config: Path, overrides: Optional[list[str]], stage: pipeline.Stage,
           force: bool) -> None:
    run = _run(config, overrides)
    pipeline.run_stage(run, stage, force=force)  # prints the stage's outcome line
    console.print(f"[dim]summary: {run.manifest_path}[/dim]", soft_wrap=True)
    _logs_note(run)


# --- config --------------------------------------------------------------------------------


@config_app.command("validate")
@user_errors
def config_validate(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt):
    """Check a config; report every problem with its line and key path."""
    cfg = load_config(config, overrides)
    console.print(f"[green]ok[/green] {config} (run {cfg.run_name}, hash {cfg.config_hash()})")


@config_app.command("show")
@user_errors
def config_show(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt):
    """Print the fully resolved config, defaults filled in."""
    cfg = load_config(config, overrides)
    sys.stdout.write(yaml.safe_dump(cfg.resolved(), sort_keys=False))


# --- models --------------------------------------------------------------------------------


@models_app.command("list")
@user_errors
def models_list():
    """Packaged models, whether their packages are installed, and where they are prepared."""
    table = Table("name", "installed", "prepared", "folder", "description")
    for row in list_models():
        table.add_row(row["name"], str(row["installed"]), str(row["prepared"]), row["folder"],
                      row["description"])
    console.print(table)
    console.print("Also accepted in configs: a local HF folder path, or a hub id (org/name).")


@models_app.command("prepare")
@user_errors
def models_prepare(
    name: Optional[str] = typer.Argument(None, help="packaged model name, see `models list`"),
    all_: bool = typer.Option(False, "--all", help="prepare every packaged model"),
    force: bool = typer.Option(False, "--force", help="convert again even if cached"),
):
    """Convert a packaged GGUF once into a cached safetensors folder (sha256 checked)."""
    names = list(PACKAGED) if all_ else [name.removeprefix("packaged:")] if name else []
    if not names:
        raise DistillError("name a packaged model, or pass --all")
    for n in names:
        console.print(f"{n}: {prepare_packaged(n, force=force)}")


# --- stages --------------------------------------------------------------------------------


@app.command("prompts")
@user_errors
def prompts(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
            force: bool = ForceOpt):
    """Load task data and split off the held-out test set."""
    _stage(config, overrides, pipeline.PROMPTS, force)


@app.command("check")
@user_errors
def check(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
          force: bool = ForceOpt):
    """Score the teacher on a gold sample of training prompts before generating at scale."""
    _stage(config, overrides, pipeline.CHECK, force)


@app.command("generate")
@user_errors
def generate(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
             force: bool = ForceOpt):
    """Teacher generation (resumable: only missing prompts are generated); the teacher
    check runs first unless it has passed already."""
    _stage(config, overrides, pipeline.GENERATE, force)


@app.command("curate")
@user_errors
def curate(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
           force: bool = ForceOpt):
    """Quality filters, exact + MinHash near-dedup, decontamination."""
    _stage(config, overrides, pipeline.CURATE, force)


@app.command("pairs")
@user_errors
def pairs(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
          force: bool = ForceOpt,
          on_policy: bool = typer.Option(
              False, "--on-policy", help="the on-policy pairs (pairs.on_policy): sample the SFT "
                                         "student, score its answers, pair the target over them")):
    """Preference pairs for DPO: the teacher's samples, or with --on-policy the SFT student's."""
    _stage(config, overrides, pipeline.POLICY_PAIRS if on_policy else pipeline.PAIRS, force)


@train_app.command("prune")
@user_errors
def train_prune(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
                force: bool = ForceOpt):
    """Remove a block of the student's decoder layers before SFT (prune.layers)."""
    _stage(config, overrides, pipeline.PRUNE, force)


@train_app.command("sft")
@user_errors
def train_sft(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
              force: bool = ForceOpt):
    """QLoRA SFT of the student (resumes from the last checkpoint)."""
    _stage(config, overrides, pipeline.SFT, force)


@train_app.command("dpo")
@user_errors
def train_dpo(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
              force: bool = ForceOpt):
    """DPO on top of the SFT adapter."""
    _stage(config, overrides, pipeline.DPO, force)


@train_app.command("opd")
@user_errors
def train_opd(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
              force: bool = ForceOpt):
    """On-policy distillation of the SFT student against the teacher (opd.enabled)."""
    _stage(config, overrides, pipeline.OPD, force)


@app.command("export")
@user_errors
def export(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
           force: bool = ForceOpt):
    """Write the adapter's model card and, if configured, a merged model."""
    _stage(config, overrides, pipeline.EXPORT, force)


@app.command("eval")
@user_errors
def evaluate(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
             force: bool = ForceOpt):
    """Held-out quality of teacher, student base, SFT and DPO students."""
    _stage(config, overrides, pipeline.EVAL, force)


@app.command("bench")
@user_errors
def bench(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
          force: bool = ForceOpt):
    """Latency, throughput and cost of teacher and student."""
    _stage(config, overrides, pipeline.BENCH, force)


@app.command("report")
@user_errors
def report(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
           force: bool = ForceOpt):
    """HTML, Markdown and JSON report."""
    _stage(config, overrides, pipeline.REPORT, force)


@app.command("run")
@user_errors
def run(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
        force: bool = ForceOpt,
        stages: Optional[list[str]] = typer.Option(
            None, "--stage", help="only these stages, in data-flow order (repeatable)"),
        seeds: Optional[int] = typer.Option(
            None, "--seeds", help="training seeds (overrides eval.seeds): sft, dpo, export "
                                  "and eval once per seed on the same data")):
    """Every stage in order; stages already done in the run dir are skipped (resume). A stage
    done under another config is refused, naming the changed keys; --force reruns those."""
    if seeds is not None:  # validated with the rest of the config (a bad N: exit 2)
        overrides = [*(overrides or []), f"eval.seeds={seeds}"]
    r = _run(config, overrides)
    pipeline.run_all(r, force=force, only=tuple(stages or ()))
    table = Table("stage", "status", "seconds", title=f"run {r.run_id}: {r.dir}")
    for name, entry in r.manifest["stages"].items():
        table.add_row(name, entry.get("status", "?"), str(entry.get("seconds", "")))
    for k, book in r.manifest.get("seeds", {}).items():
        for name, entry in book["stages"].items():
            table.add_row(f"{name} (seed {k})", entry.get("status", "?"),
                          str(entry.get("seconds", "")))
    console.print(table)
    if r.paths.report_json.exists():
        verdict = json.loads(r.paths.report_json.read_text())["verdict"]
        console.print(f"[bold]verdict:[/bold] {verdict['text']}")
        console.print(f"report: {r.paths.report_html} (also report.md, report.json)")
    _logs_note(r)


# --- cluster jobs and scheduled refreshes (ray_jobs/) ------------------------------------------

AddressOpt = typer.Option(..., "--address", envvar="RAY_API_SERVER_ADDRESS",
                          help="Ray Jobs API, e.g. http://HEAD:8265")


@app.command("submit")
@user_errors
def submit(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
           address: str = AddressOpt,
           refresh_: bool = typer.Option(False, "--refresh", help="submit `distill refresh`"),
           stages: Optional[list[str]] = typer.Option(
               None, "--stage", help="only these stages, in order (repeatable)"),
           trigger: Optional[str] = typer.Option(
               None, "--trigger", help="part of the id; --refresh default: today's UTC date"),
           wait: bool = typer.Option(False, "--wait", help="follow the logs until it ends"),
           python: str = typer.Option("python", "--python", help="interpreter on the cluster")):
    """Submit the run to a Ray cluster (Jobs API). Same run + trigger = same job (idempotent)."""
    from datetime import datetime, timezone

    cfg = load_config(config, overrides)
    for name in stages or ():
        pipeline.stage_by_name(name)  # refused here, not on the cluster
    command = "refresh" if refresh_ else "stages" if stages else "run"
    if refresh_ and trigger is None:
        trigger = datetime.now(timezone.utc).strftime("%Y%m%d")
    sub = submission.build_submission(cfg, command, tuple(stages or ()), trigger, python)
    result = submission.submit(address, sub)
    verb = "submitted" if result.created else "already submitted, not started again"
    console.print(f"{verb}: [bold]{result.submission_id}[/bold] ({result.status})")
    if wait:
        _follow(address, result.submission_id)


def _follow(address: str, submission_id: str) -> None:
    for chunk in job_logs_api.follow_logs(address, submission_id):
        sys.stdout.write(chunk)
    state = job_status_api.status(address, submission_id)
    console.print(f"{submission_id}: {state}")
    if state != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("status")
@user_errors
def job_status(submission_id: str = typer.Argument(..., help="from `distill submit`"),
               address: str = AddressOpt):
    """A submitted job's state, entrypoint and timings."""
    info = job_status_api.job_info(address, submission_id)
    console.print_json(json.dumps({
        "submission_id": submission_id, "status": str(info.status), "message": info.message,
        "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
        "metadata": info.metadata}, default=str))


@app.command("logs")
@user_errors
def job_logs(submission_id: str = typer.Argument(..., help="from `distill submit`"),
             address: str = AddressOpt,
             follow: bool = typer.Option(False, "--follow", "-f", help="until the job ends")):
    """A submitted job's logs."""
    if follow:
        _follow(address, submission_id)
    else:
        sys.stdout.write(job_logs_api.logs(address, submission_id))


@app.command("refresh")
@user_errors
def refresh(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
            list_: bool = typer.Option(False, "--list", help="show the versions, run nothing"),
            rollback: bool = typer.Option(False, "--rollback",
                                          help="promote again the previously promoted student"),
            from_traffic: bool = typer.Option(
                False, "--from-traffic", help="the new prompts are the ones `distill serve` "
                                              "captured (<run>/traffic), not prompts.path")):
    """Incremental cycle: new prompts only, dedup against the index, retrain, gate, promote."""
    cfg = load_config(config, overrides)
    if rollback:
        record = promotion.rollback(cfg)
        console.print(f"promoted {record['version']} again ({record['adapter']})")
        return
    if not list_:
        if not VERBOSE:  # one library log for the whole cycle, at the top of its output dir
            route_library_logs(RunPaths(cfg.output_dir).library_log)
        result = refreshing.refresh(cfg, pipeline.run_stage, from_traffic=from_traffic)
        console.print_json(refreshing.dumps(result))
    table = Table("version", "status", "new prompts", "metric", "promoted",
                  title=f"refreshes of {cfg.output_dir}")
    for row in refreshing.version_table(Path(cfg.output_dir)):
        table.add_row(row["version"], str(row["status"]), str(row["new_prompts"] or ""),
                      "" if row["value"] is None else f"{row['value']:.4f}",
                      "[green]yes[/green]" if row["promoted"] else "")
    console.print(table)


@app.command("promote")
@user_errors
def promote(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
            version: str = typer.Option(..., "--version", help="v0000 (first run), v0001, ...")):
    """Point promoted.json at an evaluated version (manual promotion or rollback)."""
    record = promotion.promote_version(load_config(config, overrides), version)
    console.print(f"promoted {record['version']}: {record['adapter']} "
                  f"({record['metric']} {record['value']:.4f})")


@app.command("serve")
@user_errors
def serve(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
          run_dir: Optional[Path] = typer.Option(
              None, "--run", help="the run dir to serve (default: the config's output_dir)"),
          version: Optional[str] = typer.Option(
              None, "--version", help="pin the default name to this version (default: the "
                                      "promoted one, followed live)")):
    """The student behind an OpenAI-compatible endpoint: `<task>` is the promoted version,
    `<task>@vNNNN` any evaluated one; /health, /metrics, opt-in traffic capture."""
    cfg = load_config(config, overrides)
    if not VERBOSE:
        route_library_logs(RunPaths(run_dir or cfg.output_dir).library_log)
    serving.serve(cfg, run_dir, version)


@app.command("drift")
@user_errors
def drift(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
          run_dir: Optional[Path] = typer.Option(
              None, "--run", help="the run dir whose traffic is checked (default: output_dir)")):
    """Captured traffic against the training prompts: lengths, n-grams, near-duplicates,
    teacher agreement. Writes drift/report.{json,html}; exit 1 above a drift.* limit."""
    cfg = load_config(config, overrides)
    result = drifting.run_drift(cfg, run_dir)
    for line in drifting.summary_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    if result["alarms"]:
        raise typer.Exit(1)


@app.command("schedule")
@user_errors
def schedule(config: Path = ConfigArg, overrides: Optional[list[str]] = OverrideOpt,
             cron: str = typer.Option(..., "--cron", help='5-field cron, e.g. "0 3 * * *"'),
             address: str = typer.Option("http://ray-head-svc:8265", "--address",
                                         envvar="RAY_API_SERVER_ADDRESS",
                                         help="Jobs API of the standing cluster"),
             out: Path = typer.Option(Path("k8s"), "--out", help="folder for the manifests"),
             image: str = typer.Option("REGISTRY/distill:latest", "--image",
                                       help="container image with distill and the config"),
             config_in_image: Optional[str] = typer.Option(
                 None, "--config-in-image", help="config path inside the image (default: CONFIG)"),
             workers: int = typer.Option(1, "--workers", help="RayCronJob worker pods"),
             time_zone: Optional[str] = typer.Option(None, "--time-zone",
                                                     help="manifests only (KubeRay >= 1.7)"),
             run_scheduler: bool = typer.Option(
                 False, "--run-scheduler", help="no manifests: submit on schedule from here (UTC)"),
             max_fires: Optional[int] = typer.Option(None, "--max-fires",
                                                     help="scheduler: stop after N submissions")):
    """Scheduled refreshes: KubeRay RayCronJob + CronJob manifests, or a built-in scheduler."""
    cfg = load_config(config, overrides)
    if run_scheduler:
        def fire(t):
            sub = submission.build_submission(cfg, "refresh", trigger=scheduling.fire_trigger(t))
            r = submission.submit(address, sub)
            return f"{r.submission_id} ({'submitted' if r.created else 'already submitted'})"
        scheduling.run_scheduler(cron, fire, max_fires=max_fires, log=console.print)
        return
    from importlib.metadata import version as pkg_version
    paths = scheduling.write_manifests(cfg, cron, out, config_in_image=config_in_image or str(config),
                              image=image, address=address, ray_version=pkg_version("ray"),
                              workers=workers, time_zone=time_zone)
    for p in paths:
        console.print(f"wrote {p}")


def main() -> None:
    """The `distill` command. SIGTERM's handler is set here, not in the app's callback, so an
    in-process caller (typer's CliRunner in tests, a notebook) keeps its own."""
    stop_on_sigterm()
    app()


if __name__ == "__main__":
    main()
