"""Constraints between settings that the schema cannot state, checked before any job runs.

The schema checks each value on its own (types, ranges, names); these checks relate values:
split ratios that must sum to 1, model widths that attention heads must divide, fine-tuning
strategies that must name a known strategy and a configured backbone, and no more backbone blocks
than that backbone's pretraining trains,
the ParT's input count that its input set fixes.
Without them such a configuration passes ``snakemake -n`` and fails deep in the run, after the
first stages have already replaced their outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from taufm.errors import TaufmError
from taufm.finetune.inputs import INPUT_SETS
from taufm.finetune.strategies import DEFAULT_BACKBONE, parse_strategy

# (config section, width key) of every attention stack whose width n_heads must divide.
ATTENTION_WIDTHS = (
    ("tokenizer.model", "hidden_dim"),
    ("pretrain.model", "dim"),
    ("finetune.head", "dim"),
    ("finetune.part.head", "dim"),
)


def _section(config: Mapping, dotted: str) -> Mapping:
    node = config
    for key in dotted.split("."):
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def finetune_strategies(finetune: Mapping) -> list[str]:
    """Every strategy name the grid and the ablations run (as the workflow names them)."""
    grid, ablations = finetune.get("grid", {}), finetune.get("ablations", {})
    names = list(grid.get("strategies", []))
    names += [f"finetune-unfreeze{k}" for k in ablations.get("unfreeze_epochs", [])]
    names += [f"finetune-blocks{b}" for b in ablations.get("n_blocks", [])]
    return list(dict.fromkeys(names))


def cross_setting_errors(config: Mapping) -> list[str]:
    """Every violated constraint between settings, one line each naming the keys."""
    errors = []
    ratios = _section(config, "ingest.split_ratios")
    if ratios and not math.isclose(sum(ratios.values()), 1.0, abs_tol=1e-9):
        shown = ", ".join(f"{k} {v:g}" for k, v in ratios.items())
        errors.append(f"ingest.split_ratios: {shown} sum to {sum(ratios.values()):g}, not 1")
    for where, width in ATTENTION_WIDTHS:
        section = _section(config, where)
        if width in section and "n_heads" in section and section[width] % section["n_heads"]:
            errors.append(f"{where}: {width} {section[width]} is not divisible by n_heads {section['n_heads']}")
    finetune = _section(config, "finetune")
    part = _section(config, "finetune.part")
    if "n_features" in part and part["n_features"] != INPUT_SETS.get(part.get("inputs", "paper"), part["n_features"]):
        inputs = part.get("inputs", "paper")
        errors.append(f"finetune.part: n_features {part['n_features']} but input set {inputs!r} has {INPUT_SETS[inputs]} inputs per candidate (leave n_features out)")
    pretrain = _section(config, "pretrain")
    backbones = pretrain.get("backbones", {DEFAULT_BACKBONE: {}})
    for backbone, entry in backbones.items():
        model = {**_section(config, "pretrain.model"), **(entry.get("model", {}) if isinstance(entry, Mapping) else {})}
        if "dim" in model and "n_heads" in model and model["dim"] % model["n_heads"]:
            errors.append(f"pretrain.backbones.{backbone}: model dim {model['dim']} is not divisible by n_heads {model['n_heads']}")
    for name in finetune_strategies(finetune):
        try:
            strategy = parse_strategy(name, int(finetune.get("unfreeze_epoch", 0)), list(backbones))
        except TaufmError as err:
            errors.append(f"finetune: {err}")
            continue
        if strategy.backbone is None:
            continue
        entry = backbones[strategy.backbone]
        blocks = (entry.get("model", {}) if isinstance(entry, Mapping) else {}).get("n_blocks", _section(config, "pretrain.model").get("n_blocks"))
        if strategy.n_blocks is not None and blocks is not None and strategy.n_blocks > blocks:
            errors.append(f"finetune: strategy {name!r} uses {strategy.n_blocks} pretrained blocks; backbone {strategy.backbone} has {blocks} (pretrain.model.n_blocks or its pretrain.backbones entry)")
    return errors


def check_cross_settings(config: Mapping) -> None:
    """A :class:`TaufmError` listing every violated constraint (see :func:`cross_setting_errors`)."""
    errors = cross_setting_errors(config)
    if errors:
        raise TaufmError("invalid configuration:\n  " + "\n  ".join(errors))
