"""Training memory on a CPU: the micro-batch that bounds it, and the peak each stage reached.

Resident memory while training grows with the padded tokens of one forward/backward: the
activations autograd keeps for the backward (most of it) and TRL's fused LM-head tiles scale
with rows x longest row. So a batch whose rows are long is split into micro-batches with
gradient accumulation: the same effective batch, the same examples per optimizer step, the
same loss (TRL normalises the SFT and OPD losses by the tokens of the whole accumulated batch,
DPO's per-pair mean over equal micro-batches is the batch mean). Short rows are not split.

The peak is the kernel's high-water mark of this process, reset when a stage starts
(/proc/self/clear_refs), so a stage's figure is its own and not what the process did before it
(`distill run` runs every stage in one process: vLLM generation, then training).
"""

from __future__ import annotations

import resource
from pathlib import Path

from distill.core.config import TrainConfig

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def micro_batch(batch_size: int, longest: int, budget_tokens: int | None,
                sequences: int = 1) -> int:
    """Rows per forward/backward: the largest divisor of `batch_size` whose padded tokens
    (rows x `sequences` per row x `longest` tokens) fit `budget_tokens`; at least 1, and the
    whole batch without a budget. A divisor keeps every micro-batch the same size, so the
    accumulated gradient is the full batch's."""
    if budget_tokens is None:
        return batch_size
    fits = [d for d in range(1, batch_size + 1)
            if batch_size % d == 0 and d * sequences * max(1, longest) <= budget_tokens]
    return max(fits, default=1)


# Measured (benchmarks/results/memory_cpu.md, 135M student): the step's peak grows ~3.4 MB per
# padded token; 1024 tokens kept it under 5 GB at no loss of tokens/s. A GPU's throughput needs
# the big batch, and its memory is the device's: there `auto` does not split.
CPU_BUDGET_TOKENS = 1024


def budget_tokens(train: TrainConfig, on_gpu: bool) -> int | None:
    if train.micro_batch_tokens == "auto":
        return None if on_gpu else CPU_BUDGET_TOKENS
    return train.micro_batch_tokens


def batch_args(train: TrainConfig, longest: int, sequences: int = 1,
               on_gpu: bool = False) -> dict[str, int]:
    """TrainingArguments for `train.batch_size` rows per step (per device) when one forward
    holds at most `train.micro_batch_tokens` padded tokens: fewer rows, more accumulation."""
    micro = micro_batch(train.batch_size, longest, budget_tokens(train, on_gpu), sequences)
    return {
        "per_device_train_batch_size": micro,
        "per_device_eval_batch_size": micro,
        "gradient_accumulation_steps": train.grad_accum * (train.batch_size // micro),
    }


def batch_summary(longest: int, args) -> dict[str, int]:
    """What a stage's summary says of its batching: the longest row and the split chosen."""
    return {"longest_row_tokens": longest, "micro_batch": args.per_device_train_batch_size,
            "grad_accum_steps": args.gradient_accumulation_steps}


def longest_chat(tokenizer, chats: list[list[dict]], cap: int | None = None,
                 generation_prompt: bool = False) -> int:
    """Tokens of the longest chat (template included), at most `cap` (TRL cuts there)."""
    if not chats:
        return 0
    ids = tokenizer.apply_chat_template(chats, tokenize=True, return_dict=True,
                                        add_generation_prompt=generation_prompt)["input_ids"]
    if cap is None:
        return max(len(i) for i in ids)
    return min(cap, max(len(i) for i in ids))


# --- peak memory ------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def own_peak_rss_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM). Not ru_maxrss: Linux
    carries that over fork and exec, so a child process reports at least its parent's peak
    (a `distill` started by a harness that had built a large corpus, say)."""
    hwm_kb = _status_kb("VmHWM")
    if hwm_kb is not None:
        return hwm_kb / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no procfs: KiB on Linux


class PeakMemory:
    """Peak resident memory of this process from `start()` on (the stage's), and over its
    whole life; peak GPU memory allocated by torch from `start()` on."""

    def __init__(self) -> None:
        self.before_mb = 0.0  # the process's peak before the stage
        self.own = False  # whether the kernel's high-water mark was reset for this stage

    def start(self) -> "PeakMemory":
        import torch

        self.before_mb = own_peak_rss_mb()
        try:
            CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            self.own = True
        except OSError:  # no procfs, or not allowed: the stage's peak is the process's
            self.own = False
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def summary(self) -> dict[str, float]:
        import torch

        stage = own_peak_rss_mb()  # the stage's own once the mark was reset at start()
        out = {"stage_peak_rss_mb": round(stage, 1),
               "process_peak_rss_mb": round(max(self.before_mb, stage), 1)}
        if torch.cuda.is_available():
            out["stage_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out
