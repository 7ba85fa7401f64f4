"""Training data for the student, read from the run dir's Parquet files.

Rows become TRL's conversational formats: prompt-completion for SFT (TRL masks the prompt, so
the loss is on the answer only) and prompt/chosen/rejected for DPO. The prompt is the
student's short chat (`distill.core.messages.student_messages`), the one eval and serving use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from distill.core.config import TaskConfig
from distill.core.errors import DataError, StageNotReadyError
from distill.core.messages import student_messages
from students.fit import InputFitter

SFT_COLUMNS = ("example_id", "text", "target")
DPO_COLUMNS = ("example_id", "text", "chosen", "rejected")


def read_table(path: Path, columns: tuple[str, ...], made_by: str):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise StageNotReadyError(f"{path} not found: run the {made_by} stage first")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows to train on")
    return table


def row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def answers(path: Path, *columns: str) -> list[str]:
    """Every answer string in these columns (for the prompt budget)."""
    table = read_table(path, columns, "curate or pairs")
    return [a for c in columns for a in table.column(c).to_pylist() if isinstance(a, str)]


def _check_strings(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    for i, row in enumerate(rows):
        for field in fields:
            if not isinstance(row[field], str) or not row[field].strip():
                raise DataError(f"{path}: row {i} (example_id={row['example_id']}): empty {field}")


def sft_records(path: Path, task: TaskConfig, fitter: InputFitter | None = None) -> list[dict]:
    """Prompt-completion chats; with a `fitter`, over-long inputs are shortened so that every
    example keeps its whole answer within max_seq_len (students/fit.py)."""
    rows = read_table(path, SFT_COLUMNS, "curate").select(list(SFT_COLUMNS)).to_pylist()
    _check_strings(path, rows, ("text", "target"))
    return [
        {
            "example_id": row["example_id"],
            "prompt": _prompt(task, fitter, row, [row["target"]]),
            "completion": [{"role": "assistant", "content": row["target"]}],
        }
        for row in rows
    ]


def dpo_records(path: Path, task: TaskConfig, fitter: InputFitter | None = None) -> list[dict]:
    rows = read_table(path, DPO_COLUMNS, "pairs").select(list(DPO_COLUMNS)).to_pylist()
    _check_strings(path, rows, ("text", "chosen", "rejected"))
    return [
        {
            "example_id": row["example_id"],
            "prompt": _prompt(task, fitter, row, [row["chosen"], row["rejected"]]),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in rows
    ]


def _prompt(task: TaskConfig, fitter: InputFitter | None, row: dict, answers: list[str]):
    if fitter is None:
        return student_messages(task, row["text"])
    longest = max(fitter.answer_tokens(a) for a in answers)
    return fitter.messages(row["text"], answer_tokens=longest)


def split(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out validation rows chosen by a hash of the example id (stable across reruns,
    independent of row order)."""
    if val_fraction <= 0 or len(records) < 4:
        return records, []

    def bucket(rec: dict) -> float:
        h = hashlib.sha256(f"{seed}:{rec['example_id']}".encode()).hexdigest()
        return int(h[:8], 16) / 0xFFFFFFFF

    val = [r for r in records if bucket(r) < val_fraction]
    if not val:
        val = [min(records, key=bucket)]
    val_ids = {id(r) for r in val}
    return [r for r in records if id(r) not in val_ids], val


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{k: v for k, v in r.items() if k != "example_id"} for r in records])
