"""The GPT backbone of OmniJet-alpha: token embedding -> causal transformer blocks -> per-token
embeddings, plus the next-token head used only in pretraining.

Order enters through the causal mask alone (OmniJet-alpha uses no positional encoding); a
learned positional embedding is an option. Padding is masked as keys everywhere; a padded query
attends only to itself so that nothing becomes NaN, and its output is ignored downstream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taufm.models.masking import attention_mask


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # codebook size + 2 (start and stop tokens)
    max_length: int = 130
    dim: int = 256
    n_heads: int = 8
    n_blocks: int = 3
    ffn_multiplier: int = 4
    dropout: float = 0.0
    positional: str = "none"  # "none" (OmniJet-alpha) or "learned"

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.positional not in ("none", "learned"):
            raise ValueError(f"positional must be 'none' or 'learned', got {self.positional!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN GPT block: causal self-attention and an MLP, each with a residual connection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.dim)
        hidden = config.ffn_multiplier * config.dim
        self.mlp = nn.Sequential(nn.Linear(config.dim, hidden), nn.GELU(), nn.Linear(hidden, config.dim), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))


class GPTBackbone(nn.Module):
    """Tokens (batch, length) and their mask -> embeddings (batch, length, dim)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position = nn.Embedding(config.max_length, config.dim) if config.positional == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.norm = nn.LayerNorm(config.dim)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
        """Embeddings after the first ``n_blocks`` blocks (all by default)."""
        if tokens.shape[1] > self.config.max_length:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_length {self.config.max_length}")
        x = self.embedding(tokens.clamp(min=0) * mask)
        if self.position is not None:
            x = x + self.position(torch.arange(tokens.shape[1], device=tokens.device))[None]
        x = self.dropout(x)
        allowed = attention_mask(mask, causal=True)
        for block in self.blocks[: self.config.n_blocks if n_blocks is None else n_blocks]:
            x = block(x, allowed)
        return self.norm(x)


class NextTokenHead(nn.Module):
    """Logits over the vocabulary for the token that follows each position (pretraining only)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.dim, config.vocab_size)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross entropies, number of predictions) over positions whose next token is real.

    Position t predicts token t+1; predictions into padding never count.
    """
    target_mask = mask[:, 1:] & mask[:, :-1]
    # Only the counted positions, as one contiguous (predictions, vocabulary) block.
    selected = logits[:, :-1][target_mask].float()
    loss_sum = F.cross_entropy(selected, tokens[:, 1:][target_mask].long(), reduction="sum")
    return loss_sum, target_mask.sum()


def next_token_loss_from_embeddings(
    head: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`next_token_loss` of ``head(embeddings)``, with the head applied only where a
    prediction counts.

    With the paper's 32k-entry vocabulary the output layer and its logits dominate a step; jets
    are padded to the longest in the batch, so skipping the positions whose next token is
    padding saves their share of that time and of the (batch x length x vocabulary) logits.
    """
    target_mask = mask[:, 1:] & mask[:, :-1]
    logits = head(embeddings[:, :-1][target_mask]).float()
    loss_sum = F.cross_entropy(logits, tokens[:, 1:][target_mask].long(), reduction="sum")
    return loss_sum, target_mask.sum()
