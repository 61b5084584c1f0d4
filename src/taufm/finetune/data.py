"""Jets for one task: read the columns a task needs from the shards, apply its cuts, subsample.

Rows come back in a fixed order (samples in the order given, each sample's shards in the order
given, rows in file order), so a training subset drawn by index is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from taufm.data import read_shards
from taufm.errors import TaufmError
from taufm.finetune.tasks import TaskSettings, check_task, require_column, targets

JET_COLUMNS = (
    "sample",
    "event",
    "jet_index",
    "split",
    "label",
    "decay_mode",
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_energy",
    "gen_tau_vis_pt",
    "gen_tau_charge",
)


def select_jets(task: str, settings: TaskSettings, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of the jets the task uses (SPEC §5 cuts).

    jet_pt >= ``settings.min_jet_pt``; tau jets only (label 1) when ``settings.signal_only``;
    for pt_regression also a finite target: generator visible tau pT and jet pT finite and > 0.
    """
    check_task(task)
    keep = require_column(columns, "jet_pt") >= settings.min_jet_pt
    if settings.signal_only:
        keep &= require_column(columns, "label") == 1
    if task == "pt_regression":
        gen_pt = require_column(columns, "gen_tau_vis_pt").astype(np.float64)
        jet_pt = require_column(columns, "jet_pt").astype(np.float64)
        keep &= np.isfinite(gen_pt) & (gen_pt > 0) & np.isfinite(jet_pt) & (jet_pt > 0)
    return keep


def load_task_data(
    task: str,
    settings: TaskSettings,
    shards: Mapping[str, Sequence[str | Path]],
    samples: Sequence[str],
    split: str,
    extra_columns: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The selected jets of ``split`` in ``samples``: :data:`JET_COLUMNS`, ``extra_columns`` and ``target``.

    ``shards`` maps each sample to its shard paths (token shards for the backbone, ingested
    shards for the ParT baseline). Rows are concatenated in (sample, shard, row) order. A sample
    missing from ``shards``, a shard whose ``sample`` column disagrees, or no jet passing the
    cuts is a :class:`TaufmError`.
    """
    check_task(task)
    if not samples:
        raise TaufmError(f"{task}: no samples given")
    columns = list(dict.fromkeys([*JET_COLUMNS, *extra_columns]))
    parts: list[dict[str, np.ndarray]] = []
    for sample in samples:
        if sample not in shards:
            raise TaufmError(f"{task}: no shards for sample {sample!r} (samples with shards: {', '.join(sorted(shards)) or 'none'})")
        paths = list(shards[sample])
        if not paths:
            raise TaufmError(f"{task}: the shard list of sample {sample!r} is empty")
        table = read_shards(paths, columns, split)
        foreign = np.unique(table["sample"][table["sample"] != sample])
        if foreign.size:
            raise TaufmError(f"{task}: shards given for sample {sample!r} hold jets of {', '.join(map(str, foreign))} ({paths[0]} ...)")
        keep = select_jets(task, settings, table)
        parts.append({c: v[keep] for c, v in table.items()})
    data = {c: np.concatenate([p[c] for p in parts]) for c in columns}
    if len(data["jet_pt"]) == 0:
        raise TaufmError(f"{task}: no {split} jets of {', '.join(samples)} pass the cuts (min_jet_pt {settings.min_jet_pt} GeV, signal_only {settings.signal_only})")
    data["target"] = targets(task, data)
    return data


def nested_subset(n_available: int, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` of ``n_available`` jets: the first ``size`` of a seeded permutation.

    For one seed (and one ``n_available``) the subset of a smaller size is a prefix, hence a
    subset, of that of a larger one, so the training-size grid is nested.
    """
    if size < 1:
        raise TaufmError(f"training size must be at least 1, got {size}")
    if size > n_available:
        raise TaufmError(f"training size {size} is larger than the {n_available} jets available")
    return np.random.default_rng(seed).permutation(n_available)[:size].astype(np.int64)


def validation_subset(n_available: int, n_jets: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of ``n_jets`` of ``n_available`` validation jets, drawn with ``seed``; None
    when ``n_jets`` is None or covers them all (the whole validation set is the subset).

    Sorted, so the subset keeps the file order of the validation set. The same for every cell of
    a task (the seed is a setting, not the cell's), so all cells choose their epoch on the same
    jets.
    """
    if n_jets is None or n_jets >= n_available:
        return None
    if n_jets < 1:
        raise TaufmError(f"finetune.val_subset_jets must be at least 1, got {n_jets}")
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:n_jets]).astype(np.int64)
