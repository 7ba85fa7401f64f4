"""Trainer callbacks: a metrics JSONL in the run dir, and a progress bar with loss and tokens/s."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


class MetricsLogger(TrainerCallback):
    """Appends every logged dict, plus tokens/s and the world size, to `<stage>/metrics.jsonl`.

    Appending (not truncating) keeps the lines of a run that was killed and resumed; each line
    carries `global_step`, so a reader can tell the two apart.
    """

    def __init__(self, path: Path, stage: str, world_size: int):
        self.path = Path(path)
        self.stage = stage
        self.world_size = world_size
        self._last_time: float | None = None
        self._last_tokens: float | None = None
        self.first_tokens: float | None = None
        self.start_time: float | None = None
        self.last_tokens: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = self._last_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        now = time.perf_counter()
        tokens = logs.get("num_tokens")
        if tokens is not None:
            if self._last_tokens is not None and now > self._last_time:
                logs["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
            elif self.start_time is not None and now > self.start_time:
                # The first log of a run: tokens counted since train start.
                logs["tokens_per_s"] = round(tokens / (now - self.start_time), 1)
            if self.first_tokens is None:
                self.first_tokens = tokens
            self._last_tokens, self._last_time = tokens, now
            self.last_tokens = tokens
        if not state.is_world_process_zero:
            return
        record = {
            "stage": self.stage,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "world_size": self.world_size,
            "time": time.time(),
            **logs,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")


class LossTokensProgress(ProgressCallback):
    """transformers' bar, with the latest loss and tokens/s shown beside it.

    The stock bar also prints every logged dict as a line around the bar; those dicts are in
    `<stage>/metrics.jsonl` already, so the console keeps just the bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            postfix = {}
            if "loss" in logs:
                postfix["loss"] = f"{logs['loss']:.4f}"
            if "tokens_per_s" in logs:
                postfix["tok/s"] = f"{logs['tokens_per_s']:.0f}"
            if postfix:
                self.training_bar.set_postfix(postfix, refresh=False)


def install(trainer, logger: MetricsLogger) -> None:
    """Our logger first (it adds tokens_per_s to the logs), then our bar in place of the stock one."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(logger)
    trainer.add_callback(LossTokensProgress())


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
