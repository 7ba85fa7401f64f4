"""Live traffic into Parquet shards under `<output_dir>/traffic/`, and reading it back.

Each request becomes one row (prompt and answer scrubbed first). Rows are buffered and written
as a new shard when `rows_per_shard` are buffered, every `flush_s`, and when the server stops,
so a shard is rotated by size and time and never appended to. A shard is written atomically
(tmp then rename): a reader (`distill drift`, `distill refresh --from-traffic`) sees whole
shards only. Above `max_mb` for the whole folder, rows are counted as dropped, not written:
the cap protects the disk, and /metrics shows the drop.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from distill.core.config import CaptureConfig
from distill.core.io import write_parquet_atomic
from distill.serving.metrics import ServeMetrics
from distill.serving.scrub import Scrubber

SCHEMA = pa.schema([
    ("ts", pa.string()),            # UTC, ISO 8601
    ("request_id", pa.string()),
    ("model", pa.string()),         # the name the client asked for
    ("version", pa.string()),       # the version that answered (v0000, v0001, ...)
    ("prompt", pa.string()),        # the last user turn as sent (the task's raw input), scrubbed
    ("answer", pa.string()),        # scrubbed
    ("formatted", pa.bool_()),      # rendered as the student's training prompt by the front
    ("latency_s", pa.float64()),
    ("prompt_tokens", pa.int64()),  # as the engine counted them (after formatting)
    ("completion_tokens", pa.int64()),
    ("status", pa.string()),        # ok | error
])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.parquet")) if folder.is_dir() else 0


class TrafficWriter:
    def __init__(self, folder: Path, cfg: CaptureConfig, metrics: ServeMetrics):
        self.folder, self.cfg, self.metrics = Path(folder), cfg, metrics
        self.scrub = Scrubber(cfg.pii_patterns)
        self.buffer: list[dict] = []
        self.lock = threading.Lock()
        self.bytes = folder_bytes(self.folder)
        self.seq = 0
        self.last_flush = time.monotonic()

    def add(self, row: dict) -> None:
        row = {**row, "prompt": self.scrub(row.get("prompt")),
               "answer": self.scrub(row.get("answer")),
               "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        with self.lock:
            if self.bytes >= self.cfg.max_mb * 1e6:
                self.metrics.capture_dropped += 1
                return
            self.buffer.append(row)
            if len(self.buffer) >= self.cfg.rows_per_shard:
                self._write()

    def flush_if_due(self) -> None:
        with self.lock:
            if self.buffer and time.monotonic() - self.last_flush >= self.cfg.flush_s:
                self._write()

    def close(self) -> None:
        with self.lock:
            if self.buffer:
                self._write()

    def _write(self) -> None:
        rows, self.buffer = self.buffer, []
        self.seq += 1
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = self.folder / f"traffic-{stamp}-{os.getpid()}-{self.seq:05d}.parquet"
        write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=SCHEMA))
        self.bytes += path.stat().st_size
        self.metrics.captured += len(rows)
        self.last_flush = time.monotonic()


def read_traffic(folder: Path, max_rows: int | None = None, ok_only: bool = True) -> pa.Table:
    """Every whole shard, oldest first (the newest `max_rows` rows if given)."""
    import pyarrow.parquet as pq

    shards = sorted(Path(folder).glob("traffic-*.parquet")) if Path(folder).is_dir() else []
    if not shards:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in shards])
    if ok_only:
        import pyarrow.compute as pc
        table = table.filter(pc.equal(table.column("status"), "ok"))
    if max_rows is not None and table.num_rows > max_rows:
        table = table.slice(table.num_rows - max_rows)
    return table
