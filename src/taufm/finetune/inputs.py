"""Input sets of the supervised ParT baseline (``finetune.part.inputs``), without torch.

- ``paper``: the ten per-candidate features of the paper's Table 2 (SPEC §4), preprocessed by
  :data:`PART_PREPROCESSING`: log pT, Δη, Δφ, mass, charge and the five particle-type flags.
- ``paper+lifetime``: those ten, then four lifetime channels (:mod:`taufm.physics.lifetime`):
  the impact parameters d0 and dz signed with respect to the jet axis, and their significances.
  Each is compressed to order one: tanh(signed d0 / 1 mm), tanh(signed dz / 1 mm) (a tau's
  tracks have |d0| ~ 0.1 mm, the resolution is ~5 um), and sign(S)·ln(1 + |S|) for the
  significances S. Candidates without a track have 0 in all four.

The first four channels stay pT, Δη, Δφ and mass, which the ParT's pairwise features read back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from taufm.data import CANDIDATE_FEATURE_COLUMNS as PAPER_COLUMNS
from taufm.errors import TaufmError
from taufm.ingest.shards import MASK_COLUMN
from taufm.physics.lifetime import LIFETIME_QUANTITIES, signed_impact_parameters
from taufm.tokenizer.preprocessing import Preprocessing

# The transform whose outputs the ParT reads (taufm.models.part inverts its first four channels).
PART_PREPROCESSING = Preprocessing(max_abs_angle=None)

LIFETIME_COLUMNS = ("cand_d0", "cand_d0err", "cand_dz", "cand_dzerr")
LIFETIME_INPUT_COLUMNS = (*LIFETIME_COLUMNS, "cand_deta", "cand_dphi", "jet_eta")  # what lifetime_channels reads
LIFETIME_CHANNEL_NAMES = ("tanh_signed_d0", "tanh_signed_dz", "log_signed_d0_significance", "log_signed_dz_significance")
INPUT_SETS = {"paper": len(PAPER_COLUMNS), "paper+lifetime": len(PAPER_COLUMNS) + len(LIFETIME_QUANTITIES)}
IMPACT_PARAMETER_SCALE_MM = 1.0


def check_input_set(name: str) -> int:
    """The number of per-candidate inputs of input set ``name``; an error naming the known ones."""
    if name not in INPUT_SETS:
        raise TaufmError(f"finetune.part.inputs: unknown input set {name!r}; known: {', '.join(INPUT_SETS)}")
    return INPUT_SETS[name]


def lifetime_channels(data: Mapping[str, np.ndarray]) -> np.ndarray:
    """The four lifetime channels (jets, candidates, 4) of ingested candidate columns, float32."""
    missing = [c for c in LIFETIME_INPUT_COLUMNS if c not in data]
    if missing:
        raise TaufmError(f"the lifetime inputs need the shards' column(s) {', '.join(missing)}")
    values = signed_impact_parameters(*(data[c] for c in (*LIFETIME_COLUMNS, "cand_deta", "cand_dphi")), np.asarray(data["jet_eta"])[:, None])
    channels = [
        np.tanh(values["signed_d0"] / IMPACT_PARAMETER_SCALE_MM),
        np.tanh(values["signed_dz"] / IMPACT_PARAMETER_SCALE_MM),
        np.sign(values["signed_d0_significance"]) * np.log1p(np.abs(values["signed_d0_significance"])),
        np.sign(values["signed_dz_significance"]) * np.log1p(np.abs(values["signed_dz_significance"])),
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def part_inputs(data: Mapping[str, np.ndarray], input_set: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """(inputs (jets, candidates, features), mask) of the ParT for ``input_set``."""
    check_input_set(input_set)
    features = np.stack([data[c] for c in PAPER_COLUMNS], axis=-1).astype(np.float32)
    prepared = PART_PREPROCESSING.model_inputs(features, data[MASK_COLUMN].astype(bool))
    inputs, mask = prepared["inputs"], prepared["mask"]
    if input_set == "paper+lifetime":
        lifetime = lifetime_channels(data)
        lifetime[~mask] = 0.0  # padding stays zero, as in the paper channels
        inputs = np.concatenate([inputs, lifetime], axis=-1)
    return inputs, mask
