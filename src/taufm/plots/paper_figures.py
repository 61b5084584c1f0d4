"""The paper's result figures (Fig. 4, 5, 7) and its headline numbers beside ours (SPEC §8).

- :func:`fig4_validation_loss`: best validation loss vs training size, one panel per task, one
  line per strategy (scratch, fixed, finetune, and the ParT baseline when present).
- :func:`fig5_physics`: physics metrics at one training size, drawn from each run's
  ``metrics_details.json`` (the metrics stage): (a) misID rate vs tau efficiency, (b) pT response
  distributions, (c) decay-mode one-vs-rest AUC. The runs are those the workflow lists
  (:func:`runs_from_details`), never a glob of the results folder.
- :func:`fig7_ablations`: validation loss normalised to its minimum vs the unfreeze epoch and vs
  the number of pretrained GPT blocks used, one line per task.
- :func:`fig8_backbones` (beyond the paper): best validation loss and each task's physics
  headline vs training size, one line per pretrained backbone and input set of the fixed and
  fine-tuned strategies, with training from scratch and the ParT as references.
- :func:`summary_table`: the paper's headline numbers at 1e4 training jets beside ours, with
  bootstrap intervals and the differences between strategies (Markdown and CSV).

No metric is computed here: every metric has one implementation, in :mod:`taufm.evaluate.metrics`.

Figures 4, 7 and 8 and the table read a tidy metrics table: a sequence of dict rows with ``task``,
``strategy``, ``size``, ``seed`` and ``test_sample`` plus the run's numbers (``best_val_loss``,
``auc``, ``misid_at_80``, ``response``, ...). Rows whose ``seed`` is not an integer are summaries
over seeds and are ignored: means and spreads are computed here. ``best_val_loss`` is one number
per run, repeated on the run's row of every test sample; it is taken once per
(task, strategy, size, seed).

Spread over seeds: "std" is the population standard deviation of the seeds run (``ddof=0``,
:data:`STD_DDOF`, as in :mod:`taufm.evaluate.metrics`), given only for two or more seeds (``None``
and no band for one seed); Fig. 5 draws min-max bands.
Everything is read and checked before anything is drawn, so bad input (a missing key, a run
directory without ``metrics_details.json``, a missing curve) raises :class:`TaufmError` and
leaves no file behind. Missing data (a task or strategy absent, too few jets) is shown as a
labelled "no data" panel or left out of a panel, never an exception. Each function returns the
numbers it drew as a JSON-friendly dict (``None`` where a number is undefined).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from taufm.errors import TaufmError
from taufm.evaluate.metrics import (
    BACKGROUND_SAMPLE,
    COMPARISONS,
    DEFAULT_EFFICIENCY,
    DETAILS_FILE,
    EFFICIENCY_GRID,
    RESPONSE_EDGES,
    STD_DDOF,
)
from taufm.finetune.strategies import DEFAULT_BACKBONE, parse_strategy
from taufm.io import atomic_output
from taufm.physics.tau import DECAY_MODE_NAMES
from taufm.plots.style import STRATEGY_COLORS, STRATEGY_LABELS, new_figure, no_data_panel, save_figure, taufm_style

log = logging.getLogger(__name__)

# The task names of taufm.finetune.tasks.TASK_NAMES, repeated here so that drawing a figure does
# not import torch.
TASKS = ("tau_id", "pt_regression", "decay_mode")
# Strategies drawn as lines in Fig. 4 and 5, in drawing order; ablation strategies are left out.
BASE_STRATEGIES = ("scratch", "fixed", "finetune", "part")

TASK_TITLES = {"tau_id": "τ identification", "pt_regression": "τ $p_T$ regression", "decay_mode": "τ decay mode"}
LOSS_NAMES = {"tau_id": "focal loss", "pt_regression": "Huber loss", "decay_mode": "cross entropy"}
# Fig. 7 draws one line per task: its own colours and markers (not the strategy colours).
TASK_COLORS = {"tau_id": "#3f90da", "pt_regression": "#bd1f01", "decay_mode": "#832db6"}
TASK_MARKERS = {"tau_id": "o", "pt_regression": "s", "decay_mode": "^"}
DECAY_MODE_LABELS = dict(
    zip(
        DECAY_MODE_NAMES,
        (r"1h 0$\pi^0$", r"1h 1$\pi^0$", r"1h $\geq$2$\pi^0$", r"3h 0$\pi^0$", r"3h $\geq$1$\pi^0$", "rare"),
        strict=True,
    )
)

SIGNAL_SAMPLE = "Z_Ztautau"
# Fig. 5 draws the curves the metrics stage stored (taufm.evaluate.metrics): its grid of tau
# efficiencies, working point and response histogram.
WORKING_POINT = DEFAULT_EFFICIENCY
RESPONSE_RANGE = (float(RESPONSE_EDGES[0]), float(RESPONSE_EDGES[-1]))
RESPONSE_BINS = len(RESPONSE_EDGES) - 1

_UNFREEZE = re.compile(r"^finetune-unfreeze(?P<epoch>\d+|never)$")
_BLOCKS = re.compile(r"^finetune-blocks(?P<blocks>\d+)$")
NEVER = "never"

PAPER_SIZE = 10_000


@dataclass(frozen=True)
class Headline:
    """One row of the summary table: a metric of the metrics table, with the paper's value if it has one."""

    metric: str
    task: str
    key: str
    definition: str
    paper_scratch: float | None
    paper_finetune: float | None


# SPEC §8: the paper's values at 1e4 training jets, scratch -> fine-tune. The paper's resolution is
# (q75 - q25) / q50 of pred / true pT; the raw IQR and the AUCs are ours only.
HEADLINES = (
    Headline(
        "misID rate at 80% τ efficiency",
        "tau_id",
        "misid_at_80",
        "fraction of qq jets passing the score cut that keeps 80% of the τ jets",
        0.039,
        0.031,
    ),
    Headline("pT response", "pt_regression", "response", "median of pred / gen visible τ pT", 1.082, 1.027),
    Headline("pT resolution", "pt_regression", "resolution_iqr_over_median", "(q75 - q25) / q50 of pred / gen visible τ pT", 0.143, 0.068),
    Headline("pT resolution (IQR)", "pt_regression", "resolution_iqr", "q75 - q25 of pred / gen visible τ pT", None, None),
    Headline("τ ID AUC", "tau_id", "auc", "ROC AUC of the τ score", None, None),
    Headline(
        "decay-mode AUC", "decay_mode", "auc_weighted", "one-vs-rest ROC AUC, mean weighted by class frequency", None, None
    ),
)
TABLE_STRATEGIES = ("scratch", "finetune", "part")

# --- metrics-table rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One per-run row of the metrics table (integer seed), with its position for error messages."""

    index: int
    task: str
    strategy: str
    size: int
    seed: int
    data: Mapping

    def describe(self) -> str:
        return f"{self.task}/{self.strategy} n={self.size} seed={self.seed}"


RunKey = tuple[str, str, int, int]  # (task, strategy, size, seed)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _run_rows(rows: Iterable[Mapping], what: str) -> list[_Row]:
    """The per-run rows of ``rows`` (summary rows, whose seed is not an integer, left out), checked."""
    if isinstance(rows, (Mapping, str, bytes)):
        raise TaufmError(f"{what}: the metrics table must be a sequence of rows (dicts), got {type(rows).__name__}")
    result = []
    n_rows = 0
    for i, row in enumerate(rows):
        n_rows += 1
        if not isinstance(row, Mapping):
            raise TaufmError(f"{what}: metrics row {i} is not a mapping but {type(row).__name__}")
        if "seed" not in row:
            raise TaufmError(f"{what}: metrics row {i} has no key 'seed'")
        if not _is_int(row["seed"]):
            continue  # a summary over seeds
        for key in ("task", "strategy", "size"):
            if key not in row:
                raise TaufmError(f"{what}: metrics row {i} (seed {row['seed']}) has no key {key!r}")
        task, strategy, size = row["task"], row["strategy"], row["size"]
        if task not in TASKS:
            raise TaufmError(f"{what}: metrics row {i} has unknown task {task!r}; known: {', '.join(TASKS)}")
        if not isinstance(strategy, str) or not strategy:
            raise TaufmError(f"{what}: metrics row {i} has strategy {strategy!r}, not a name")
        if not _is_int(size) or size <= 0:
            raise TaufmError(f"{what}: metrics row {i} has size {size!r}, not a positive integer")
        result.append(_Row(i, task, strategy, int(size), int(row["seed"]), row))
    if n_rows and not result:  # e.g. a CSV read back as strings: nothing would be drawn
        raise TaufmError(f"{what}: no per-run rows: the seed is not an integer in any of the {n_rows} metrics rows")
    return result


def _value(row: _Row, key: str, what: str) -> float:
    """``row[key]`` as a float (``None`` is NaN); a missing key or a non-number is an error."""
    if key not in row.data:
        raise TaufmError(f"{what}: metrics row {row.index} ({row.describe()}) has no key {key!r}")
    value = row.data[key]
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TaufmError(f"{what}: metrics row {row.index} ({row.describe()}): {key} = {value!r} is not a number")
    return float(value)


def _run_values(rows: Iterable[_Row], key: str, what: str) -> dict[RunKey, float]:
    """``key`` once per run: rows of one run (one per test sample) must agree on it."""
    values: dict[RunKey, float] = {}
    for row in rows:
        value = _value(row, key, what)
        run = (row.task, row.strategy, row.size, row.seed)
        if run in values and not _same(values[run], value):
            raise TaufmError(
                f"{what}: {key} of run {row.describe()} differs between its rows ({values[run]!r} and {value!r});"
                " it is one number per run"
            )
        values.setdefault(run, value)
    return values


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _stats(values: Iterable[float]) -> dict:
    """Mean, std (:data:`STD_DDOF`; ``None`` for one value), min, max and count of the finite ``values``."""
    all_values = [float(v) for v in values]
    finite = np.array([v for v in all_values if math.isfinite(v)], dtype=np.float64)
    n = len(finite)
    if n == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n_seeds": 0, "values": all_values}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=STD_DDOF)) if n > 1 else None,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n_seeds": n,
        "values": all_values,
    }


def _size_label(size: int) -> str:
    """``10⁴``-style mathtext for powers of ten, else the number with thousands separators."""
    exponent = round(math.log10(size)) if size > 0 else 0
    if size >= 10 and 10**exponent == size:
        return f"$10^{{{exponent}}}$"
    return f"{size:,}"


# --- Fig. 4 ------------------------------------------------------------------------------------


def fig4_validation_loss(rows: Iterable[Mapping], output_stem: str | os.PathLike[str]) -> dict:
    """Best validation loss vs training size, per task and strategy, mean ± std over seeds.

    Draws ``<output_stem>.png`` / ``.pdf``. Only the strategies of :data:`BASE_STRATEGIES` are
    drawn (ablations are left out). Returns ``{"std_ddof", "tasks": {task: {strategy: {"size",
    "mean", "std", "n_seeds"}}}}`` with one list entry per training size.
    """
    what = "Fig. 4"
    runs = [r for r in _run_rows(rows, what) if r.strategy in BASE_STRATEGIES]
    losses = _run_values(runs, "best_val_loss", what)
    curves = {task: _curves(losses, task) for task in TASKS}

    n_seeds = sorted({n for task in curves.values() for c in task.values() for n in c["n_seeds"]})
    with taufm_style():
        fig, axes = new_figure(1, len(TASKS))
        for ax, task in zip(axes[0], TASKS, strict=True):
            if not curves[task]:
                no_data_panel(ax, TASK_TITLES[task], "no runs of this task")
                continue
            for strategy, curve in curves[task].items():
                _line_with_band(ax, curve, color=STRATEGY_COLORS[strategy], label=STRATEGY_LABELS[strategy])
            ax.set_xscale("log")
            ax.set(
                title=TASK_TITLES[task],
                xlabel="Training jets",
                ylabel=f"Best validation loss ({LOSS_NAMES[task]})",
            )
            _pad_y(ax)
        _figure_legend(fig, axes)
        seeds = "/".join(map(str, n_seeds)) if n_seeds else "0"
        plural = "" if n_seeds == [1] else "s"
        fig.suptitle(f"Best validation loss vs training size: mean ± std over seeds ({seeds} seed{plural} per point)")
        save_figure(fig, output_stem)
    summary = {"std_ddof": STD_DDOF, "tasks": curves}
    log.info("Fig. 4: %s", summary)
    return summary


def _curves(by_run: Mapping[RunKey, float], task: str, strategies: Sequence[str] = BASE_STRATEGIES) -> dict[str, dict]:
    """Per strategy of ``strategies`` (in that order) with runs of ``task`` in ``by_run`` (one
    number per run): the sizes with at least one finite number, the mean, std and seed count over
    seeds at each."""
    result = {}
    for strategy in strategies:
        by_size: dict[int, list[float]] = defaultdict(list)
        for (t, s, size, _seed), value in sorted(by_run.items()):
            if t == task and s == strategy:
                by_size[size].append(value)
        points = [(size, _stats(values)) for size, values in sorted(by_size.items())]
        points = [(size, st) for size, st in points if st["mean"] is not None]
        if points:
            result[strategy] = {
                "size": [size for size, _ in points],
                "mean": [st["mean"] for _, st in points],
                "std": [st["std"] for _, st in points],
                "n_seeds": [st["n_seeds"] for _, st in points],
            }
    return result


def _line_with_band(ax: Axes, curve: Mapping, *, color: str, label: str, linestyle: str = "-", marker: str = "o") -> None:
    """Mean as a line with markers, mean ± std as a band (zero width where the std is undefined: one seed)."""
    x = np.asarray(curve["size"], dtype=np.float64)
    mean = np.asarray(curve["mean"], dtype=np.float64)
    std = np.array([np.nan if s is None else s for s in curve["std"]], dtype=np.float64)
    ax.plot(x, mean, color=color, marker=marker, markersize=6, linewidth=1.8, linestyle=linestyle, label=label)
    has_std = np.isfinite(std)
    if np.any(has_std):
        lo, hi = np.where(has_std, mean - std, mean), np.where(has_std, mean + std, mean)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)


def _pad_y(ax: Axes, top: float = 0.08, bottom: float = 0.05) -> None:
    lo, hi = ax.get_ylim()
    span = hi - lo
    ax.set_ylim(lo - bottom * span, hi + top * span)


def _figure_legend(fig: Figure, axes: np.ndarray, max_columns: int | None = None) -> None:
    """One legend for the whole figure, below the panels, one entry per label (in rows of at
    most ``max_columns`` entries; one row if None)."""
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        columns = len(handles) if max_columns is None else min(len(handles), max_columns)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=columns, frameon=False)


# --- Fig. 5 ------------------------------------------------------------------------------------

def runs_from_details(paths: Iterable[str | os.PathLike[str]], size: int) -> dict[str, dict[str, list[Path]]]:
    """Fig. 5's ``runs`` from the workflow's list of ``metrics_details.json`` files: task ->
    strategy -> the run directories at ``size``. Only the listed runs are drawn, never whatever
    else lies in the results folder (e.g. runs of a seed dropped from the config)."""
    runs: dict[str, dict[str, list[Path]]] = {}
    for path in map(Path, paths):
        run = _read_details(path)["run"]
        if run["size"] == size:
            runs.setdefault(str(run["task"]), {}).setdefault(str(run["strategy"]), []).append(path.parent)
    return runs


def fig5_physics(
    runs: Mapping[str, Mapping[str, Sequence[str | os.PathLike[str]]]],
    output_stem: str | os.PathLike[str],
    size: int,
    *,
    signal_sample: str = SIGNAL_SAMPLE,
    background_sample: str = BACKGROUND_SAMPLE,
) -> dict:
    """Physics metrics at one training size, per strategy, mean and min-max spread over seeds.

    ``runs`` maps task -> strategy -> the run directories (one per seed) of that strategy at
    ``size`` (:func:`runs_from_details`). Everything drawn is read from each run's
    ``metrics_details.json`` (the metrics stage, :func:`taufm.evaluate.metrics.evaluate_run`):
    nothing is recomputed here. Panels: (a) misID rate (``background_sample`` jets) vs tau
    efficiency (``signal_sample`` tau jets), mean curve with a min-max band; (b) pT response
    pred_pt / gen_tau_vis_pt of the ``signal_sample`` tau jets, mean of the per-seed normalised
    histograms with a min-max band, median and IQR (means over seeds) in the legend; (c)
    one-vs-rest AUC per decay mode on the ``signal_sample`` tau jets, grouped bars (mean) with
    min-max error bars. Strategies other than :data:`BASE_STRATEGIES` are left out, and so are
    runs whose numbers are undefined (no such jets, a diverged model), with a warning.
    """
    what = "Fig. 5"
    if not _is_int(size) or size <= 0:
        raise TaufmError(f"{what}: size must be a positive integer, got {size!r}")
    if not isinstance(runs, Mapping):
        raise TaufmError(f"{what}: runs must map task -> strategy -> run directories, got {type(runs).__name__}")
    unknown = sorted(set(runs) - set(TASKS), key=str)
    if unknown:
        raise TaufmError(f"{what}: unknown task(s) {', '.join(map(repr, unknown))} in runs; known: {', '.join(TASKS)}")

    # Read and check every file first: an error must leave no figure behind.
    details: dict[str, dict[str, list[tuple[Path, dict]]]] = {}
    for task in TASKS:
        by_strategy = runs.get(task) or {}
        if not isinstance(by_strategy, Mapping):
            raise TaufmError(f"{what}: runs[{task!r}] must map strategy -> run directories")
        details[task] = {}
        for strategy in BASE_STRATEGIES:
            directories = _directories(by_strategy.get(strategy) or [])
            if directories:
                details[task][strategy] = [(d, _run_details(d, task)) for d in directories]
        left_out = sorted(set(by_strategy) - set(BASE_STRATEGIES), key=str)
        if left_out:
            log.info("%s: strategies %s of %s are not drawn", what, ", ".join(map(str, left_out)), task)

    compute = {
        "tau_id": lambda r: _tau_id_stats(r, signal_sample, background_sample),
        "pt_regression": lambda r: _response_stats(r, signal_sample),
        "decay_mode": lambda r: _decay_mode_stats(r, signal_sample),
    }
    summary: dict = {"size": size, "signal_sample": signal_sample, "background_sample": background_sample}
    for task in TASKS:  # strategies whose runs have no usable jets are not drawn
        stats = {strategy: compute[task](task_runs) for strategy, task_runs in details[task].items()}
        summary[task] = {strategy: st for strategy, st in stats.items() if st["n_seeds"] > 0}

    with taufm_style():
        fig, axes = new_figure(1, 3, panel_size=(6.5, 5.25))
        _draw_misid(axes[0, 0], summary["tau_id"], details["tau_id"], signal_sample, background_sample)
        _draw_response(axes[0, 1], summary["pt_regression"], details["pt_regression"], signal_sample)
        _draw_decay_mode_auc(axes[0, 2], summary["decay_mode"], details["decay_mode"], signal_sample)
        fig.suptitle(f"Physics performance, {_size_label(size)} training jets: mean and min-max over seeds")
        save_figure(fig, output_stem)
    log.info("Fig. 5: %s", {t: {s: v.get("n_seeds") for s, v in summary[t].items()} for t in TASKS})
    return summary


def _directories(value: object) -> list[Path]:
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]  # type: ignore[union-attr]


def _read_details(path: Path) -> dict:
    """A ``metrics_details.json``, checked for the run keys and the samples."""
    if not path.is_file():
        raise TaufmError(f"{path} does not exist (written by the metrics stage: `taufm metrics --details`)")
    try:
        details = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaufmError(f"cannot read {path}: {err}") from err
    if not isinstance(details, dict) or not isinstance(details.get("run"), dict) or not isinstance(details.get("samples"), dict):
        raise TaufmError(f"{path}: not a run's metrics details (no 'run' or 'samples')")
    missing = [k for k in ("task", "strategy", "size", "seed") if k not in details["run"]]
    if missing:
        raise TaufmError(f"{path}: the run lacks key(s) {', '.join(missing)}")
    if not all(_is_int(details["run"][k]) for k in ("size", "seed")):
        raise TaufmError(f"{path}: the run's size and seed must be integers, got {details['run']['size']!r} and {details['run']['seed']!r}")
    return details


# What Fig. 5 reads of each test sample of a run, per task: its metrics, and its curves.
_FIG5_NEEDS = {
    "tau_id": ((f"misid_at_{round(100 * WORKING_POINT)}",), ("misid",)),
    "pt_regression": (("response", "resolution_iqr", "resolution_iqr_over_median"), ("response",)),
    "decay_mode": (("auc_weighted", *(f"auc_{name}" for name in DECAY_MODE_NAMES)), ()),
}


def _run_details(run_dir: Path, task: str) -> dict:
    """The test samples of ``<run_dir>/metrics_details.json``, checked to be of ``task`` and to
    hold what Fig. 5 draws."""
    path = run_dir / DETAILS_FILE
    if not run_dir.is_dir():
        raise TaufmError(f"run directory {run_dir} does not exist")
    details = _read_details(path)
    if details["run"]["task"] != task:
        raise TaufmError(f"{path}: a {details['run']['task']} run, listed as {task}")
    metrics, curves = _FIG5_NEEDS[task]
    for sample, values in details["samples"].items():
        lacking = [k for k in metrics if k not in values.get("metrics", {})]
        lacking += [f"curves.{k}" for k in curves if k not in values.get("curves", {}) and not (task == "tau_id" and sample == BACKGROUND_SAMPLE)]
        if lacking:
            raise TaufmError(f"{path}: sample {sample} has no {', '.join(lacking)}")
    return details["samples"]


def _number_or_nan(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _tau_id_stats(runs: Sequence[tuple[Path, dict]], signal_sample: str, background_sample: str) -> dict:
    curves, at_wp, counts, used = [], [], [], []
    key = f"misid_at_{round(100 * WORKING_POINT)}"
    for run_dir, samples in runs:
        curve = samples.get(signal_sample, {}).get("curves", {}).get("misid")
        if curve is None or not curve["n_signal"] or not curve["n_background"]:
            log.warning("Fig. 5a: %s has no %s tau jets or no %s jets; left out", run_dir, signal_sample, background_sample)
            continue
        misid = np.array([_number_or_nan(v) for v in curve["misid"]], dtype=np.float64)
        if not np.all(np.isfinite(misid)):
            log.warning("Fig. 5a: %s has no finite misID curve (non-finite scores?); left out", run_dir)
            continue
        if not np.allclose(curve["efficiency"], EFFICIENCY_GRID):
            raise TaufmError(f"{run_dir / DETAILS_FILE}: its misID curve is on another efficiency grid")
        curves.append(misid)
        at_wp.append(_number_or_nan(samples[signal_sample]["metrics"][key]))
        counts.append((int(curve["n_signal"]), int(curve["n_background"])))
        used.append(str(run_dir))
    if not curves:
        return {"n_seeds": 0}
    stack = np.vstack(curves)
    return {
        "n_seeds": len(curves),
        "runs": used,
        "n_signal": [c[0] for c in counts],
        "n_background": [c[1] for c in counts],
        "efficiency": EFFICIENCY_GRID.tolist(),
        "misid_mean": stack.mean(axis=0).tolist(),
        "misid_min": stack.min(axis=0).tolist(),
        "misid_max": stack.max(axis=0).tolist(),
        "misid_at_80": _stats(at_wp),
    }


def _response_stats(runs: Sequence[tuple[Path, dict]], signal_sample: str) -> dict:
    fractions, medians, iqrs, ratios_iqr, outside, used = [], [], [], [], [], []
    for run_dir, samples in runs:
        sample = samples.get(signal_sample)
        histogram = None if sample is None else sample["curves"]["response"]
        if histogram is None or not histogram["n"]:
            log.warning("Fig. 5b: %s has no %s jets with a finite response; left out", run_dir, signal_sample)
            continue
        if not np.allclose(histogram["bin_edges"], RESPONSE_EDGES):
            raise TaufmError(f"{run_dir / DETAILS_FILE}: its response histogram has other bin edges")
        metrics = sample["metrics"]
        medians.append(_number_or_nan(metrics["response"]))
        iqrs.append(_number_or_nan(metrics["resolution_iqr"]))
        ratios_iqr.append(_number_or_nan(metrics["resolution_iqr_over_median"]))
        fractions.append(np.asarray(histogram["fractions"], dtype=np.float64))
        outside.append(_number_or_nan(histogram["fraction_outside"]))
        used.append(str(run_dir))
    if not fractions:
        return {"n_seeds": 0}
    stack = np.vstack(fractions)
    return {
        "n_seeds": len(fractions),
        "runs": used,
        "bin_edges": RESPONSE_EDGES.tolist(),
        "fraction_mean": stack.mean(axis=0).tolist(),
        "fraction_min": stack.min(axis=0).tolist(),
        "fraction_max": stack.max(axis=0).tolist(),
        "fraction_outside_range": _stats(outside),
        "median": _stats(medians),
        "iqr": _stats(iqrs),
        "iqr_over_median": _stats(ratios_iqr),
    }


def _decay_mode_stats(runs: Sequence[tuple[Path, dict]], signal_sample: str) -> dict:
    per_class: dict[str, list[float]] = {name: [] for name in DECAY_MODE_NAMES}
    weighted, used = [], []
    for run_dir, samples in runs:
        sample = samples.get(signal_sample)
        metrics = {} if sample is None else sample["metrics"]
        aucs = [_number_or_nan(metrics.get(f"auc_{name}")) for name in DECAY_MODE_NAMES]
        if not any(math.isfinite(a) for a in aucs):
            log.warning("Fig. 5c: %s has no %s tau jets with a defined AUC; left out", run_dir, signal_sample)
            continue
        for name, auc in zip(DECAY_MODE_NAMES, aucs, strict=True):
            per_class[name].append(auc)
        weighted.append(_number_or_nan(metrics["auc_weighted"]))
        used.append(str(run_dir))
    if not used:
        return {"n_seeds": 0}
    return {
        "n_seeds": len(used),
        "runs": used,
        "auc": {name: _stats(values) for name, values in per_class.items()},
        "auc_weighted": _stats(weighted),
    }


def _seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _draw_misid(ax: Axes, stats: Mapping[str, dict], runs: Mapping, signal_sample: str, background_sample: str) -> None:
    title = "(a) τ identification"
    if not stats:
        message = "no τ ID runs" if not runs else f"no runs with {signal_sample} τ jets\nand {background_sample} jets"
        no_data_panel(ax, title, message)
        return
    positive = []
    for strategy, st in stats.items():
        color = STRATEGY_COLORS[strategy]
        eff = np.asarray(st["efficiency"])
        mean, lo, hi = (np.asarray(st[k]) for k in ("misid_mean", "misid_min", "misid_max"))
        wp = st["misid_at_80"]["mean"]
        at_wp = f"{wp:.3g}" if wp > 0 else f"0 (of {min(st['n_background'])} jets)"
        label = f"{STRATEGY_LABELS[strategy]} ({_seeds_text(st['n_seeds'])})\nmisID at 80%: {at_wp}"
        ax.plot(eff, np.where(mean > 0, mean, np.nan), color=color, linewidth=1.8, label=label)
        if st["n_seeds"] > 1:
            ax.fill_between(eff, np.where(lo > 0, lo, np.nan), np.where(hi > 0, hi, np.nan), color=color, alpha=0.2, linewidth=0)
        positive.extend(v for v in (*lo, *mean) if v > 0)
    ax.axvline(WORKING_POINT, color="0.4", linestyle=":", linewidth=1.2)
    ax.set_yscale("log")
    if positive:
        ax.set_ylim(min(positive) / 2, min(2.0, max(positive) * 30))
    else:
        ax.set_ylim(1e-4, 2.0)
    ax.set_xlim(EFFICIENCY_GRID[0], 1.0)
    ax.set(title=title, xlabel=f"τ efficiency ({signal_sample} τ jets)", ylabel=f"MisID rate ({background_sample} jets)")
    ax.legend(loc="upper left", fontsize="x-small")


def _draw_response(ax: Axes, stats: Mapping[str, dict], runs: Mapping, signal_sample: str) -> None:
    title = "(b) τ $p_T$ regression"
    if not stats:
        no_data_panel(ax, title, "no pT regression runs" if not runs else f"no {signal_sample} τ jets\nwith a finite response")
        return
    edges = RESPONSE_EDGES
    for strategy, st in stats.items():
        color = STRATEGY_COLORS[strategy]
        mean, lo, hi = (np.asarray(st[k]) for k in ("fraction_mean", "fraction_min", "fraction_max"))
        label = (
            f"{STRATEGY_LABELS[strategy]} ({_seeds_text(st['n_seeds'])})\n"
            f"median {st['median']['mean']:.3f}, IQR {st['iqr']['mean']:.3f}"
        )
        if st["n_seeds"] > 1:
            ax.stairs(hi, edges, baseline=lo, fill=True, color=color, alpha=0.2, linewidth=0)
        ax.stairs(mean, edges, color=color, linewidth=1.8, label=label)
    ax.axvline(1.0, color="0.4", linestyle=":", linewidth=1.2)
    ax.set_xlim(*RESPONSE_RANGE)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.6)
    width = (RESPONSE_RANGE[1] - RESPONSE_RANGE[0]) / RESPONSE_BINS
    ax.set(
        title=title,
        xlabel=r"Response $p_T^{\mathrm{pred}}$ / $p_T^{\mathrm{vis},\,\tau}$ (generator)",
        ylabel=f"Fraction of τ jets / {width:.2g}",
    )
    ax.legend(loc="upper left", fontsize="x-small", title=f"{signal_sample}, edge bins hold overflow", title_fontsize="x-small")


def _draw_decay_mode_auc(ax: Axes, stats: Mapping[str, dict], runs: Mapping, signal_sample: str) -> None:
    title = "(c) τ decay mode"
    if not stats:
        no_data_panel(ax, title, "no decay-mode runs" if not runs else f"no {signal_sample} τ jets")
        return
    x = np.arange(len(DECAY_MODE_NAMES))
    width = 0.8 / len(stats)
    lowest = []
    for j, (strategy, st) in enumerate(stats.items()):
        mean = np.array([np.nan if st["auc"][n]["mean"] is None else st["auc"][n]["mean"] for n in DECAY_MODE_NAMES])
        lo = np.array([np.nan if st["auc"][n]["min"] is None else st["auc"][n]["min"] for n in DECAY_MODE_NAMES])
        hi = np.array([np.nan if st["auc"][n]["max"] is None else st["auc"][n]["max"] for n in DECAY_MODE_NAMES])
        shown = np.isfinite(mean)
        position = x + (j - (len(stats) - 1) / 2) * width
        weighted = st["auc_weighted"]["mean"]
        label = f"{STRATEGY_LABELS[strategy]} ({_seeds_text(st['n_seeds'])})"
        label += f"\nweighted AUC {weighted:.3f}" if weighted is not None else ""
        ax.bar(position[shown], mean[shown], width=width * 0.92, color=STRATEGY_COLORS[strategy], label=label)
        if st["n_seeds"] > 1 and shown.any():
            yerr = np.vstack([mean[shown] - lo[shown], hi[shown] - mean[shown]])
            ax.errorbar(position[shown], mean[shown], yerr=yerr, fmt="none", ecolor="0.15", capsize=2, linewidth=1)
        lowest.extend(lo[shown])
    bottom = max(0.0, math.floor((min(lowest, default=0.5) - 0.02) * 20) / 20)
    ax.set_ylim(bottom, 1.0 + 0.45 * (1.0 - bottom))
    ax.axhline(1.0, color="0.6", linewidth=0.8)
    step = 0.05 if bottom >= 0.7 else 0.1
    first = math.ceil(bottom / step - 1e-9) * step
    ax.yaxis.set_major_locator(FixedLocator(np.round(np.arange(first, 1.0 + 1e-9, step), 2)))  # no ticks above AUC 1
    ax.set_xticks(x, [DECAY_MODE_LABELS[n] for n in DECAY_MODE_NAMES], rotation=30, ha="right", rotation_mode="anchor")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", which="both", top=False)
    ax.set(title=title, xlabel=f"True decay mode ({signal_sample} τ jets)", ylabel="One-vs-rest ROC AUC")
    ax.legend(loc="upper left", fontsize="x-small", ncols=2)


# --- Fig. 7 ------------------------------------------------------------------------------------


def fig7_ablations(
    rows: Iterable[Mapping],
    output_stem: str | os.PathLike[str],
    size: int,
    *,
    default_unfreeze_epoch: int,
    n_blocks_total: int,
) -> dict:
    """Validation loss / its minimum vs unfreeze epoch (left) and vs pretrained GPT blocks used (right).

    Runs at ``size`` only. Left: ``finetune-unfreeze<K>`` at K, ``finetune`` at
    ``default_unfreeze_epoch``, ``fixed`` and ``finetune-unfreezenever`` at "never" (right end).
    Right: ``finetune-blocks<B>`` at B, ``finetune`` at ``n_blocks_total``. Where an ablation
    strategy and a base strategy give the same point, the ablation's runs are used. Each task's
    line is divided by its lowest mean in that panel (the paper's normalisation: the best point of
    each panel is 1); std scales likewise. Returns ``{"size", "std_ddof", "unfreeze": {...},
    "blocks": {...}}``, per panel ``{"x_labels", "tasks": {task: {"x", "label", "strategy",
    "mean", "std", "n_seeds", "minimum", "normalised_mean", "normalised_std"}}}``.
    """
    what = "Fig. 7"
    if not _is_int(size) or size <= 0:
        raise TaufmError(f"{what}: size must be a positive integer, got {size!r}")
    if not _is_int(default_unfreeze_epoch) or default_unfreeze_epoch < 0:
        raise TaufmError(f"{what}: default_unfreeze_epoch must be a non-negative integer, got {default_unfreeze_epoch!r}")
    if not _is_int(n_blocks_total) or n_blocks_total < 1:
        raise TaufmError(f"{what}: n_blocks_total must be a positive integer, got {n_blocks_total!r}")
    runs = [r for r in _run_rows(rows, what) if r.size == size and _ablation_x(r.strategy, default_unfreeze_epoch, n_blocks_total)]
    losses = _run_values(runs, "best_val_loss", what)

    unfreeze = _ablation_panel(losses, "unfreeze", default_unfreeze_epoch, n_blocks_total)
    blocks = _ablation_panel(losses, "blocks", default_unfreeze_epoch, n_blocks_total)
    with taufm_style():
        fig, axes = new_figure(1, 2, panel_size=(6.5, 5.0))
        _draw_ablation(axes[0, 0], unfreeze, title="Backbone unfreeze epoch", xlabel="Epoch at which the backbone is unfrozen")
        _draw_ablation(axes[0, 1], blocks, title="Pretrained GPT blocks used", xlabel="Number of pretrained GPT blocks")
        fig.suptitle(f"Fine-tuning ablations, {_size_label(size)} training jets: mean ± std over seeds")
        save_figure(fig, output_stem)
    summary = {"size": size, "std_ddof": STD_DDOF, "unfreeze": unfreeze, "blocks": blocks}
    log.info("Fig. 7: %s", summary)
    return summary


def _ablation_x(strategy: str, default_unfreeze_epoch: int, n_blocks_total: int) -> list[tuple[str, int | str, bool]]:
    """Where ``strategy`` is drawn: (panel, x, from an ablation strategy) pairs; empty if nowhere."""
    if strategy == "finetune":
        return [("unfreeze", default_unfreeze_epoch, False), ("blocks", n_blocks_total, False)]
    if strategy == "fixed":
        return [("unfreeze", NEVER, False)]
    if match := _UNFREEZE.match(strategy):
        epoch = match["epoch"]
        return [("unfreeze", NEVER if epoch == NEVER else int(epoch), True)]
    if match := _BLOCKS.match(strategy):
        return [("blocks", int(match["blocks"]), True)] if int(match["blocks"]) >= 1 else []
    return []


def _ablation_panel(losses: Mapping[RunKey, float], panel: str, default_unfreeze_epoch: int, n_blocks_total: int) -> dict:
    # points[task][x] = (strategy, {seed: loss}), ablation strategies preferred over base ones.
    points: dict[str, dict[int | str, tuple[str, dict[int, float]]]] = defaultdict(dict)
    sources: dict[tuple[str, int | str], bool] = {}
    for (task, strategy, _size, seed), value in sorted(losses.items()):
        for p, x, is_ablation in _ablation_x(strategy, default_unfreeze_epoch, n_blocks_total):
            if p != panel:
                continue
            known = sources.get((task, x))
            if known is None or (is_ablation and not known):
                if known is not None:
                    log.info("Fig. 7: %s at %s=%s: using %s, not %s", task, panel, x, strategy, points[task][x][0])
                points[task][x] = (strategy, {})
                sources[(task, x)] = is_ablation
            if points[task][x][0] == strategy:
                points[task][x][1][seed] = value

    numeric = sorted({x for by_x in points.values() for x in by_x if x != NEVER})
    never_position = _never_position(numeric)
    tasks = {}
    for task in TASKS:
        by_x = points.get(task, {})
        entries = []
        for x in sorted(by_x, key=lambda v: never_position if v == NEVER else v):
            strategy, seeds = by_x[x]
            st = _stats(seeds[s] for s in sorted(seeds))
            if st["mean"] is not None:
                entries.append((x, strategy, st))
        if not entries:
            continue
        minimum = min(st["mean"] for _, _, st in entries)
        tasks[task] = {
            "x": [never_position if x == NEVER else x for x, _, _ in entries],
            "label": [_x_label(x) for x, _, _ in entries],
            "strategy": [s for _, s, _ in entries],
            "mean": [st["mean"] for _, _, st in entries],
            "std": [st["std"] for _, _, st in entries],
            "n_seeds": [st["n_seeds"] for _, _, st in entries],
            "minimum": minimum,
            "normalised_mean": [st["mean"] / minimum for _, _, st in entries],
            "normalised_std": [None if st["std"] is None else st["std"] / minimum for _, _, st in entries],
        }
    ticks = {x: label for task in tasks.values() for x, label in zip(task["x"], task["label"], strict=True)}
    return {"panel": panel, "x_ticks": sorted(ticks), "x_labels": [ticks[x] for x in sorted(ticks)], "tasks": tasks}


def _never_position(numeric: Sequence[int]) -> int:
    """x position of "never": one typical step right of the largest unfreeze epoch."""
    if not numeric:
        return 0
    gaps = np.diff(numeric)
    step = int(gaps.min()) if len(gaps) else max(numeric[-1] // 2, 1)
    return int(numeric[-1] + step)


def _x_label(x: int | str) -> str:
    return "never\n(fixed)" if x == NEVER else str(x)


def _draw_ablation(ax: Axes, panel: Mapping, *, title: str, xlabel: str) -> None:
    if not panel["tasks"]:
        no_data_panel(ax, title, "no ablation runs")
        return
    for task, line in panel["tasks"].items():
        color = TASK_COLORS[task]
        x = np.asarray(line["x"], dtype=np.float64)
        mean = np.asarray(line["normalised_mean"], dtype=np.float64)
        std = np.array([np.nan if s is None else s for s in line["normalised_std"]], dtype=np.float64)
        never = np.array(["never" in label for label in line["label"]])
        label = f"{TASK_TITLES[task]} (min {line['minimum']:.3g})"
        style = {"color": color, "marker": TASK_MARKERS[task], "markersize": 7}
        if (~never).any():
            ax.plot(x[~never], mean[~never], linewidth=1.8, label=label, **style)
        if never.any():  # a dotted link to the "never" point: the x axis is not continuous there
            link = np.r_[np.flatnonzero(~never)[-1:], np.flatnonzero(never)]
            ax.plot(x[link], mean[link], color=color, linestyle=":", linewidth=1.5)
            ax.plot(x[never], mean[never], linestyle="none", label=None if (~never).any() else label, **style)
        has_std = np.isfinite(std)
        if has_std.any():
            ax.errorbar(x[has_std], mean[has_std], yerr=std[has_std], fmt="none", ecolor=color, capsize=4, linewidth=1.2)
    ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle="--")
    ax.xaxis.set_major_locator(FixedLocator(panel["x_ticks"]))
    ax.set_xticklabels(panel["x_labels"])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", which="both", top=False)
    ticks = panel["x_ticks"]
    margin = max((ticks[-1] - ticks[0]) * 0.08, 0.5)
    ax.set_xlim(ticks[0] - margin, ticks[-1] + margin)
    _pad_y(ax, top=0.35)
    ax.set(title=title, xlabel=xlabel, ylabel="Validation loss / minimum")
    ax.legend(loc="upper left", fontsize="x-small", title="task (its minimum loss)", title_fontsize="x-small")


# --- Fig. 8 (beyond the paper) -----------------------------------------------------------------

# Fig. 8 draws one line per backbone and input set of these strategy families, and those of
# REFERENCE_FAMILIES beside them; ablations (finetune-unfreeze0, ...) are left out.
BACKBONE_FAMILIES = ("fixed", "finetune")
REFERENCE_FAMILIES = ("scratch", "part")
FIG8_FAMILIES = ("scratch", "fixed", "finetune", "part")  # drawing order
# The bottom row: each task's physics headline (a key of HEADLINES), on the summary table's test sample.
FIG8_METRICS = {"tau_id": "misid_at_80", "pt_regression": "resolution_iqr_over_median", "decay_mode": "auc_weighted"}
LOSS_QUANTITY = "best_val_loss"
# Line style by input set (any other input set dotted), marker by family.
INPUT_LINESTYLES = {"paper": "-", "paper+lifetime": "--"}
INPUT_LABELS = {"paper": "", "paper+lifetime": " + lifetime"}
FAMILY_MARKERS = {"scratch": "v", "fixed": "s", "finetune": "o", "part": "D"}
# The default backbone's lines keep the strategy colours of Fig. 4; every other (family, backbone)
# pair takes the next of these, in sorted order, so its colour does not depend on the rows' order.
BACKBONE_PALETTE = ("#1b9e77", "#a96b59", "#c849a9", "#717581", "#b9ac70", "#1845fb", "#92dadd", "#7f7f00")


@dataclass(frozen=True)
class _BackboneLine:
    """One line of Fig. 8: a strategy with the backbone it started from and its input set."""

    strategy: str
    family: str
    backbone: str | None
    inputs: str
    label: str


def fig8_backbones(rows: Iterable[Mapping], output_stem: str | os.PathLike[str], *, test_sample: str = SIGNAL_SAMPLE) -> dict:
    """Pretrained backbones and input sets compared: each quantity vs training size, mean ± std over seeds.

    Top row: the best validation loss of each task. Bottom row: each task's physics headline
    (:data:`FIG8_METRICS`: misID rate at 80% tau efficiency, pT resolution (q75 - q25) / q50,
    class-weighted decay-mode AUC) on ``test_sample``, the summary table's test sample. One line
    per strategy of the fixed and fine-tuned families (one per backbone and input set: colour by
    family and backbone, solid for the paper's inputs, dashed for paper+lifetime), and the
    scratch and ParT strategies as references. A row's ``backbone`` and ``inputs`` columns say
    what it ran; a table without them (an older taufm) is read off the strategy names.

    Draws ``<output_stem>.png`` / ``.pdf``. Returns ``{quantity: {task: {label: {"strategy",
    "backbone", "inputs", "size", "mean", "std", "n_seeds"}}}}``, quantity ``best_val_loss`` or a
    metric of :data:`FIG8_METRICS`, one list entry per training size.
    """
    what = "Fig. 8"
    rows = rows if isinstance(rows, (Mapping, str, bytes)) else list(rows)  # read twice below
    all_runs = _run_rows(rows, what)
    lines = _backbone_lines(all_runs, what)
    drawn = {line.strategy for line in lines}
    runs = [r for r in all_runs if r.strategy in drawn]
    for r in runs:
        if "test_sample" not in r.data:
            raise TaufmError(f"{what}: metrics row {r.index} ({r.describe()}) has no key 'test_sample'")
    order = [line.strategy for line in lines]
    by_strategy = {line.strategy: line for line in lines}

    def labelled(curves: Mapping[str, dict]) -> dict:
        return {
            by_strategy[s].label: {"strategy": s, "backbone": by_strategy[s].backbone, "inputs": by_strategy[s].inputs, **curve}
            for s, curve in curves.items()
        }

    losses = _run_values(runs, LOSS_QUANTITY, what)
    summary: dict = {LOSS_QUANTITY: {task: labelled(_curves(losses, task, order)) for task in TASKS}}
    for task, key in FIG8_METRICS.items():
        values = _run_values((r for r in runs if r.task == task and r.data["test_sample"] == test_sample), key, what)
        summary[key] = {task: labelled(_curves(values, task, order))}

    styles = _backbone_line_styles(lines)
    headlines = {h.key: h for h in HEADLINES}
    tasks_run = {r.task for r in runs}
    n_seeds = sorted({n for quantity in summary.values() for task in quantity.values() for c in task.values() for n in c["n_seeds"]})
    with taufm_style():
        fig, axes = new_figure(2, len(TASKS))
        for ax, task in zip(axes[0], TASKS, strict=True):
            ylabel = f"Best validation loss ({LOSS_NAMES[task]})"
            _draw_backbone_panel(ax, summary[LOSS_QUANTITY][task], styles, TASK_TITLES[task], ylabel, "no runs of this task")
        for ax, (task, key) in zip(axes[1], FIG8_METRICS.items(), strict=True):
            empty = "no runs of this task" if task not in tasks_run else f"no {test_sample} rows"
            _draw_backbone_panel(ax, summary[key][task], styles, TASK_TITLES[task], f"{headlines[key].metric} ({test_sample})", empty)
        _figure_legend(fig, axes, max_columns=4)
        seeds = "/".join(map(str, n_seeds)) if n_seeds else "0"
        plural = "" if n_seeds == [1] else "s"
        fig.suptitle(f"Backbones and input sets vs training size: mean ± std over seeds ({seeds} seed{plural} per point)")
        save_figure(fig, output_stem)
    log.info("Fig. 8: %s", summary)
    return summary


def _backbone_lines(runs: Sequence[_Row], what: str) -> list[_BackboneLine]:
    """Fig. 8's lines, in drawing order: family (:data:`FIG8_FAMILIES`), the default backbone
    first, then the other backbones by name, the paper's inputs before others."""
    found: dict[str, tuple[str, set[tuple[str | None, str]]]] = {}
    for r in runs:
        try:
            strategy = parse_strategy(r.strategy, 0)
        except TaufmError as err:
            raise TaufmError(f"{what}: metrics row {r.index} ({r.describe()}): {err}") from err
        if strategy.family not in FIG8_FAMILIES:
            continue  # an ablation
        backbone = r.data.get("backbone")
        inputs = r.data.get("inputs")
        described = (backbone if isinstance(backbone, str) else strategy.backbone, inputs if isinstance(inputs, str) and inputs else strategy.inputs)
        found.setdefault(r.strategy, (strategy.family, set()))[1].add(described)
    lines = []
    for name, (family, described) in found.items():
        if len(described) > 1:
            listed = ", ".join(f"{b or 'no backbone'} with {i} inputs" for b, i in sorted(described, key=str))
            raise TaufmError(f"{what}: the rows of strategy {name!r} disagree on its backbone and inputs: {listed}")
        ((backbone, inputs),) = described
        label = STRATEGY_LABELS[family] + (f" ({backbone})" if backbone else "") + INPUT_LABELS.get(inputs, f" [{inputs}]")
        lines.append(_BackboneLine(name, family, backbone, inputs, label))
    lines.sort(key=lambda ln: (FIG8_FAMILIES.index(ln.family), ln.backbone != DEFAULT_BACKBONE, ln.backbone or "", ln.inputs != "paper", ln.inputs, ln.strategy))
    labels: set[str] = set()
    for i, line in enumerate(lines):  # e.g. finetune and finetune@tokens-ntp: the same line twice
        if line.label in labels:
            log.info("%s: strategy %s draws like another; labelled with its name", what, line.strategy)
            lines[i] = _BackboneLine(line.strategy, line.family, line.backbone, line.inputs, f"{line.label} [{line.strategy}]")
        labels.add(lines[i].label)
    return lines


def _backbone_line_styles(lines: Sequence[_BackboneLine]) -> dict[str, dict]:
    """Per strategy: colour (family and backbone), line style (input set) and marker (family)."""
    others = sorted(
        {(ln.family, ln.backbone) for ln in lines if ln.backbone not in (None, DEFAULT_BACKBONE)},
        key=lambda pair: (FIG8_FAMILIES.index(pair[0]), pair[1]),
    )
    colors = {pair: BACKBONE_PALETTE[i % len(BACKBONE_PALETTE)] for i, pair in enumerate(others)}
    return {
        ln.strategy: {
            "color": colors.get((ln.family, ln.backbone), STRATEGY_COLORS[ln.family]),
            "linestyle": INPUT_LINESTYLES.get(ln.inputs, ":"),
            "marker": FAMILY_MARKERS[ln.family],
        }
        for ln in lines
    }


def _draw_backbone_panel(ax: Axes, curves: Mapping[str, dict], styles: Mapping[str, dict], title: str, ylabel: str, empty: str) -> None:
    if not curves:
        no_data_panel(ax, title, empty)
        return
    for label, curve in curves.items():
        _line_with_band(ax, curve, label=label, **styles[curve["strategy"]])
    ax.set_xscale("log")
    ax.set(title=title, xlabel="Training jets", ylabel=ylabel)
    _pad_y(ax)


# --- grid cost ---------------------------------------------------------------------------------


def fig_grid_cost(rows: Iterable[Mapping], output_stem: str | os.PathLike[str]) -> dict:
    """What the grid cost: device-seconds per figure point (summed over its seeds) vs training
    size, one panel per task, one line per strategy of :data:`BASE_STRATEGIES`; the title gives
    the total with the tokenizer's and pretraining's share. Draws the rows of
    :func:`taufm.evaluate.metrics.grid_cost` as they are. Returns what it drew."""
    what = "grid cost figure"
    rows = rows if isinstance(rows, (Mapping, str, bytes)) else list(rows)
    if isinstance(rows, (Mapping, str, bytes)):
        raise TaufmError(f"{what}: the grid-cost table must be a sequence of rows, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "stage" not in row or "device_seconds" not in row:
            raise TaufmError(f"{what}: row {i} is not a grid-cost row (needs stage and device_seconds)")
    curves: dict[str, dict[str, dict[str, list]]] = {task: {} for task in TASKS}
    for row in rows:
        if row["stage"] != "finetune" or row.get("task") not in TASKS or row.get("strategy") not in BASE_STRATEGIES:
            continue
        seconds = _finite_or_none(row["device_seconds"])
        if seconds is None:
            continue
        curve = curves[row["task"]].setdefault(row["strategy"], {"size": [], "device_seconds": []})
        curve["size"].append(int(row["size"]))
        curve["device_seconds"].append(seconds)
    for by_strategy in curves.values():
        for curve in by_strategy.values():
            order = np.argsort(curve["size"])
            curve["size"] = [curve["size"][i] for i in order]
            curve["device_seconds"] = [curve["device_seconds"][i] for i in order]
    totals = {str(row["stage"]): _finite_or_none(row["device_seconds"]) for row in rows if row["stage"] != "finetune"}
    with taufm_style():
        fig, axes = new_figure(1, len(TASKS))
        for ax, task in zip(axes[0], TASKS, strict=True):
            if not curves[task]:
                no_data_panel(ax, TASK_TITLES[task], "no runs of this task")
                continue
            for strategy in BASE_STRATEGIES:
                if strategy in curves[task]:
                    curve = curves[task][strategy]
                    ax.plot(curve["size"], curve["device_seconds"], color=STRATEGY_COLORS[strategy], marker="o", label=STRATEGY_LABELS[strategy])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set(title=TASK_TITLES[task], xlabel="Training jets", ylabel="Device-seconds per figure point (all seeds)")
        _figure_legend(fig, axes)
        parts = [f"{name} {_number(value, '.3g')} s" for name, value in totals.items() if name != "total"]
        fig.suptitle(f"Compute: {_number(totals.get('total'), '.3g')} device-seconds in all" + (f" ({', '.join(parts)})" if parts else ""))
        save_figure(fig, output_stem)
    summary = {"tasks": curves, "stages": totals}
    log.info("grid cost: %s", summary)
    return summary


# --- headline table ----------------------------------------------------------------------------


def summary_table(
    rows: Iterable[Mapping],
    size: int,
    md_path: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    *,
    test_sample: str = SIGNAL_SAMPLE,
    comparisons: Iterable[Mapping] = (),
) -> list[dict]:
    """The paper's headline numbers (SPEC §8, at 1e4 training jets) beside ours at ``size``.

    One row per :data:`HEADLINES` entry; ours are mean ± std over seeds of the metrics-table rows
    of ``test_sample`` for scratch, finetune and (if present) part, with the bootstrap 68%
    interval of the seed mean over the test jets where the table's "mean" row has one
    (``<strategy>_ci68_low/high``). Resolution: the paper's headline is (q75 - q25) / q50 of
    pred / true pT (``resolution_iqr_over_median``); the raw IQR is listed too.

    ``comparisons`` (rows of :func:`taufm.evaluate.metrics.compare_strategies`) add, per
    headline and pair of strategies (a, b), the difference a - b of the seed means with its
    bootstrap interval and seed standard error (``<a>_minus_<b>``, ``..._ci68_low/high``,
    ``..._seed_se``), in the CSV and as a second Markdown table.

    Writes Markdown to ``md_path`` and CSV to ``csv_path``, both atomically (both or neither);
    returns the CSV rows as dicts (``None`` for an empty cell).
    """
    what = "summary table"
    if not _is_int(size) or size <= 0:
        raise TaufmError(f"{what}: size must be a positive integer, got {size!r}")
    if Path(md_path) == Path(csv_path):
        raise TaufmError(f"{what}: the Markdown and CSV outputs are the same file {md_path}")
    rows = rows if isinstance(rows, (Mapping, str, bytes)) else list(rows)  # read twice below
    runs = [r for r in _run_rows(rows, what) if r.size == size and r.strategy in TABLE_STRATEGIES]
    for r in runs:
        if "test_sample" not in r.data:
            raise TaufmError(f"{what}: metrics row {r.index} ({r.describe()}) has no key 'test_sample'")
    runs = [r for r in runs if r.data["test_sample"] == test_sample]
    means = {
        (r.get("task"), r.get("strategy")): r
        for r in rows
        if isinstance(r, Mapping) and r.get("statistic") == "mean" and r.get("size") == size and r.get("test_sample") == test_sample
    }
    differences = {
        (c.get("metric"), c.get("strategy_a"), c.get("strategy_b")): c
        for c in comparisons
        if c.get("size") == size and c.get("test_sample") == test_sample
    }
    pairs = [pair for pair in COMPARISONS if any(k[1:] == pair for k in differences)]

    table = []
    for h in HEADLINES:
        values = _run_values((r for r in runs if r.task == h.task), h.key, what)
        row: dict = {
            "metric": h.metric,
            "task": h.task,
            "key": h.key,
            "definition": h.definition,
            "test_sample": test_sample,
            "size": size,
            "paper_size": PAPER_SIZE,
            "paper_scratch": h.paper_scratch,
            "paper_finetune": h.paper_finetune,
            "paper_finetune_over_scratch": _ratio(h.paper_finetune, h.paper_scratch),
        }
        for strategy in TABLE_STRATEGIES:
            st = _stats(v for (_, s, _, _), v in sorted(values.items()) if s == strategy)
            row[f"{strategy}_mean"], row[f"{strategy}_std"], row[f"{strategy}_n_seeds"] = st["mean"], st["std"], st["n_seeds"]
            mean_row = means.get((h.task, strategy), {})
            for bound in ("low", "high"):
                row[f"{strategy}_ci68_{bound}"] = _finite_or_none(mean_row.get(f"{h.key}_ci68_{bound}"))
        row["finetune_over_scratch"] = _ratio(row["finetune_mean"], row["scratch_mean"])
        for a, b in pairs:
            found = differences.get((h.key, a, b), {})
            name = f"{a}_minus_{b}"
            row[name] = _finite_or_none(found.get("difference"))
            row[f"{name}_ci68_low"] = _finite_or_none(found.get("difference_ci68_low"))
            row[f"{name}_ci68_high"] = _finite_or_none(found.get("difference_ci68_high"))
            row[f"{name}_seed_se"] = _finite_or_none(found.get("difference_seed_se"))
        table.append(row)

    with_part = any(row["part_n_seeds"] for row in table)
    markdown = _markdown(table, size, test_sample, with_part, pairs)
    with atomic_output(Path(md_path)) as tmp_md, atomic_output(Path(csv_path)) as tmp_csv:
        tmp_md.write_text(markdown, encoding="utf-8")
        with tmp_csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    log.info("summary table at n=%d: %s", size, table)
    return table


def _finite_or_none(value: object) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _cell(mean: float | None, std: float | None, n: int, low: float | None = None, high: float | None = None) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.4g}"
    if std is not None:
        text += f" ± {std:.2g}"
    if low is not None and high is not None:
        text += f" [{low:.4g}, {high:.4g}]"
    return f"{text} ({n})"


def _difference_cell(row: Mapping, name: str) -> str:
    value = row.get(name)
    if value is None:
        return "—"
    text = f"{value:+.3g}"
    low, high, se = row.get(f"{name}_ci68_low"), row.get(f"{name}_ci68_high"), row.get(f"{name}_seed_se")
    if low is not None and high is not None:
        text += f" [{low:+.3g}, {high:+.3g}]"
    if se is not None:
        text += f", seeds ± {se:.2g}"
    return text


def _number(value: float | None, fmt: str = ".4g") -> str:
    return "—" if value is None else format(value, fmt)


def _markdown(table: Sequence[dict], size: int, test_sample: str, with_part: bool, pairs: Sequence[tuple[str, str]] = ()) -> str:
    strategies = [s for s in TABLE_STRATEGIES if s != "part" or with_part]
    size_text = f"{size:,}"
    head = [
        "metric",
        "definition",
        f"paper scratch ({PAPER_SIZE:,})",
        f"paper fine-tune ({PAPER_SIZE:,})",
        "paper ratio",
        *(f"ours: {STRATEGY_LABELS[s]} ({size_text})" for s in strategies),
        "our ratio",
    ]
    lines = [
        f"# Headline numbers: the paper beside ours at {size_text} training jets",
        "",
        f"Paper values (SPEC §8) are at {PAPER_SIZE:,} training jets. Ours: mean ± std over seeds (population std,"
        f" ddof={STD_DDOF}; no std for one seed), in square brackets the bootstrap 68% interval of the seed mean over"
        f" the test jets, number of seeds in round brackets, on the {test_sample} test sample."
        " Ratio: fine-tune / scratch. The paper's resolution is (q75 - q25) / q50 of pred / true pT;"
        " the raw IQR is listed below it. — : not available.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + " |",
    ]
    if size != PAPER_SIZE:
        lines.insert(3, f"Note: our training size ({size_text}) differs from the paper's ({PAPER_SIZE:,}).\n")
    for row in table:
        cells = [
            row["metric"],
            row["definition"],
            _number(row["paper_scratch"]),
            _number(row["paper_finetune"]),
            _number(row["paper_finetune_over_scratch"], ".3f"),
            *(_cell(row[f"{s}_mean"], row[f"{s}_std"], row[f"{s}_n_seeds"], row[f"{s}_ci68_low"], row[f"{s}_ci68_high"]) for s in strategies),
            _number(row["finetune_over_scratch"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if pairs:
        labels = [f"{STRATEGY_LABELS[a]} − {STRATEGY_LABELS[b]}" for a, b in pairs]
        lines += [
            "",
            "## Differences between strategies",
            "",
            "Difference of the seed means, in square brackets its bootstrap 68% interval over the test jets (paired where"
            " both strategies were tested on the same jets), then the standard error from the seed spread"
            " (sqrt(s_a²/n_a + s_b²/n_b), needs two seeds each).",
            "",
            "| metric | " + " | ".join(labels) + " |",
            "| --- | " + " | ".join(["---:"] * len(labels)) + " |",
        ]
        for row in table:
            lines.append("| " + " | ".join([row["metric"], *(_difference_cell(row, f"{a}_minus_{b}") for a, b in pairs)]) + " |")
    return "\n".join(lines) + "\n"
