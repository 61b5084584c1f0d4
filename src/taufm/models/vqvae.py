"""The OmniJet-alpha-style VQ-VAE tokenizer: one discrete code per jet candidate.

input Linear -> NormFormer blocks (attention across the jet's candidates) -> Linear to the
latent space -> vector quantisation against a codebook -> Linear -> NormFormer blocks -> heads for
the continuous features (regression) and for charge and PID (classification).

Padded candidates take no part anywhere: attention never looks at them, the quantiser neither
counts nor initialises from them, and the losses ignore them (the reference lets them in).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taufm.models.masking import attention_mask


@dataclass(frozen=True)
class VQVAEConfig:
    n_inputs: int = 10
    n_continuous: int = 4
    n_charge_classes: int = 3
    n_pid_classes: int = 5
    hidden_dim: int = 128
    n_heads: int = 4
    n_blocks: int = 2
    dropout: float = 0.0
    latent_dim: int = 8
    codebook_size: int = 512
    beta: float = 1.0  # weight of the commitment term (0.25 let latents drift away from the codes here)
    dead_code_patience: int = 100  # batches a code may go unused before it is replaced
    affine_codebook: bool = False  # learnable per-dimension scale and shift of the codebook
    kmeans_iterations: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Multi-head self-attention over a jet's candidates; padded keys are never attended to."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(mask), dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class NormFormerBlock(nn.Module):
    """Pre-LN attention with an extra LayerNorm on its output (NormFormer), then a pre-LN MLP.

    The attention's output norm and the last MLP layer start at zero, so both residual branches
    add nothing and a new block is the identity (on real candidates; padding is zeroed).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        nn.init.zeros_(self.norm_attn.weight)  # its bias starts at zero too
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.norm_attn(self.attn(self.norm_in(x), mask))
        x = x + self.mlp(x)
        return x * mask[..., None]


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with straight-through gradients, k-means initialisation from
    the first training batch and replacement of codes unused for ``patience`` batches."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.beta = config.beta
        self.patience = config.dead_code_patience
        self.kmeans_iterations = config.kmeans_iterations
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.latent_dim))
        self.affine = config.affine_codebook
        if self.affine:
            self.scale = nn.Parameter(torch.ones(config.latent_dim))
            self.shift = nn.Parameter(torch.zeros(config.latent_dim))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("unused_batches", torch.zeros(config.codebook_size, dtype=torch.long))

    def codes(self) -> torch.Tensor:
        """The effective codebook (after the affine re-parametrisation, if on)."""
        return self.codebook * self.scale + self.shift if self.affine else self.codebook

    def _raw(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors - self.shift) / self.scale if self.affine else vectors

    @torch.no_grad()
    def kmeans_init(self, vectors: torch.Tensor) -> None:
        """Lloyd's k-means on real-candidate latents; codes start at the cluster centres."""
        k = self.codebook.shape[0]
        if len(vectors) >= k:
            centres = vectors[torch.randperm(len(vectors), device=vectors.device)[:k]].clone()
        else:  # fewer latents than codes: repeat them with a little noise
            centres = vectors[torch.randint(len(vectors), (k,), device=vectors.device)]
            centres = centres + 1e-3 * torch.randn_like(centres)
        for _ in range(self.kmeans_iterations):
            assign = torch.cdist(vectors, centres).argmin(dim=1)
            sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
            counts = torch.bincount(assign, minlength=k).to(vectors.dtype)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
        self.codebook.data.copy_(self._raw(centres))
        self.initialized.fill_(True)

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.cdist(vectors, self.codes().to(vectors.dtype)).argmin(dim=1)

    @torch.no_grad()
    def replace_dead_codes(self, used: torch.Tensor, vectors: torch.Tensor) -> int:
        """Count batches without use; codes unused for ``patience`` batches move onto latents."""
        self.unused_batches += 1
        self.unused_batches[used] = 0
        dead = torch.nonzero(self.unused_batches >= self.patience).flatten()
        if len(dead) and len(vectors):
            pick = torch.randint(len(vectors), (len(dead),), device=vectors.device)
            self.codebook.data[dead] = self._raw(vectors[pick].to(self.codebook.dtype))
            self.unused_batches[dead] = 0
        return len(dead)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = z[mask]
        if self.training and not bool(self.initialized) and len(flat):
            self.kmeans_init(flat.detach().float())
        index = self.nearest(flat.detach().float())
        quantized = self.codes()[index].to(flat.dtype)
        codebook_loss = F.mse_loss(quantized, flat.detach()) if len(flat) else z.sum() * 0
        commitment_loss = F.mse_loss(flat, quantized.detach()) if len(flat) else z.sum() * 0
        straight_through = flat + (quantized - flat).detach()
        out = torch.zeros_like(z)
        out[mask] = straight_through
        codes = torch.full(mask.shape, -1, dtype=torch.long, device=z.device)
        codes[mask] = index
        replaced = 0
        if self.training:
            used = torch.zeros(self.codebook.shape[0], dtype=torch.bool, device=z.device)
            used[index] = True
            replaced = self.replace_dead_codes(used, flat.detach().float())
        return {
            "quantized": out,
            "codes": codes,
            "vq_loss": codebook_loss + self.beta * commitment_loss,
            "replaced": torch.tensor(replaced),
        }


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.input_projection = nn.Linear(c.n_inputs, c.hidden_dim)
        self.encoder = nn.ModuleList(NormFormerBlock(c.hidden_dim, c.n_heads, c.dropout) for _ in range(c.n_blocks))
        self.to_latent = nn.Linear(c.hidden_dim, c.latent_dim)
        self.quantizer = VectorQuantizer(c)
        self.from_latent = nn.Linear(c.latent_dim, c.hidden_dim)
        self.decoder = nn.ModuleList(NormFormerBlock(c.hidden_dim, c.n_heads, c.dropout) for _ in range(c.n_blocks))
        self.continuous_head = nn.Linear(c.hidden_dim, c.n_continuous)
        self.charge_head = nn.Linear(c.hidden_dim, c.n_charge_classes)
        self.pid_head = nn.Linear(c.hidden_dim, c.n_pid_classes)

    def encode(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Continuous latent vectors (zeros where padded)."""
        x = self.input_projection(inputs) * mask[..., None]
        for block in self.encoder:
            x = block(x, mask)
        return self.to_latent(x) * mask[..., None]

    def decode(self, quantized: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.from_latent(quantized) * mask[..., None]
        for block in self.decoder:
            x = block(x, mask)
        return {"continuous": self.continuous_head(x), "charge_logits": self.charge_head(x), "pid_logits": self.pid_head(x)}

    def decode_codes(self, codes: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode code indices (-1 or anything where ``mask`` is false is ignored)."""
        quantized = self.quantizer.codes()[codes.clamp(min=0)] * mask[..., None]
        return self.decode(quantized, mask)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        vq = self.quantizer(self.encode(inputs, mask), mask)
        return {**self.decode(vq["quantized"], mask), **vq}


def reconstruction_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-candidate losses averaged over real candidates only."""
    mask = batch["mask"]
    n = mask.sum().clamp(min=1)
    mse = ((outputs["continuous"].float() - batch["continuous"]) ** 2).sum(-1)
    charge = F.cross_entropy(outputs["charge_logits"].float().transpose(1, 2), batch["charge"], reduction="none")
    pid = F.cross_entropy(outputs["pid_logits"].float().transpose(1, 2), batch["pid"], reduction="none")
    return {
        "continuous": (mse * mask).sum() / n,
        "charge": (charge * mask).sum() / n,
        "pid": (pid * mask).sum() / n,
    }
