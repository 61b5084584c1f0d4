"""Packing small grid cells into one Snakemake job (``finetune.pack``), without torch.

A pack is one job and one ``taufm finetune-pack`` process that trains several cells of one task
one after another, reading the shards and the backbone once. Its outputs are the union of its
cells' run directories, which are exactly what each cell's own ``finetune`` job writes.

``finetune.pack.by`` lists what a pack spans: ``seeds`` (all seeds of one task, strategy and
size), ``strategies`` (all strategies of one task, size and seed) or both; empty: no packing,
every cell its own ``finetune`` job. Only cells of at most ``finetune.pack.max_size`` training
jets are packed; the others keep their own job. The grid and the ablations pack separately (their
strategies and seeds are separate lists), and the ParT baseline packs on its own (it reads the
ingested shards, not the token shards).

Snakemake needs every output of a rule to hold the same wildcards, so each pack family is one
rule whose outputs are the product of the packed lists (literal) over the other dimensions
(wildcards): :class:`PackFamily` gives the patterns, the wildcard constraints and, per job, the
cells. The families have fixed rule names (:data:`PACK_RULES`), so a cluster profile can size
them, and take precedence over the per-cell ``finetune`` rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taufm import paths
from taufm.errors import TaufmError
from taufm.finetune.strategies import DEFAULT_BACKBONE, parse_strategy

PACK_DIMENSIONS = ("strategies", "seeds")
PACK_RULES = {"grid": "finetune_pack", "part": "finetune_pack_part", "ablations": "finetune_pack_ablations"}
# A pack job's own directory (its provenance record); each cell's files stay in its run directory.
FINETUNE_PACK_DIR = "finetune/packs/{job}"


def _wildcard(wildcards, name: str) -> str:
    """One wildcard's value, from a mapping or Snakemake's wildcards object."""
    return str(wildcards[name] if isinstance(wildcards, Mapping) else getattr(wildcards, name))


def _alternatives(values: Sequence) -> str:
    """A wildcard constraint matching exactly ``values``."""
    return "|".join(re.escape(str(v)) for v in values)


@dataclass(frozen=True)
class PackFamily:
    """The packed cells of one part of the grid: tasks x strategies x sizes x seeds, packed along
    ``by`` (those dimensions are literal in the rule's outputs; the others are wildcards)."""

    kind: str  # grid, part or ablations
    tasks: tuple[str, ...]
    strategies: tuple[str, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    by: tuple[str, ...]
    backbone: str | None = None  # set when the family is one backbone's part of a grid packed by strategies

    @property
    def rule(self) -> str:
        return PACK_RULES[self.kind] + (f"_{self.backbone.replace('-', '_')}" if self.backbone else "")

    @property
    def uses_backbone(self) -> bool:
        return self.kind != "part"

    @property
    def cells_per_job(self) -> int:
        return (len(self.strategies) if "strategies" in self.by else 1) * (len(self.seeds) if "seeds" in self.by else 1)

    def _strategies(self, wildcards=None) -> list[str]:
        if "strategies" in self.by:
            return list(self.strategies)
        return ["{strategy}"] if wildcards is None else [_wildcard(wildcards, "strategy")]

    def _seeds(self, wildcards=None) -> list[str]:
        if "seeds" in self.by:
            return [str(s) for s in self.seeds]
        return ["{seed}"] if wildcards is None else [_wildcard(wildcards, "seed")]

    def run_patterns(self) -> list[str]:
        """The run directories of one job (relative to the results directory), as patterns."""
        return [paths.FINETUNE_RUN.format(task="{task}", strategy=s, size="{size}", seed=seed) for s in self._strategies() for seed in self._seeds()]

    def job_name(self) -> str:
        """A pattern naming one job (its log, benchmark and pack directory)."""
        name = f"{self.kind}{'@' + self.backbone if self.backbone else ''}_{{task}}"
        if "strategies" not in self.by:
            name += "_{strategy}"
        name += "_n{size}"
        if "seeds" not in self.by:
            name += "_seed{seed}"
        return name

    def wildcard_constraints(self) -> dict[str, str]:
        constraints = {"task": _alternatives(self.tasks), "size": _alternatives(self.sizes)}
        if "strategies" not in self.by:
            constraints["strategy"] = _alternatives(self.strategies)
        if "seeds" not in self.by:
            constraints["seed"] = _alternatives(self.seeds)
        return constraints

    def cells(self, wildcards) -> list[tuple[str, int, int]]:
        """(strategy, size, seed) of every cell of the job with these wildcards."""
        size = int(_wildcard(wildcards, "size"))
        return [(s, size, int(seed)) for s in self._strategies(wildcards) for seed in self._seeds(wildcards)]

    def all_cells(self) -> set[tuple[str, str, int, int]]:
        """(task, strategy, size, seed) of every cell of the family."""
        return {(t, s, n, seed) for t in self.tasks for s in self.strategies for n in self.sizes for seed in self.seeds}


def pack_families(finetune: Mapping) -> list[PackFamily]:
    """The pack families of a validated ``finetune`` config section; none without packing.

    The grid's backbone strategies, its ParT baseline and the ablations (their strategies plus
    ``fixed`` and ``finetune``, as :func:`finetune_runs` lists them) are separate families. A
    cell both the grid and the ablations hold is packed with the grid's (the ablation family
    leaves its strategy out at that size); one a family would only partly cover keeps its own job.
    """
    pack = finetune.get("pack") or {}
    by = tuple(pack.get("by", ()))
    unknown = sorted(set(by) - set(PACK_DIMENSIONS))
    if unknown:
        raise TaufmError(f"finetune.pack.by: unknown dimension(s) {', '.join(unknown)} (known: {', '.join(PACK_DIMENSIONS)})")
    if not by:
        return []
    max_size = int(pack.get("max_size", 10000))
    grid, ablations = finetune["grid"], finetune["ablations"]
    families = []
    sizes = tuple(n for n in dict.fromkeys(grid["sizes"]) if n <= max_size)
    tasks, seeds = tuple(dict.fromkeys(grid["tasks"])), tuple(dict.fromkeys(grid["seeds"]))
    unfreeze = int(finetune.get("unfreeze_epoch", 0))
    backbone_of = {s: parse_strategy(s, unfreeze).backbone for s in dict.fromkeys(grid["strategies"])}
    backbone = tuple(s for s, b in backbone_of.items() if b is not None)
    part = tuple(s for s, b in backbone_of.items() if b is None)
    if sizes and tasks and seeds:
        if backbone and "strategies" in by:
            # A job reads one backbone: the strategies of each backbone pack apart.
            for name in dict.fromkeys(backbone_of[s] for s in backbone):
                strategies = tuple(s for s in backbone if backbone_of[s] == name)
                families.append(PackFamily("grid", tasks, strategies, sizes, seeds, by, backbone=name if name != DEFAULT_BACKBONE else None))
        elif backbone:
            families.append(PackFamily("grid", tasks, backbone, sizes, seeds, by))
        if part:
            families.append(PackFamily("part", tasks, part, sizes, seeds, by))
    size = int(ablations["size"])
    ablation_tasks, ablation_seeds = tuple(dict.fromkeys(ablations["tasks"])), tuple(dict.fromkeys(ablations["seeds"]))
    strategies = [f"finetune-unfreeze{k}" for k in ablations["unfreeze_epochs"]] + [f"finetune-blocks{b}" for b in ablations["n_blocks"]] + ["fixed", "finetune"]
    if size in sizes and set(ablation_tasks) & set(tasks) and set(ablation_seeds) & set(seeds):
        strategies = [s for s in strategies if s not in backbone]  # the grid's family packs these at this size
    strategies = tuple(dict.fromkeys(strategies))
    if size <= max_size and ablation_tasks and ablation_seeds and strategies:
        families.append(PackFamily("ablations", ablation_tasks, strategies, (size,), ablation_seeds, by))
    families = [f for f in families if f.cells_per_job > 1]  # a pack of one is the cell's own job
    _check_disjoint(families)
    return families


def _check_disjoint(families: Sequence[PackFamily]) -> None:
    seen: dict[tuple, str] = {}
    for family in families:
        for cell in family.all_cells():
            if cell in seen:
                raise TaufmError(f"finetune.pack: cell {'/'.join(map(str, cell))} would be packed by both {seen[cell]} and {family.rule}")
            seen[cell] = family.rule


def pack_cell_arguments(family: PackFamily, wildcards, results_dir: str | Path) -> list[str]:
    """``--cell STRATEGY SIZE SEED RUN_DIR`` for every cell of one job of ``family``."""
    words = []
    for strategy, size, seed in family.cells(wildcards):
        run_dir = Path(results_dir) / paths.FINETUNE_RUN.format(task=_wildcard(wildcards, "task"), strategy=strategy, size=size, seed=seed)
        words += ["--cell", strategy, str(size), str(seed), str(run_dir)]
    return words


def pack_directory(family: PackFamily, wildcards, results_dir: str | Path) -> str:
    """The directory of one pack job (its provenance record)."""
    names = {name: _wildcard(wildcards, name) for name in ("task", "strategy", "size", "seed") if f"{{{name}}}" in family.job_name()}
    return str(Path(results_dir) / FINETUNE_PACK_DIR.format(job=family.job_name().format(**names)))


def cell_settings(payload: Mapping) -> dict:
    """The settings payload of a cell: the workflow's packing left out, so that a cell's job
    params (and its run directory) do not change when the packing does."""
    return {k: v for k, v in payload.items() if k != "pack"}
