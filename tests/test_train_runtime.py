"""The shared training runtime: which parameters weight decay applies to."""

from __future__ import annotations

import torch
from torch import nn

from taufm.train.runtime import adamw


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.token = nn.Parameter(torch.zeros(1, 4))
        self.tied = self.linear  # a module reached twice is counted once


def decayed(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}


def test_weight_decay_applies_to_linear_weights_only():
    model, head = Toy(), nn.Linear(4, 2)
    optimizer = adamw([model, head], 1e-3, 0.1)
    assert decayed(optimizer) == {id(model.linear.weight), id(head.weight)}
    every = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters())) + 2
