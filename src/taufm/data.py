"""Reading ingested Parquet shards back: selected columns, one split, candidate tensors.

Every training stage reads the shards through here, so schema problems (a shard from another
stage, a missing column, an empty file) are reported the same way, naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taufm.errors import TaufmError
from taufm.ingest.shards import CANDIDATE_FEATURES, MASK_COLUMN, SPLITS


PARQUET_READ_ERRORS = (pa.ArrowException, OSError)  # what pyarrow raises on a damaged file


def read_parquet_or_fail(path: str | Path, read, what: str = "Parquet shard"):
    """``read()`` (a pyarrow read of ``path``) with a damaged file — a corrupt data page, a bad
    page header, a truncated column chunk, which only show when the data are read — turned into a
    :class:`TaufmError` naming the file."""
    try:
        return read()
    except PARQUET_READ_ERRORS as err:
        raise TaufmError(f"{path}: cannot read the {what}, the file is damaged ({type(err).__name__}: {err})") from err


def iter_parquet_batches(parquet: pq.ParquetFile, path: str | Path, batch_size: int, what: str = "Parquet shard"):
    """``parquet.iter_batches(batch_size)``, a damaged page a :class:`TaufmError` naming the file."""
    batches = parquet.iter_batches(batch_size=batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except PARQUET_READ_ERRORS as err:
            raise TaufmError(f"{path}: cannot read the {what}, the file is damaged ({type(err).__name__}: {err})") from err
        yield batch


def column_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A Parquet column as numpy; fixed-size list columns become 2-D arrays."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def read_shards(paths: Sequence[str | Path], columns: Sequence[str], split: str | None = None) -> dict[str, np.ndarray]:
    """The given columns of all rows (of one split, if given) of ``paths``, concatenated.

    Fixed-size list columns come back as 2-D arrays. A missing file or column, or a file that is
    not a Parquet shard, is a :class:`TaufmError` naming it.
    """
    if not paths:
        raise TaufmError("no shards given")
    if split is not None and split not in SPLITS:
        raise TaufmError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    wanted = list(dict.fromkeys([*columns, *(["split"] if split is not None else [])]))
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise TaufmError(f"{path}: no such shard")
        try:
            schema = pq.read_schema(path)
        except Exception as err:
            raise TaufmError(f"{path}: not a readable Parquet shard ({err})") from err
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise TaufmError(f"{path}: missing column(s) {', '.join(missing)} (is it a shard of the right stage?)")
        table = read_parquet_or_fail(path, lambda: pq.read_table(path, columns=wanted))
        if split is not None:
            keep = column_to_numpy(table.column("split")) == SPLITS.index(split)
            table = table.filter(pa.array(keep))
        for c in columns:
            parts[c].append(column_to_numpy(table.column(c)))
    return {c: np.concatenate(v) for c, v in parts.items()}


CANDIDATE_FEATURE_COLUMNS = tuple(f"cand_{f}" for f in CANDIDATE_FEATURES)


def candidate_arrays(table: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(features, mask) of shape (jets, candidates, 10) and (jets, candidates) from shard columns.

    Features in SPEC §4 order (:data:`taufm.ingest.shards.CANDIDATE_FEATURES`).
    """
    features = np.stack([table[c] for c in CANDIDATE_FEATURE_COLUMNS], axis=-1).astype(np.float32)
    return features, table[MASK_COLUMN].astype(bool)
