"""The supervised baseline: a Particle Transformer (Qu, Li, Qian, arXiv:2202.03772) trained from
scratch on the candidates' features, with no tokenizer and no backbone.

per-candidate embedding MLP (LayerNorm -> Linear -> GELU -> Linear) -> the same TaskHead the
foundation-model strategies use, only deeper by default (4 particle blocks), with ParT's defining
part: pairwise interaction features added as attention biases in every particle block.

Pair features, for each pair (a, b) of real candidates of a jet (both orders; a == b included):
ln ΔR, ln kT with kT = min(pT_a, pT_b)·ΔR, ln z with z = min(pT_a, pT_b)/(pT_a + pT_b), and ln m²,
the invariant mass squared of a + b; each argument is clamped at ``PAIR_EPSILON`` before the log,
as ParT does, and ΔR uses the wrapped Δφ. They are computed in float64 (m² of two nearly collinear
candidates is a difference of nearly equal numbers) and embedded ParT's way: pointwise layers
(BatchNorm of the inputs, then Linear -> BatchNorm -> GELU per width of ``pair_embed_dims``, then a
Linear to one value per attention head), giving a (batch, heads, length, length) bias. The class-
attention blocks get no bias.

The kinematics come from the inputs themselves: the first four channels are the preprocessed
continuous features of :data:`PART_PREPROCESSING` (log pT - shift, Δη·scale, Δφ·scale, mass·scale;
``Preprocessing.model_inputs`` layout), which are inverted here to pT, Δη, Δφ and the mass, with the
energy E = sqrt((pT cosh Δη)² + m²). That is each candidate as if its jet's axis sat at η = φ = 0:
ΔR, kT and z are exactly those of the measured candidates, and m² is exact for massless pairs
(photons, neutral hadrons) and differs from the measured one only through pseudorapidity not being
rapidity for massive candidates (a per-mille effect for pions above a GeV). Ingested shards with
unsigned angles (``signed_angles: false``, the reference's |Δη|, |Δφ|) fold the candidates onto one
quadrant, and the pair features then describe the folded jet.

Padded candidates take no part: their inputs are zeroed first, only real pairs are embedded (so
the BatchNorm statistics come from real pairs only, whatever the padding), pairs with a padded
candidate get no bias, and the head masks padded keys as before. The pair features are symmetric,
so each unordered pair is embedded once and mirrored; the model stays invariant under permutations
of a jet's candidates. With ``pair_features`` off the model is the earlier, bias-free one exactly
(same parameters, same initial weights for a seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from taufm.errors import TaufmError
from taufm.finetune.inputs import PART_PREPROCESSING  # the transform whose outputs the ParT reads
from taufm.models.heads import HeadConfig, TaskHead
from taufm.tokenizer.preprocessing import CONTINUOUS, Preprocessing

PAIR_FEATURE_NAMES = ("ln_delta_r", "ln_kt", "ln_z", "ln_m2")
PAIR_EPSILON = 1e-8  # clamp before every log (ParT's value)
_KINEMATIC_CHANNELS = {name: CONTINUOUS.index(name) for name in ("pt", "deta", "dphi", "mass")}


@dataclass(frozen=True)
class ParTConfig:
    n_features: int = 10  # per-candidate inputs (the paper's ten; 14 with lifetime inputs)
    embed_dim: int = 128  # width of the per-candidate embedding (= the head's input_dim)
    head: HeadConfig = field(default_factory=lambda: HeadConfig(n_particle_blocks=4))
    pair_features: bool = True  # False: no interaction features, the plain transformer
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)  # hidden widths of the pair embedding (ParT's)

    def __post_init__(self) -> None:
        for name in ("n_features", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParT {name} must be at least 1, got {getattr(self, name)}")
        if not isinstance(self.head, HeadConfig):
            raise TypeError(f"ParT head must be a HeadConfig (use ParTConfig.from_dict for dicts), got {type(self.head).__name__}")
        if not isinstance(self.pair_features, bool):
            raise TaufmError(f"ParT pair_features must be true or false, got {self.pair_features!r}")
        if isinstance(self.pair_embed_dims, (str, bytes)) or not hasattr(self.pair_embed_dims, "__iter__"):
            raise TaufmError(f"ParT pair_embed_dims must be a list of widths, got {self.pair_embed_dims!r}")
        dims = tuple(self.pair_embed_dims)
        for width in dims:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise TaufmError(f"ParT pair_embed_dims must hold positive integers, got {width!r} in {list(dims)}")
        object.__setattr__(self, "pair_embed_dims", dims)  # a list from YAML/JSON becomes the tuple
        needed = max(_KINEMATIC_CHANNELS.values()) + 1
        if self.pair_features and self.n_features < needed:
            raise TaufmError(f"ParT pair_features read pT, Δη, Δφ and mass from the first {needed} inputs; n_features is {self.n_features}")

    def to_dict(self) -> dict:
        """Nested plain dict (the head as its own dict), e.g. for a run's resolved config."""
        return {**asdict(self), "pair_embed_dims": list(self.pair_embed_dims)}

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


def candidate_kinematics(features: torch.Tensor, preprocessing: Preprocessing = PART_PREPROCESSING) -> tuple[torch.Tensor, ...]:
    """(pT, η, φ, E), each (batch, length) in float64, of candidates given as preprocessed inputs
    (batch, length, n_features): η and φ are Δη and Δφ to the jet axis (see the module docstring).
    float64, so that E² - p² of a candidate is its mass² and not rounding noise."""
    channel = {name: features[..., i].to(torch.float64) for name, i in _KINEMATIC_CHANNELS.items()}
    pt = torch.exp(channel["pt"] + preprocessing.log_pt_shift)
    eta = channel["deta"] / preprocessing.angle_scale
    phi = channel["dphi"] / preprocessing.angle_scale
    mass = channel["mass"] / preprocessing.mass_scale
    energy = torch.sqrt(torch.square(pt * torch.cosh(eta)) + torch.square(mass))
    return pt, eta, phi, energy


def pair_features(pt: torch.Tensor, eta: torch.Tensor, phi: torch.Tensor, energy: torch.Tensor, mask: torch.Tensor, eps: float = PAIR_EPSILON) -> torch.Tensor:
    """(batch, L, L, 4): ln ΔR, ln kT, ln z, ln m² (:data:`PAIR_FEATURE_NAMES`) of every pair of
    real candidates, from each one's pT, η, φ and energy (batch, L); zeros for pairs with a padded
    candidate. Computed in float64, returned in the dtype of ``pt``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = real candidate), got {mask.dtype}")
    dtype = pt.dtype
    pt, eta, phi, energy = (t.to(torch.float64).masked_fill(~mask, 0.0) for t in (pt, eta, phi, energy))
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)

    def a(t: torch.Tensor) -> torch.Tensor:
        return t[:, :, None]

    def b(t: torch.Tensor) -> torch.Tensor:
        return t[:, None, :]

    delta_phi = torch.remainder(a(phi) - b(phi) + math.pi, 2.0 * math.pi) - math.pi
    delta_r = torch.hypot(a(eta) - b(eta), delta_phi)
    pt_min = torch.minimum(a(pt), b(pt))
    kt = pt_min * delta_r
    z = pt_min / (a(pt) + b(pt)).clamp(min=eps)
    m2 = torch.square(a(energy) + b(energy)) - torch.square(a(px) + b(px)) - torch.square(a(py) + b(py)) - torch.square(a(pz) + b(pz))
    out = torch.stack([torch.log(v.clamp(min=eps)) for v in (delta_r, kt, z, m2)], dim=-1)
    real_pairs = a(mask) & b(mask)
    return out.masked_fill(~real_pairs[..., None], 0.0).to(dtype)


class PairBatchNorm(nn.BatchNorm1d):
    """BatchNorm over rows of real pairs (n_pairs, channels). A batch of fewer than two pairs in
    training is normalised with the running statistics instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PairEmbedding(nn.Module):
    """Pair features (batch, L, L, 4) of real pairs -> attention biases (batch, n_heads, L, L).

    Pointwise layers (ParT's 1x1 convolutions) over the real pairs only; zeros elsewhere. The
    linear layers have no bias: each is followed by a BatchNorm, which would remove it, and the
    last one's would shift all logits of a query alike, which softmax ignores.
    """

    def __init__(self, n_heads: int, hidden_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.input_norm = PairBatchNorm(len(PAIR_FEATURE_NAMES), affine=False)
        layers: list[nn.Module] = []
        width = len(PAIR_FEATURE_NAMES)
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden, bias=False), PairBatchNorm(hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, n_heads, bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = mask.shape
        real_pairs = mask[:, :, None] & mask[:, None, :]
        # The features are symmetric in (a, b): embed each unordered pair once, then mirror it.
        upper = real_pairs & torch.ones(length, length, dtype=torch.bool, device=mask.device).triu()
        jet, first, second = upper.nonzero(as_tuple=True)
        values = self.layers(self.input_norm(features[jet, first, second]))
        bias = values.new_zeros(batch, length, length, self.n_heads)
        bias = bias.index_put((jet, first, second), values).index_put((jet, second, first), values)
        return bias.permute(0, 3, 1, 2)


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
        # Built last, so the embedding and head start from the same weights with or without it.
        self.pair_embedding = PairEmbedding(config.head.n_heads, config.pair_embed_dims) if config.pair_features else None

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = real candidate), got {mask.dtype}")
        features = features.masked_fill(~mask[..., None], 0.0)
        bias = None
        if self.pair_embedding is not None:
            bias = self.pair_embedding(pair_features(*candidate_kinematics(features), mask).to(features.dtype), mask)
        return self.head(self.embedding(features), mask, attention_bias=bias)
