"""What every ingested shard shares: candidate features, the split, the Parquet + manifest pair.

Both ingestion paths (EDM4hep e+e- files and JetClass files) produce one Parquet file per input
file with one row per jet and the same candidate columns, plus a JSON manifest beside it. The
column layout is documented in ``docs/data-format.md``; bump :data:`SCHEMA_VERSION` when it
changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taufm import paths
from taufm.errors import TaufmError
from taufm.io import atomic_output

SCHEMA_VERSION = 1

# SPEC §4 (paper Table 2): the per-candidate features, in this order, as ``cand_<name>`` columns.
CANDIDATE_FEATURES = (
    "pt",
    "mass",
    "deta",
    "dphi",
    "charge",
    "isElectron",
    "isMuon",
    "isPhoton",
    "isChargedHadron",
    "isNeutralHadron",
)
# Lifetime variables kept for later use (sentinel value for candidates without a track).
LIFETIME_FEATURES = ("d0", "d0err", "dz", "dzerr")
CANDIDATE_COLUMNS = tuple(f"cand_{f}" for f in (*CANDIDATE_FEATURES, *LIFETIME_FEATURES))
MASK_COLUMN = "cand_mask"

SPLITS = ("train", "val", "test")
_UINT64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fixed, well-mixing 64-bit hash, the same on every platform."""
    with np.errstate(over="ignore"):
        x = x.astype(_UINT64) + _UINT64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _UINT64(30))) * _UINT64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _UINT64(27))) * _UINT64(0x94D049BB133111EB)
        return x ^ (x >> _UINT64(31))


def assign_split(sample: str, file_name: str, event_numbers: np.ndarray, ratios: Mapping[str, float]) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per event, from a hash of (sample, file, event).

    Depends on nothing else: an event keeps its split however many files are added, in any
    order, on any machine. ``file_name`` should be the file's base name, not its path.
    """
    fractions = np.array([ratios[s] for s in SPLITS], dtype=np.float64)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise TaufmError(f"split ratios must be non-negative and sum to 1, got {dict(ratios)}")
    salt = int.from_bytes(hashlib.sha256(f"{sample}/{file_name}".encode()).digest()[:8], "little")
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(event_numbers, dtype=np.int64).astype(_UINT64) ^ _UINT64(salt))
    uniform = (h >> _UINT64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(np.cumsum(fractions)[:-1], uniform, side="right").astype(np.int8)


def delta_phi(a, b):
    """a - b wrapped to [-pi, pi)."""
    return (a - b + np.pi) % (2.0 * np.pi) - np.pi


def pad_candidates(per_jet: ak.Array, max_candidates: int, sort_by: str = "pt") -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sort each jet's candidates by decreasing ``sort_by``, keep the first ``max_candidates``.

    ``per_jet`` is jagged (jets x candidates) with one field per column. Returns the padded
    columns as ``(n_jets, max_candidates)`` numpy arrays (zeros where padded), the boolean mask of
    real candidates, and each jet's candidate count before truncation.
    """
    order = ak.argsort(per_jet[sort_by], axis=1, ascending=False, stable=True)
    ordered = per_jet[order][:, :max_candidates]
    n_total = ak.to_numpy(ak.num(per_jet)).astype(np.int32)
    n_kept = ak.to_numpy(ak.num(ordered))
    mask = np.arange(max_candidates)[None, :] < n_kept[:, None]
    columns = {}
    flat_positions = np.flatnonzero(mask.reshape(-1))
    for field in ak.fields(ordered):
        values = ak.to_numpy(ak.flatten(ordered[field]))
        out = np.zeros(len(n_kept) * max_candidates, dtype=np.float32)
        out[flat_positions] = values
        columns[field] = out.reshape(len(n_kept), max_candidates)
    return columns, mask, n_total


def _arrow_column(values: np.ndarray) -> pa.Array:
    if values.ndim == 2:
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if values.dtype == object:
        return pa.array(values.tolist(), type=pa.string())
    return pa.array(values)


def _table(columns: Mapping[str, np.ndarray]) -> pa.Table:
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of unequal length: {lengths}")
    table = pa.table({name: _arrow_column(np.asarray(v)) for name, v in columns.items()})
    return table.replace_schema_metadata({"taufm_schema_version": str(SCHEMA_VERSION)})


class ShardWriter:
    """Stream chunks of rows into one Parquet shard (zstd, one row group per chunk).

    Memory stays bounded by one chunk. The shard and its manifest ``<shard>.json`` appear under
    their final names only when the block ends without an exception and :attr:`manifest` was
    set; otherwise neither is left behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: Mapping | None = None
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ShardWriter:
        self._stack = contextlib.ExitStack()
        self._stack.__enter__()
        try:
            self._tmp_shard = self._stack.enter_context(atomic_output(self.path))
            self._tmp_manifest = self._stack.enter_context(atomic_output(paths.manifest(self.path)))
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        table = _table(columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp_shard, table.schema, compression="zstd")
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                if self._writer is None or self.manifest is None:
                    raise ValueError(f"{self.path}: a shard needs at least one chunk of rows and a manifest")
                text = json.dumps({"schema_version": SCHEMA_VERSION, **self.manifest}, indent=2, sort_keys=True)
                self._tmp_manifest.write_text(text + "\n")
        except BaseException:
            if exc_type is None:
                exc_type, exc, tb = sys.exc_info()
                self._stack.__exit__(exc_type, exc, tb)
                raise
        return bool(self._stack.__exit__(exc_type, exc, tb))


def write_shard(path: str | Path, columns: Mapping[str, np.ndarray], manifest: Mapping) -> None:
    """Write one Parquet shard and its manifest ``<path>.json`` in one go, atomically.

    2-D numpy columns become fixed-size lists (one entry per candidate slot).
    """
    with ShardWriter(path) as writer:
        writer.write(columns)
        writer.manifest = manifest
