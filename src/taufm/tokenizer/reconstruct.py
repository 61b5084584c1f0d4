"""Encode -> quantise -> decode jets with a trained tokenizer, for the paper's Fig. 2 and 3 checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from taufm.data import CANDIDATE_FEATURE_COLUMNS, candidate_arrays, read_shards
from taufm.ingest.shards import MASK_COLUMN
from taufm.models.vqvae import VQVAE
from taufm.tokenizer.preprocessing import Preprocessing


@torch.no_grad()
def reconstruct(model: VQVAE, preprocessing: Preprocessing, features: np.ndarray, mask: np.ndarray, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Originals and reconstructions of every candidate the tokenizer sees (flat arrays).

    Returns ``continuous_true`` / ``continuous_reco`` of shape (candidates, 4) in physical units
    (pT [GeV], Δη, Δφ, mass [GeV], see :data:`taufm.tokenizer.preprocessing.CONTINUOUS`), and
    ``charge_true`` / ``charge_reco`` (-1, 0, 1) and ``pid_true`` / ``pid_reco`` (class indices of
    :data:`taufm.tokenizer.preprocessing.PID_NAMES`), plus ``codes``.
    """
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("continuous_true", "continuous_reco", "charge_true", "charge_reco", "pid_true", "pid_reco", "codes")}
    for start in range(0, len(features), batch_size):
        inputs = preprocessing.model_inputs(features[start : start + batch_size], mask[start : start + batch_size])
        m = inputs["mask"]
        x, mt = torch.from_numpy(inputs["inputs"]), torch.from_numpy(m)
        result = model(x, mt)
        out["continuous_true"].append(preprocessing.invert_continuous(inputs["continuous"][m]))
        out["continuous_reco"].append(preprocessing.invert_continuous(result["continuous"][mt].numpy()))
        out["charge_true"].append(inputs["charge"][m] - 1)
        out["charge_reco"].append(result["charge_logits"][mt].argmax(-1).numpy() - 1)
        out["pid_true"].append(inputs["pid"][m])
        out["pid_reco"].append(result["pid_logits"][mt].argmax(-1).numpy())
        out["codes"].append(result["codes"][mt].numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def reconstruct_shards(model: VQVAE, preprocessing: Preprocessing, shards: Sequence[str | Path], split: str = "test", max_jets: int | None = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`reconstruct` on (a seeded subset of) one split of ingested shards."""
    table = read_shards(shards, [*CANDIDATE_FEATURE_COLUMNS, MASK_COLUMN], split=split)
    features, mask = candidate_arrays(table)
    if max_jets is not None and len(features) > max_jets:
        keep = np.sort(np.random.default_rng(seed).permutation(len(features))[:max_jets])
        features, mask = features[keep], mask[keep]
    return reconstruct(model, preprocessing, features, mask)
