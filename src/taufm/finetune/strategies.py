"""Fine-tuning strategies by name (SPEC §7), without torch: the workflow checks them before any job.

``scratch``, ``fixed``, ``finetune`` and the ``part`` baseline; ablations
``finetune-unfreeze<K|never>`` (the epoch the backbone starts training) and ``<base>-blocks<B>``
(how many pretrained blocks are used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from taufm.errors import TaufmError

BASE_STRATEGIES = ("scratch", "fixed", "finetune", "part")
_STRATEGY = re.compile(r"^(?P<base>scratch|fixed|finetune|part)(?:-(?P<kind>unfreeze|blocks)(?P<value>\d+|never))?$")


@dataclass(frozen=True)
class Strategy:
    name: str
    base: str
    unfreeze_epoch: int | None  # None: never (fixed); 0 for scratch and part
    n_blocks: int | None  # None: all blocks

    @property
    def uses_backbone(self) -> bool:
        return self.base != "part"

    @property
    def pretrained(self) -> bool:
        return self.base in ("fixed", "finetune")


def parse_strategy(name: str, default_unfreeze_epoch: int) -> Strategy:
    """``scratch``, ``fixed``, ``finetune``, ``part``, ``finetune-unfreeze<K|never>``, ``<base>-blocks<B>``."""
    match = _STRATEGY.match(name)
    if not match:
        raise TaufmError(f"unknown strategy {name!r}; known: {', '.join(BASE_STRATEGIES)}, finetune-unfreeze<K|never>, <strategy>-blocks<B>")
    base, kind, value = match["base"], match["kind"], match["value"]
    if kind and base == "part":
        raise TaufmError(f"strategy {name!r}: the ParT baseline has no backbone to unfreeze or truncate")
    unfreeze = {"scratch": 0, "fixed": None, "finetune": default_unfreeze_epoch, "part": 0}[base]
    n_blocks = None
    if kind == "unfreeze":
        if base != "finetune":
            raise TaufmError(f"strategy {name!r}: only finetune has an unfreeze epoch")
        unfreeze = None if value == "never" else int(value)
    elif kind == "blocks":
        if value == "never" or int(value) < 1:
            raise TaufmError(f"strategy {name!r}: the number of blocks must be a positive integer")
        n_blocks = int(value)
    return Strategy(name=name, base=base, unfreeze_epoch=unfreeze, n_blocks=n_blocks)
