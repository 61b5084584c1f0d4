"""The per-task head put on top of per-candidate embeddings (backbone outputs or, for the ParT
baseline, embedded features).

input Linear -> particle self-attention blocks (ParT style) -> a learned class token that attends
to the candidates through class-attention blocks (CaiT style) -> LayerNorm -> Linear.

Padded candidates take no part anywhere: they are zeroed on entry, are never attended to as keys,
and are zeroed after every block. The reference adds a float 0/1 mask to the attention logits,
which lets padding in; here the masks are boolean (True = may attend). A padded query attends only
to itself so that nothing becomes NaN, and the class token always sees itself, so a jet with no
real candidates still gives a finite output. Nothing carries position: the head is invariant
under permutations of a jet's candidates.

The particle blocks optionally take an additive attention bias per head and candidate pair (the
ParT baseline's embedded pairwise features); without one (the default, as for the foundation-model
strategies) they compute exactly what they did before the bias existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from taufm.models.masking import attention_mask


@dataclass(frozen=True)
class HeadConfig:
    dim: int = 128
    n_heads: int = 8
    n_particle_blocks: int = 2
    n_class_blocks: int = 2
    ffn_multiplier: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # Without a class-attention block the output would not depend on the jet at all.
        for name in ("dim", "n_heads", "ffn_multiplier", "n_class_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"head {name} must be at least 1, got {getattr(self, name)}")
        if self.n_particle_blocks < 0:
            raise ValueError(f"head n_particle_blocks must not be negative, got {self.n_particle_blocks}")
        if self.dim % self.n_heads:
            raise ValueError(f"head dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        """Inverse of ``to_dict``; an unknown key is an error naming it."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown HeadConfig keys: {sorted(unknown)}")
        return cls(**d)


class Attention(nn.Module):
    """Multi-head attention of ``queries`` over ``context`` where the boolean ``allowed`` is True.

    The key projection has no bias: it would add the same amount to every logit of a query, which
    softmax ignores, so it could never receive a gradient.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``allowed``: boolean, broadcastable to (batch, heads, n_queries, n_context). ``bias``:
        optional, (batch, heads, n_queries, n_context), added to the logits where ``allowed``;
        pairs not allowed stay excluded (-inf) whatever the bias holds there."""
        q, k, v = self._split(self.query(queries)), self._split(self.key(context)), self._split(self.value(context))
        attn_mask = allowed if bias is None else bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        b, n, d = queries.shape
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def feed_forward(config: HeadConfig) -> nn.Sequential:
    """dim -> ffn_multiplier * dim -> dim with GELU and dropout."""
    hidden = config.ffn_multiplier * config.dim
    return nn.Sequential(nn.Linear(config.dim, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, config.dim))


class _PreNormAttentionBlock(nn.Module):
    """Layers of a pre-LN attention + FFN block; subclasses say what attends to what."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = Attention(config.dim, config.n_heads, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.ffn = feed_forward(config)
        self.dropout = nn.Dropout(config.dropout)


class ParticleAttentionBlock(_PreNormAttentionBlock):
    """ParT-style block: pre-LN self-attention across the real candidates, then a pre-LN FFN,
    each with a residual connection; padded positions come out as zeros."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, length, dim), mask (batch, length) boolean, True for real candidates;
        attention_bias (batch, n_heads, length, length) added to the attention logits, or None."""
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, h, attention_mask(mask), attention_bias))
        x = x + self.dropout(self.ffn(self.norm2(x)))
        return x.masked_fill(~mask[..., None], 0.0)


class ClassAttentionBlock(_PreNormAttentionBlock):
    """CaiT-style block: the class token attends to itself and the real candidates (pre-LN,
    residual), then a pre-LN FFN on the class token (residual). The candidates are not updated."""

    def forward(self, cls_token: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """cls_token (batch, 1, dim), x (batch, length, dim), mask (batch, length) -> (batch, 1, dim)."""
        context = self.norm1(torch.cat([cls_token, x], dim=1))
        # The class token is always allowed, so a jet without real candidates stays finite.
        allowed = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)[:, None, None, :]
        cls_token = cls_token + self.dropout(self.attn(context[:, :1], context, allowed))
        return cls_token + self.dropout(self.ffn(self.norm2(cls_token)))


class TaskHead(nn.Module):
    """Per-candidate inputs (batch, length, input_dim) and their mask -> outputs (batch, n_outputs).

    ``attention_bias`` (batch, n_heads, length, length), if given, is added to the attention logits
    of every particle block; the class-attention blocks never see it.
    """

    def __init__(self, input_dim: int, n_outputs: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.input_projection = nn.Linear(input_dim, config.dim)
        self.particle_blocks = nn.ModuleList(ParticleAttentionBlock(config) for _ in range(config.n_particle_blocks))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.class_blocks = nn.ModuleList(ClassAttentionBlock(config) for _ in range(config.n_class_blocks))
        self.norm = nn.LayerNorm(config.dim)
        self.output = nn.Linear(config.dim, n_outputs)
        self.apply(self._init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = real candidate), got {mask.dtype}")
        if attention_bias is not None:
            expected = (x.shape[0], self.config.n_heads, x.shape[1], x.shape[1])
            if tuple(attention_bias.shape) != expected:
                raise ValueError(f"attention_bias must have shape (batch, n_heads, length, length) = {expected}, got {tuple(attention_bias.shape)}")
        # masked_fill, not multiplication: padding holding inf or NaN must not leak in either.
        x = self.input_projection(x.masked_fill(~mask[..., None], 0.0)).masked_fill(~mask[..., None], 0.0)
        for block in self.particle_blocks:
            x = block(x, mask, attention_bias)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.class_blocks:
            cls_token = block(cls_token, x, mask)
        return self.output(self.norm(cls_token[:, 0]))
