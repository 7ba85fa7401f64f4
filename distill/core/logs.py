"""Library logs into a file in the run dir, off the console.

The console of a run is for progress bars and one line per stage outcome. Ray, Ray Data, vLLM
and the training libraries log INFO lines and warnings of their own; a `distill` command that
works on a run (unless run with `--verbose`) sends them to `<run>/logs/libraries.log` instead,
and turns off the Hugging Face libraries' bars for one-off steps.

Each library sets up its console handler when it is imported, and the stages import them late
(inside the functions that use them), so routing is done twice: once when the command starts
(`route_library_logs`), and again where Ray is started (`reroute`, from `ensure_ray`). vLLM
configures its logging from an environment variable at import, which reaches its engine
subprocesses and local Ray workers too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Loggers that write to the console on their own (their children propagate to them).
LIBRARY_LOGGERS = ("ray", "ray.data", "vllm", "transformers", "trl", "peft", "accelerate",
                   "datasets", "torch", "httpx", "py.warnings")
VLLM_CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"
# Says which VLLM_LOGGING_CONFIG_PATH is ours: inherited by Ray workers started from this
# process, where `_handler` is unset, so a server started in an actor can still tell.
OUR_VLLM_CONFIG_ENV = "DISTILL_VLLM_LOGGING_CONFIG"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_handler: logging.FileHandler | None = None


def route_library_logs(path: Path) -> Path:
    """From now on library logs go to `path` (appended), not the console. Returns `path`."""
    global _handler
    if _handler is not None:  # once per process: vLLM reads its config once, at import
        reroute()
        return Path(_handler.baseFilename)
    path.parent.mkdir(parents=True, exist_ok=True)
    _handler = logging.FileHandler(path, encoding="utf-8")
    _handler.setFormatter(logging.Formatter(FORMAT))
    _handler.setLevel(logging.INFO)  # Ray Data logs its whole DataContext at DEBUG
    logging.captureWarnings(True)  # warnings.warn(...) becomes a py.warnings record
    configure = os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0"
    if configure and VLLM_CONFIG_ENV not in os.environ:  # a user's own config is kept
        os.environ[VLLM_CONFIG_ENV] = os.environ[OUR_VLLM_CONFIG_ENV] = str(_vllm_config(path))
    # The Hugging Face libraries' bars for one-off steps (tokenizing a dataset, loading
    # weights) are not a stage's progress; the stage's own bars (tqdm) stay.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    reroute()
    return path


def reroute() -> None:
    """Take the console handlers off the library loggers (again: Ray and Ray Data add theirs
    when imported). Does nothing unless `route_library_logs` ran (`--verbose`, tests)."""
    if _handler is None:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if is_console(handler):
                logger.removeHandler(handler)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.propagate = False
    # Libraries that never set a handler (bitsandbytes, ...) reach the root logger, whose
    # fallback prints warnings on the console: give it the file instead.
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)


@contextmanager
def engine_output_to_log() -> Iterator[None]:
    """While an engine starts, the process's stdout and stderr (file descriptors 1 and 2) write
    to the library log: what vLLM's engine subprocess prints before its logging is set up
    (warnings of torch's C++ code, Triton, weight-loading bars) goes there for the engine's
    whole life, since a child keeps the descriptors it was started with. This process gets its
    console back when the block ends. Does nothing unless `route_library_logs` ran."""
    if _handler is None:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(_handler.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def own_log_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a subprocess that has a log file of its own (`vllm serve`): vLLM
    logs there, as before, instead of into the run's library log. Also in a Ray actor (the
    teacher pool), whose environment came from the driver: there the servers' logs went to
    the driver's library log (or a finished test's). A user's own config is kept."""
    config = env.get(VLLM_CONFIG_ENV)
    ours = config is not None and config == env.get(OUR_VLLM_CONFIG_ENV)
    return {k: v for k, v in env.items() if not (ours and k == VLLM_CONFIG_ENV)}


def is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (a StreamHandler that is not a file)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler,
                                                                         logging.FileHandler)


def _vllm_config_path() -> Path:
    assert _handler is not None
    return Path(_handler.baseFilename).with_name("vllm_logging.json")


def _vllm_config(log: Path) -> Path:
    """A logging config for vLLM (VLLM_LOGGING_CONFIG_PATH): its loggers into our log file."""
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log.resolve()),
                              "formatter": "plain", "encoding": "utf-8"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    path = _vllm_config_path()
    path.write_text(json.dumps(config, indent=1))
    return path
