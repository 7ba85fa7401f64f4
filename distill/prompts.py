"""Stage `prompts` (`distill prompts`): load the task data, drop duplicates and bad rows, and
split off the held-out test set that only evaluation and decontamination ever read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

from distill.core.config import RunConfig
from distill.core.io import write_jsonl_atomic
from distill.core.rundir import Run
from distill.data import (Example, collect, load_rows, no_examples_error, stratified_split,
                          write_examples)


def run_prompts(run: Run) -> dict:
    """Stage `prompts`: load, dedup, split; write prompts/{train,test}.parquet."""
    cfg: RunConfig = run.cfg
    paths = run.paths
    examples, bad, duplicates = collect(load_rows(cfg), cfg.prompts.on_bad_row)
    write_jsonl_atomic(paths.bad_rows, [asdict(row) for row in bad])
    if not examples:
        raise no_examples_error(cfg, bad, paths.bad_rows)
    # Only class labels are strata: free-text references and JSON outputs are nearly all unique.
    train, test = stratified_split(examples, cfg.prompts.test_size, cfg.seed,
                                   stratify=cfg.task.type == "classification")
    if cfg.prompts.max_train_prompts is not None:
        train = train[: cfg.prompts.max_train_prompts]
    write_examples(paths.test_prompts, test)
    write_examples(paths.train_prompts, train)
    summary = {
        "examples": len(examples), "duplicates_dropped": duplicates, "bad_rows": len(bad),
        "train_prompts": len(train), "test_examples": len(test),
        "train_labels": _label_counts(train), "test_labels": _label_counts(test),
    }
    if bad:
        summary["bad_rows_file"] = str(paths.bad_rows)
    return summary


def _label_counts(examples: list[Example]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for ex in examples:
        counts[str(ex.label)] += 1
    return dict(sorted(counts.items()))
