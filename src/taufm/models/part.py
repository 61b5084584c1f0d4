"""The supervised baseline: a Particle Transformer trained from scratch on the candidates'
features, with no tokenizer and no backbone.

per-candidate embedding MLP (LayerNorm -> Linear -> GELU -> Linear) -> the same TaskHead the
foundation-model strategies use, only deeper by default (4 particle blocks). Padded candidates are
zeroed before the embedding and masked everywhere after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from taufm.models.heads import HeadConfig, TaskHead


@dataclass(frozen=True)
class ParTConfig:
    n_features: int = 10  # per-candidate inputs
    embed_dim: int = 128  # width of the per-candidate embedding (= the head's input_dim)
    head: HeadConfig = field(default_factory=lambda: HeadConfig(n_particle_blocks=4))

    def __post_init__(self) -> None:
        for name in ("n_features", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParT {name} must be at least 1, got {getattr(self, name)}")
        if not isinstance(self.head, HeadConfig):
            raise TypeError(f"ParT head must be a HeadConfig (use ParTConfig.from_dict for dicts), got {type(self.head).__name__}")

    def to_dict(self) -> dict:
        """Nested plain dict (the head as its own dict), e.g. for a run's resolved config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ParTConfig:
        """Inverse of ``to_dict``; missing keys take their defaults, an unknown key is an error."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ParTConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "head" in d:
            d["head"] = HeadConfig.from_dict(d["head"])
        return cls(**d)


class ParticleTransformer(nn.Module):
    """Candidate features (batch, length, n_features) and their mask -> outputs (batch, n_outputs)."""

    def __init__(self, config: ParTConfig, n_outputs: int) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Sequential(
            nn.LayerNorm(config.n_features),
            nn.Linear(config.n_features, config.embed_dim),
            nn.GELU(),
            nn.Linear(config.embed_dim, config.embed_dim),
        )
        self.head = TaskHead(config.embed_dim, n_outputs, config.head)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = real candidate), got {mask.dtype}")
        x = self.embedding(features.masked_fill(~mask[..., None], 0.0))
        return self.head(x, mask)
