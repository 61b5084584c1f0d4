"""Fine-tuning strategies by name (SPEC §7), without torch: the workflow checks them before any job.

A name is ``<base>[-<ablation>][@<backbone>][+lifetime]``:

- ``<base>``: ``scratch``, ``fixed``, ``finetune`` or the ``part`` baseline;
- ``<ablation>``: ``unfreeze<K|never>`` (finetune only: the epoch the backbone starts training)
  or ``blocks<B>`` (how many pretrained blocks are used);
- ``@<backbone>``: the pretrained backbone the strategy starts from, a name of
  ``pretrain.backbones`` (e.g. ``finetune@continuous-mpm``). Without it a backbone strategy
  uses :data:`DEFAULT_BACKBONE`, the paper's backbone (VQ-VAE tokens, next-token prediction);
  ``part`` has no backbone;
- ``+lifetime``: the input set ``paper+lifetime`` (:mod:`taufm.finetune.inputs`: the paper's
  features and the candidates' signed impact parameters). Without it the strategy takes the
  configured input set (``finetune.inputs``; the ParT's ``finetune.part.inputs``), ``paper``
  unless set.

So ``finetune``, ``fixed@tokens-ntp``, ``finetune-blocks1@continuous-mpm+lifetime`` and
``part+lifetime`` are strategies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from taufm.errors import TaufmError

BASE_STRATEGIES = ("scratch", "fixed", "finetune", "part")
DEFAULT_BACKBONE = "tokens-ntp"
LIFETIME_SUFFIX = "+lifetime"
# A backbone's name: lower-case letters, digits and inner hyphens (it is a directory name and
# part of strategy names, so no '@', '+' or '/').
BACKBONE_NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
STRATEGY_PATTERN = rf"(?:scratch|fixed|finetune|part)(?:-(?:unfreeze|blocks)(?:\d+|never))?(?:@{BACKBONE_NAME})?(?:\+lifetime)?"
_STRATEGY = re.compile(
    rf"^(?P<base>scratch|fixed|finetune|part)(?:-(?P<kind>unfreeze|blocks)(?P<value>\d+|never))?(?:@(?P<backbone>{BACKBONE_NAME}))?(?P<lifetime>\+lifetime)?$"
)
_GRAMMAR = "<scratch|fixed|finetune|part>[-unfreeze<K|never>|-blocks<B>][@<backbone>][+lifetime]"


@dataclass(frozen=True)
class Strategy:
    name: str
    base: str
    unfreeze_epoch: int | None  # None: never (fixed); 0 for scratch and part
    n_blocks: int | None  # None: all blocks
    backbone: str | None = None  # the pretrained backbone's name; None for part
    inputs: str = "paper"  # the input set (taufm.finetune.inputs)

    @property
    def uses_backbone(self) -> bool:
        return self.base != "part"

    @property
    def pretrained(self) -> bool:
        return self.base in ("fixed", "finetune")

    @property
    def family(self) -> str:
        """The name without its backbone and input set (``finetune-blocks1@x+lifetime`` ->
        ``finetune-blocks1``): what the paper's figures call the strategy."""
        return self.name.split("@")[0].removesuffix(LIFETIME_SUFFIX)


def parse_strategy(name: str, default_unfreeze_epoch: int, backbones: Sequence[str] | None = None, default_inputs: str = "paper") -> Strategy:
    """The strategy ``name`` (see the module docstring). ``backbones``: the configured backbone
    names; a name naming another is an error listing them (None: any name is accepted).
    ``default_inputs``: the input set of a name without ``+lifetime``."""
    match = _STRATEGY.match(name)
    if not match:
        raise TaufmError(f"unknown strategy {name!r}; a strategy is {_GRAMMAR}, e.g. finetune, fixed@continuous-mpm, part+lifetime")
    base, kind, value = match["base"], match["kind"], match["value"]
    if kind and base == "part":
        raise TaufmError(f"strategy {name!r}: the ParT baseline has no backbone to unfreeze or truncate")
    if match["backbone"] and base == "part":
        raise TaufmError(f"strategy {name!r}: the ParT baseline starts from no backbone (drop @{match['backbone']})")
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
    backbone = None
    if base != "part":
        backbone = match["backbone"] or DEFAULT_BACKBONE
        if backbones is not None and backbone not in backbones:
            where = f"@{backbone}" if match["backbone"] else f"(no @backbone: the default {DEFAULT_BACKBONE})"
            raise TaufmError(f"strategy {name!r}: unknown backbone {where}; pretrain.backbones has: {', '.join(backbones) or 'none'}")
    inputs = "paper+lifetime" if match["lifetime"] else default_inputs
    return Strategy(name=name, base=base, unfreeze_epoch=unfreeze, n_blocks=n_blocks, backbone=backbone, inputs=inputs)
