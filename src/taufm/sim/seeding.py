"""Seeds derived from (sample, shard, base seed): every shard is independent and reproducible."""

from __future__ import annotations

import hashlib

import numpy as np

# Pythia accepts Random:seed in [1, 900_000_000].
_PYTHIA_SEED_MAX = 900_000_000


def _digest(*parts: object) -> int:
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def pythia_seed(sample: str, shard: int, seed: int) -> int:
    """Pythia's Random:seed for one shard, stable across Python versions and machines."""
    return 1 + _digest("pythia", sample, shard, seed) % _PYTHIA_SEED_MAX


def numpy_rng(sample: str, shard: int, seed: int, stream: str) -> np.random.Generator:
    """A numpy generator for one purpose (``stream``, e.g. "detector") of one shard."""
    return np.random.default_rng(_digest("numpy", stream, sample, shard, seed))
