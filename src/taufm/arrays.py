"""Small vectorised helpers over flat numpy arrays that several stages need."""

from __future__ import annotations

import numpy as np


def expand_ranges(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``range(start[i], stop[i])`` for every i without a Python loop.

    Returns ``(owner, value)``: for each produced value, the index i of the range it came from.
    """
    start = np.asarray(start, dtype=np.int64)
    lengths = np.maximum(np.asarray(stop, dtype=np.int64) - start, 0)
    owner = np.repeat(np.arange(len(start)), lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, start[owner] + within
