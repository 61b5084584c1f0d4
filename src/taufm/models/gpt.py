"""The GPT backbone of OmniJet-alpha: token embedding -> causal transformer blocks -> per-token
embeddings, plus the next-token head used only in pretraining.

Order enters through the causal mask alone (OmniJet-alpha uses no positional encoding); a
learned positional embedding is an option. Padding is masked as keys everywhere; a padded query
attends only to itself so that nothing becomes NaN, and its output is ignored downstream.

The same blocks serve the other backbones of ``pretrain.backbones`` (:mod:`taufm.pretrain`):

- ``inputs: continuous`` reads each candidate's continuous features instead of its token: the
  sequence keeps the token layout (start, one position per candidate, stop, padding), an MLP
  embeds the candidates' features and learned vectors stand for the start and stop positions;
- ``causal: false`` lets every position attend to every real one (masked particle modelling);
- ``mask_embedding: true`` adds the learned vector that replaces the embedding of every position
  a masked-particle objective hides (``forward(..., hidden=...)``): nothing of a hidden
  candidate's own input reaches the blocks.

The paper's backbone (tokens, causal, no mask vector) has exactly the modules, weights and
initialisation it always had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taufm.models.masking import attention_mask


BACKBONE_INPUTS = ("tokens", "continuous")
# Kinds of sequence position of continuous inputs, each with its learned vector.
START_POSITION, CANDIDATE_POSITION, STOP_POSITION = 0, 1, 2


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
    inputs: str = "tokens"  # "tokens" (token ids) or "continuous" (per-candidate features)
    n_features: int = 0  # features per candidate of continuous inputs
    causal: bool = True  # False: bidirectional attention (masked particle modelling)
    mask_embedding: bool = False  # a learned vector for hidden positions (masked particle modelling)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.positional not in ("none", "learned"):
            raise ValueError(f"positional must be 'none' or 'learned', got {self.positional!r}")
        if self.inputs not in BACKBONE_INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(BACKBONE_INPUTS)}, got {self.inputs!r}")
        if self.inputs == "continuous" and self.n_features < 1:
            raise ValueError("continuous inputs need n_features >= 1")

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
        if config.inputs == "tokens":
            self.embedding = nn.Embedding(config.vocab_size, config.dim)
        else:
            self.embedding = nn.Sequential(nn.Linear(config.n_features, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim))
            self.special = nn.Embedding(3, config.dim)  # start, candidate, stop
        self.position = nn.Embedding(config.max_length, config.dim) if config.positional == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.norm = nn.LayerNorm(config.dim)
        self.apply(self._init)
        if config.inputs == "continuous":
            # The features are of order one: PyTorch's default (fan-in) initialisation passes
            # them on at that scale, where the 0.02 of the token table would all but erase them.
            for layer in self.embedding:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        # Created after the initialisation pass, so the other weights draw what they always drew.
        self.hidden_embedding = nn.Parameter(0.02 * torch.randn(config.dim)) if config.mask_embedding else None

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed_inputs(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) input embeddings: of token ids (batch, length), or of continuous
        features (batch, length, n_features) laid out as token sequences are (position 0 the
        start, the last real position the stop, the candidates between)."""
        if self.config.inputs == "tokens":
            if inputs.dim() != 2:
                raise ValueError(f"a token backbone takes token ids (batch, length), got shape {tuple(inputs.shape)}")
            return self.embedding(inputs.clamp(min=0) * mask)
        if inputs.dim() != 3 or inputs.shape[-1] != self.config.n_features:
            raise ValueError(f"a continuous backbone takes features (batch, length, {self.config.n_features}), got shape {tuple(inputs.shape)}")
        n = inputs.shape[1]
        position = torch.arange(n, device=inputs.device)[None, :]
        last = (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
        kind = torch.full_like(mask, CANDIDATE_POSITION, dtype=torch.long)
        kind = torch.where(position == 0, START_POSITION, torch.where(position == last, STOP_POSITION, kind))
        features = self.embedding(inputs.to(self.embedding[0].weight.dtype))
        return torch.where((kind == CANDIDATE_POSITION)[..., None], features, 0.0) + self.special(kind)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, n_blocks: int | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings after the first ``n_blocks`` blocks (all by default). ``hidden``: a
        boolean (batch, length) of positions whose input is replaced by the learned mask vector
        (masked particle modelling; needs ``mask_embedding``)."""
        if inputs.shape[1] > self.config.max_length:
            raise ValueError(f"sequence length {inputs.shape[1]} exceeds max_length {self.config.max_length}")
        x = self.embed_inputs(inputs, mask)
        if hidden is not None:
            if self.hidden_embedding is None:
                raise ValueError("this backbone has no mask vector (mask_embedding false): it cannot hide positions")
            x = torch.where(hidden[..., None], self.hidden_embedding.to(x.dtype), x)
        if self.position is not None:
            x = x + self.position(torch.arange(inputs.shape[1], device=inputs.device))[None]
        x = self.dropout(x)
        allowed = attention_mask(mask, causal=self.config.causal)
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
