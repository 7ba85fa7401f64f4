"""The persistent dedup index: every example kept by an earlier curation, for later refreshes.

Layout of `index_dir` (local disk, or any mounted shared filesystem):
    meta.json                      MinHash/LSH parameters; a mismatching config refuses to load
    segments/<segment_id>.parquet  one segment per curation: key, exact, bands, shingles, chars
    segments/<segment_id>/*.parquet  the same, written as shards by Ray Data (`write_ray`)

Index order (segments sorted by id, shards by name, row groups in order) numbers the indexed
documents; the local `load` and the parallel `read_ray` give the same numbers.
A segment is written tmp-then-rename, so a crash leaves either a whole segment or none. The
segment id is derived from the curation's input (its row ids), so re-running the same curation
replaces its own segment instead of deduplicating against itself; new data makes a new segment.
One writer at a time: two curations writing one index concurrently are not coordinated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.curation.minhash import MinHashParams
from distill.core.errors import ConfigError, DataError


@dataclass
class IndexedDocs:
    """Documents already indexed (or about to be): parallel arrays."""

    keys: list[str]
    exact: list[str]
    bands: np.ndarray  # (n, bands) uint64
    shingle_values: np.ndarray  # uint32, concatenated per doc
    shingle_offsets: np.ndarray  # int64, n + 1
    chars: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls, bands: int) -> IndexedDocs:
        return cls([], [], np.zeros((0, bands), np.uint64), np.zeros(0, np.uint32),
                   np.zeros(1, np.int64), np.zeros(0, np.int64))

    def take(self, idx: np.ndarray) -> IndexedDocs:
        idx = np.asarray(idx, dtype=np.int64)
        lens = np.diff(self.shingle_offsets)[idx]
        parts = [self.shingle_values[self.shingle_offsets[i]:self.shingle_offsets[i + 1]] for i in idx]
        return IndexedDocs(
            [self.keys[i] for i in idx], [self.exact[i] for i in idx], self.bands[idx],
            np.concatenate(parts) if parts else np.zeros(0, np.uint32),
            np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), self.chars[idx],
        )

    @staticmethod
    def concat(a: IndexedDocs, b: IndexedDocs) -> IndexedDocs:
        return IndexedDocs(
            a.keys + b.keys, a.exact + b.exact, np.concatenate([a.bands, b.bands]),
            np.concatenate([a.shingle_values, b.shingle_values]),
            np.concatenate([a.shingle_offsets, b.shingle_offsets[1:] + a.shingle_offsets[-1]]),
            np.concatenate([a.chars, b.chars]),
        )


class DiskIndex:
    """Segments of indexed documents under one folder; see the module docstring."""

    def __init__(self, root: Path, params: MinHashParams, fields: list[str]):
        self.root = Path(root)
        self.params = params
        self.meta = {**params.to_meta(), "fields": list(fields)}

    @property
    def segments_dir(self) -> Path:
        return self.root / "segments"

    def check_meta(self) -> None:
        """Create meta.json, or refuse an index built with other parameters."""
        path = self.root / "meta.json"
        if not path.exists():
            self.segments_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".meta.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.meta, indent=2))
            os.replace(tmp, path)
            return
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        diff = [f"dedup.{k}: index has {stored.get(k)!r}, config has {v!r}"
                for k, v in self.meta.items() if stored.get(k) != v]
        if diff:
            raise ConfigError(str(path), diff + [
                "an index only matches signatures made with the same parameters: "
                "use these values, or a new curate.dedup.index_dir"])

    def segment_ids(self) -> list[str]:
        if not self.segments_dir.exists():
            return []
        return sorted(p.stem for p in self.segments_dir.iterdir()
                      if not p.name.startswith(".") and (p.suffix == ".parquet" or p.is_dir()))

    def segment_files(self, exclude: str | None = None) -> list[Path]:
        """Every segment file in index order (a sharded segment: its shards by name)."""
        out: list[Path] = []
        for seg in self.segment_ids():
            if seg == exclude:
                continue
            single = self.segments_dir / f"{seg}.parquet"
            out += [single] if single.is_file() else sorted((self.segments_dir / seg).glob("*.parquet"))
        return out

    def load(self, exclude: str | None = None) -> IndexedDocs:
        """Every indexed document except those of segment `exclude` (the current curation's)."""
        import pyarrow.parquet as pq

        docs = IndexedDocs.empty(self.params.bands)
        for path in self.segment_files(exclude):
            try:
                t = pq.read_table(path)
                docs = IndexedDocs.concat(docs, _from_table(t, self.params.bands))
            except Exception as exc:  # a torn or foreign file: name it rather than crash later
                raise DataError(f"dedup index segment {path} is unreadable: {exc}") from None
        return docs

    def read_ray(self, exclude: str | None = None):
        """The indexed documents as a Ray Dataset (id, bands, shingles, chars, key), and their count.

        One read task per Parquet row group, in parallel; the driver reads only file footers
        to number the documents (`id` = position in index order, as `load` gives).
        """
        import pyarrow.parquet as pq
        import ray

        items, offset = [], 0
        for path in self.segment_files(exclude):
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as exc:
                raise DataError(f"dedup index segment {path} is unreadable: {exc}") from None
            for rg in range(meta.num_row_groups):
                items.append({"path": str(path), "row_group": rg, "offset": offset})
                offset += meta.row_group(rg).num_rows
        if not items:
            return None, 0
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return ds.map_batches(_read_row_group, batch_size=1, batch_format="pyarrow"), offset

    def write_ray(self, segment_id: str, ds) -> Path:
        """Write a Dataset of (key, exact, bands, shingles, chars) as one sharded segment.

        Ray Data writes the shards in parallel into a hidden folder, renamed into place once
        whole; an older segment of the same id (a re-run) is replaced.
        """
        import shutil

        self.segments_dir.mkdir(parents=True, exist_ok=True)
        final = self.segments_dir / segment_id
        tmp = self.segments_dir / f".{segment_id}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ds.select_columns(["key", "exact", "bands", "shingles", "chars"]).write_parquet(str(tmp))
        tmp.mkdir(exist_ok=True)  # nothing kept: an empty segment all the same
        old = self.segments_dir / f".{segment_id}.{os.getpid()}.old"
        for previous in (final, final.with_suffix(".parquet")):
            if previous.exists():
                os.replace(previous, old)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        os.replace(tmp, final)
        return final

    def write(self, segment_id: str, docs: IndexedDocs) -> Path:
        import pyarrow.parquet as pq

        import shutil

        self.segments_dir.mkdir(parents=True, exist_ok=True)
        path = self.segments_dir / f"{segment_id}.parquet"
        tmp = path.with_name(f".{segment_id}.{os.getpid()}.tmp")
        pq.write_table(_to_table(docs), tmp)
        os.replace(tmp, path)
        shutil.rmtree(self.segments_dir / segment_id, ignore_errors=True)  # a sharded re-run
        return path

    def load_keys(self, exclude: str | None = None) -> tuple[list[str], list[str]]:
        """Keys and exact keys of every indexed document, in index order (no signatures)."""
        import pyarrow.parquet as pq

        keys: list[str] = []
        exact: list[str] = []
        for path in self.segment_files(exclude):
            try:
                t = pq.read_table(path, columns=["key", "exact"])
            except Exception as exc:
                raise DataError(f"dedup index segment {path} is unreadable: {exc}") from None
            keys += t.column("key").to_pylist()
            exact += t.column("exact").to_pylist()
        return keys, exact


def _to_table(docs: IndexedDocs):
    import pyarrow as pa

    n, b = docs.bands.shape
    bands = pa.FixedSizeListArray.from_arrays(pa.array(docs.bands.reshape(-1), pa.uint64()), b)
    shingles = pa.ListArray.from_arrays(pa.array(docs.shingle_offsets.astype(np.int32)),
                                        pa.array(docs.shingle_values, pa.uint32()))
    return pa.table({"key": pa.array(docs.keys, pa.string()),
                     "exact": pa.array(docs.exact, pa.string()),
                     "bands": bands, "shingles": shingles,
                     "chars": pa.array(docs.chars, pa.int64())})


def _from_table(t, n_bands: int) -> IndexedDocs:
    bands = t.column("bands").combine_chunks()
    shingles = t.column("shingles").combine_chunks()
    offsets = shingles.offsets.to_numpy().astype(np.int64)
    values = shingles.values.to_numpy()[offsets[0]:offsets[-1]]
    return IndexedDocs(
        t.column("key").to_pylist(), t.column("exact").to_pylist(),
        bands.values.to_numpy().reshape(-1, n_bands).astype(np.uint64),
        values.astype(np.uint32), offsets - offsets[0],
        t.column("chars").to_numpy().astype(np.int64),
    )


def _read_row_group(item):
    """Ray Data task: one row group of one segment file, numbered from its offset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = item["path"][0].as_py()
    t = pq.ParquetFile(path).read_row_group(item["row_group"][0].as_py())
    ids = np.arange(t.num_rows, dtype=np.int64) + item["offset"][0].as_py()
    return t.append_column("id", pa.array(ids))
