"""The tokenizer's view of a candidate: an invertible transform of the SPEC §4 features.

Continuous features (pT, Δη, Δφ, mass) are scaled as OmniJet-alpha does (log pT - 1.8, Δη·3,
Δφ·3; mass·5 brings the hadron masses to O(1)); the categorical ones become class indices:
charge -1/0/+1 -> 0/1/2 and the five PID flags -> 0..4. Candidates outside |Δη|, |Δφ| < 0.8
(configurable; None keeps all) are dropped from the mask, as in OmniJet-alpha. The transform is
stored with the model so tokenization and decoding use exactly the training-time one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from taufm.ingest.shards import CANDIDATE_FEATURES

CONTINUOUS = ("pt", "deta", "dphi", "mass")
PID_FLAGS = ("isElectron", "isMuon", "isPhoton", "isChargedHadron", "isNeutralHadron")
PID_NAMES = ("electron", "muon", "photon", "charged hadron", "neutral hadron")
CHARGE_VALUES = (-1, 0, 1)
_INDEX = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}


@dataclass(frozen=True)
class Preprocessing:
    log_pt_shift: float = 1.8
    angle_scale: float = 3.0
    mass_scale: float = 5.0
    max_abs_angle: float | None = 0.8

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def n_inputs(self) -> int:
        """Model inputs per candidate: the continuous features, charge and the PID one-hot."""
        return len(CONTINUOUS) + 1 + len(PID_FLAGS)

    def select(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The mask with candidates outside the angular window (and pT <= 0) removed."""
        keep = mask & (features[..., _INDEX["pt"]] > 0)
        if self.max_abs_angle is not None:
            keep &= (np.abs(features[..., _INDEX["deta"]]) < self.max_abs_angle) & (np.abs(features[..., _INDEX["dphi"]]) < self.max_abs_angle)
        return keep

    def continuous(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(..., 4) scaled continuous features; zeros where ``mask`` is false."""
        pt = np.where(mask, features[..., _INDEX["pt"]], 1.0)
        out = np.stack(
            [
                np.log(np.maximum(pt, 1e-12)) - self.log_pt_shift,
                features[..., _INDEX["deta"]] * self.angle_scale,
                features[..., _INDEX["dphi"]] * self.angle_scale,
                features[..., _INDEX["mass"]] * self.mass_scale,
            ],
            axis=-1,
        )
        return np.where(mask[..., None], out, 0.0).astype(np.float32)

    def invert_continuous(self, x: np.ndarray) -> np.ndarray:
        """Physical (pT, Δη, Δφ, mass) from scaled values (the inverse of :meth:`continuous`)."""
        return np.stack(
            [
                np.exp(x[..., 0] + self.log_pt_shift),
                x[..., 1] / self.angle_scale,
                x[..., 2] / self.angle_scale,
                x[..., 3] / self.mass_scale,
            ],
            axis=-1,
        )

    @staticmethod
    def charge_class(features: np.ndarray) -> np.ndarray:
        return (np.clip(np.rint(features[..., _INDEX["charge"]]), -1, 1) + 1).astype(np.int64)

    @staticmethod
    def pid_class(features: np.ndarray) -> np.ndarray:
        flags = np.stack([features[..., _INDEX[f]] for f in PID_FLAGS], axis=-1)
        return np.argmax(flags, axis=-1).astype(np.int64)

    def model_inputs(self, features: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the VQ-VAE needs for a batch: inputs, targets and the (cut) mask."""
        mask = self.select(features, mask)
        continuous = self.continuous(features, mask)
        charge = self.charge_class(features)
        pid = self.pid_class(features)
        one_hot = np.eye(len(PID_FLAGS), dtype=np.float32)[pid]
        inputs = np.concatenate([continuous, (charge - 1)[..., None].astype(np.float32), one_hot], axis=-1)
        inputs = np.where(mask[..., None], inputs, 0.0).astype(np.float32)
        return {"inputs": inputs, "continuous": continuous, "charge": np.where(mask, charge, 0), "pid": np.where(mask, pid, 0), "mask": mask}
