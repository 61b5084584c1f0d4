"""A frozen backbone's outputs, computed once per cell and reused every frozen epoch.

While a strategy keeps its backbone frozen (all of ``fixed``; the first ``unfreeze_epoch``
epochs of ``finetune`` and its ablations) the backbone runs in eval mode without gradients, so
its outputs for a jet are the same in every epoch. They are computed once, in batches of the
training batch size and under the same autocast as training, kept on the training device in the
dtype the backbone returns (float32: its last op is a LayerNorm), and the head trains and
validates on them. The head then sees the very tensors the uncached path would compute (up to
the last bits of float rounding, which may depend on the batch a jet is computed in).

The cache is ``(jets, length, dim)`` floats, per cell: the cell's training jets, then its
validation subset, each only if the running total stays within ``finetune.cache_max_mb``; a part
that does not fit runs uncached (a warning says so). It is never stored in a checkpoint: a
resumed cell computes it again (the same batches, so bitwise the same values).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from taufm.train.runtime import autocast

log = logging.getLogger(__name__)

MEGABYTE = 2**20


@dataclass
class CacheBudget:
    """What is left of ``finetune.cache_max_mb`` for one cell's cached backbone outputs."""

    limit_mb: float
    used_bytes: int = 0

    def take(self, n_bytes: int) -> bool:
        """Reserve ``n_bytes`` if they fit in what is left; whether they did."""
        if self.used_bytes + n_bytes > self.limit_mb * MEGABYTE:
            return False
        self.used_bytes += n_bytes
        return True


def _batch(array: np.ndarray, start: int, stop: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array[start:stop]).to(device)


def frozen_backbone_outputs(
    backbone: nn.Module,
    tokens: np.ndarray,
    mask: np.ndarray,
    batch_size: int,
    device: torch.device,
    budget: CacheBudget,
    what: str,
) -> torch.Tensor | None:
    """``backbone(tokens, mask)`` of every jet, ``(jets, length, dim)`` on ``device``, or None
    (with a warning naming ``finetune.cache_max_mb``) when they would not fit in ``budget``.

    ``backbone`` maps (tokens, mask) to per-token outputs (the model's truncated backbone). It is
    put in eval mode for the computation and left as it was found, module by module.
    """
    n = len(tokens)
    if n == 0:
        return None
    modes = {module: module.training for module in backbone.modules()}
    backbone.eval()
    try:
        with torch.no_grad():
            with autocast(device):
                first = backbone(_batch(tokens, 0, batch_size, device), _batch(mask, 0, batch_size, device))
            n_bytes = first[0].numel() * first.element_size() * n
            if not budget.take(n_bytes):
                log.warning(
                    "the frozen backbone's outputs for %d %s need %.0f MB, more than is left of finetune.cache_max_mb = %g: "
                    "these jets run through the backbone every epoch",
                    n,
                    what,
                    n_bytes / MEGABYTE,
                    budget.limit_mb,
                )
                return None
            outputs = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=device)
            outputs[: len(first)] = first
            for start in range(batch_size, n, batch_size):
                with autocast(device):
                    outputs[start : start + batch_size] = backbone(_batch(tokens, start, start + batch_size, device), _batch(mask, start, start + batch_size, device))
    finally:
        for module, training in modes.items():
            module.training = training
    log.info("frozen backbone outputs of %d %s cached (%.0f MB)", n, what, n_bytes / MEGABYTE)
    return outputs
