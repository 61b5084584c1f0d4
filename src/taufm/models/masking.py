"""The one rule for attention over padded jets, shared by every network of taufm."""

from __future__ import annotations

import torch


def attention_mask(mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """(batch, 1, length, length) boolean, True where a query may attend to a key.

    Keys must be real (``mask`` True) and, if ``causal``, not later than the query. Every
    position may also attend to itself, so that a padded query (whose output is ignored) never
    faces an all-masked row, which scaled_dot_product_attention turns into NaN.
    """
    n = mask.shape[1]
    allowed = mask[:, None, :].expand(-1, n, -1)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return (allowed | torch.eye(n, dtype=torch.bool, device=mask.device))[:, None]
