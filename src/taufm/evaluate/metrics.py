"""Test-set metrics of fine-tuning runs (SPEC §5) and their tidy table over seeds (SPEC §8).

Building blocks work on plain arrays: ROC curve and AUC, misID rate at a tau efficiency, pT
response and resolution (overall and in bins), decay-mode AUCs and confusion counts, the best
validation loss of a ``history.csv``. This module is the one definition of every metric: the
per-epoch validation metrics of fine-tuning, the metrics stage and the figures all use it.

:func:`run_metrics` turns one run directory (``docs/data-format.md``, "Fine-tuning runs") into one
row per test sample, each headline metric with a bootstrap 68% interval over the test jets;
:func:`run_details` adds what the figures draw (the misID curve, the response histogram) and the
bootstrap replicates themselves. :func:`aggregate` adds the mean and spread over seeds (and the
interval of the mean), :func:`compare_strategies` the paper's comparisons between strategies as
differences with their intervals, and :func:`write_table` writes rows as CSV and Parquet.

Bootstrap: replicate k of a test set of n jets resamples the same n indices for every run
(the generator is seeded by the bootstrap seed and n only), so two runs on the same test jets
(checked by a hash of their sample, event and jet index) are compared replicate by replicate: a
paired bootstrap of the difference. Runs on different jets are resampled independently.

Physics oddities (a class absent from a test sample, no finite pT ratio, a diverged model giving
NaN scores) give NaN metrics, never an exception; missing or unreadable files and missing
columns are a :class:`~taufm.errors.TaufmError` naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn import metrics as skm

from taufm.progress import Progress
from taufm.data import read_shards
from taufm.errors import TaufmError
from taufm.finetune.strategies import parse_strategy
from taufm.io import atomic_output
from taufm.physics.tau import DECAY_MODE_NAMES

DEFAULT_EFFICIENCY = 0.8  # tau efficiency of the misID working point (SPEC §5)
BACKGROUND_SAMPLE = "qq"  # tau ID: the background every tau sample is measured against
STD_DDOF = 0  # aggregate(): std over seeds is the population std of the seeds run (0 for one seed)

PREDICTIONS_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.csv"
DETAILS_FILE = "metrics_details.json"  # written by the metrics stage beside metrics.json

# Fig. 5a: the misID rate on this grid of tau efficiencies.
EFFICIENCY_GRID = np.round(np.linspace(0.2, 1.0, 81), 10)
# Fig. 5b: the response histogram's edges; values outside are counted into the edge bins.
RESPONSE_EDGES = np.linspace(0.5, 1.5, 51)

BOOTSTRAP_REPLICATES = 200
BOOTSTRAP_SEED = 0
INTERVAL = 0.68  # central interval of the bootstrap distribution: percentiles 16 and 84
# The headline metrics of each task that get a bootstrap interval (column <metric>_ci68_low/high).
HEADLINE_METRICS = {
    "tau_id": ("auc", f"misid_at_{round(100 * DEFAULT_EFFICIENCY)}"),
    "pt_regression": ("response", "resolution_iqr", "resolution_iqr_over_median"),
    "decay_mode": ("auc_weighted", "accuracy"),
}
# The paper's comparisons (SPEC §8), each (strategy a, strategy b): the difference is a - b.
COMPARISONS = (("finetune", "scratch"), ("finetune", "fixed"), ("part", "finetune"))

RUN_KEYS = ("task", "strategy", "size", "seed")  # from summary.json
# What the strategy name says of a run, beside it in every row: the pretrained backbone it
# started from (None for the ParT) and its input set. Descriptive only: rows are grouped by strategy.
STRATEGY_COLUMNS = ("backbone", "inputs")
# summary.json's keys for them; a summary of an older taufm lacks them (then read off the name).
SUMMARY_STRATEGY_KEYS = {"backbone": "backbone_name", "inputs": "inputs"}
# Leading columns of the tidy table; the metrics follow in first-seen order.
TABLE_KEYS = ("task", "strategy", *STRATEGY_COLUMNS, "size", "seed", "statistic", "n_seeds", "test_sample")
_KEY_TYPES = {
    "task": pa.string(),
    "strategy": pa.string(),
    "backbone": pa.string(),  # null for the ParT baseline
    "inputs": pa.string(),
    "size": pa.int64(),
    "seed": pa.int64(),
    "statistic": pa.string(),
    "n_seeds": pa.int64(),
    "test_sample": pa.string(),
    "neighbours": pa.int64(),  # null for the probes that have none
}
STATISTICS = ("value", "mean", "std")
GRID_COST_KEYS = ("stage", "task", "strategy", "size")  # leading columns of grid_cost
PROBE_KEYS = ("backbone", "backbone_stage", "probe")  # leading columns of the embedding probes
COMPARISON_KEYS = ("task", "size", "test_sample", "metric", "strategy_a", "strategy_b")  # leading columns of compare_strategies
RUN_COLUMNS = ("n_jets", "best_val_loss", "best_epoch")  # follow the keys in the table, before the metrics
# What a run cost (its summary.json), after the metrics: repeated on each test sample's row.
COST_COLUMNS = ("n_parameters", "n_trainable_parameters", "flops_per_jet", "train_flops_estimate", "device_seconds", "jets_per_second", "peak_memory_mb")
TRAIN_FLOPS_PER_FORWARD = 3  # a training step ~ forward + backward ~ 3 forward passes (estimate)

_NAN = float("nan")


# --- binary classification -------------------------------------------------------------------


def _binary_inputs(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(bool labels, float scores), or None when a class is absent or a score is not finite."""
    y = np.asarray(label).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise TaufmError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if y.all() or not y.any() or not np.all(np.isfinite(s)):
        return None
    return y, s


def roc_curve(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tau efficiency = TPR, misID rate = FPR) over all score thresholds, starting at (0, 0).

    Computed by :func:`sklearn.metrics.roc_curve` with every threshold kept (tied scores make
    one point). Two empty arrays when a class is absent or a score is not finite.
    """
    inputs = _binary_inputs(label, score)
    if inputs is None:
        return np.empty(0), np.empty(0)
    fpr, tpr, _ = skm.roc_curve(*inputs, drop_intermediate=False)
    return tpr, fpr


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (ties count one half); NaN when a class is absent or a score is not finite."""
    inputs = _binary_inputs(label, score)
    return _NAN if inputs is None else float(skm.roc_auc_score(*inputs))


def misid_at_efficiency(label: np.ndarray, score: np.ndarray, efficiency: float = DEFAULT_EFFICIENCY) -> float:
    """MisID rate (FPR) at the tau efficiency (TPR) ``efficiency``.

    The ROC is the polyline through the points of :func:`roc_curve`; the FPR is interpolated
    linearly on the segment that crosses ``efficiency``. Where the ROC reaches the efficiency
    exactly at several points, the lowest FPR among them. NaN when a class is absent.
    """
    if not 0.0 <= efficiency <= 1.0:
        raise TaufmError(f"tau efficiency must be within [0, 1], got {efficiency}")
    return float(misid_at_efficiencies(label, score, np.asarray([efficiency]))[0])


def misid_at_efficiencies(label: np.ndarray, score: np.ndarray, efficiencies: Sequence[float] | np.ndarray) -> np.ndarray:
    """:func:`misid_at_efficiency` at each of ``efficiencies`` (one ROC computed once): the misID
    curve of Fig. 5a. All NaN when a class is absent or a score is not finite."""
    eff = np.asarray(efficiencies, dtype=np.float64)
    if eff.ndim != 1 or np.any(eff < 0.0) or np.any(eff > 1.0):
        raise TaufmError(f"tau efficiencies must be numbers within [0, 1], got {eff.tolist()}")
    tpr, fpr = roc_curve(label, score)
    if tpr.size == 0:
        return np.full(eff.shape, _NAN)
    i = np.searchsorted(tpr, eff, side="left")  # first point with tpr >= eff (tpr ends at 1)
    exact = (tpr[i] == eff) | (i == 0)
    previous = np.maximum(i - 1, 0)
    step = np.where(exact, 1.0, tpr[i] - tpr[previous])
    interpolated = fpr[previous] + (eff - tpr[previous]) * (fpr[i] - fpr[previous]) / step
    return np.where(exact, fpr[i], interpolated)


# --- pT regression ---------------------------------------------------------------------------


def response_resolution(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Median (``response``), ``iqr`` = q75 - q25 and ``iqr_over_median`` of pred / true.

    Only finite ratios count (``n`` of them); quantiles interpolate linearly (numpy's default).
    NaN metrics when no ratio is finite.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise TaufmError(f"predicted and true values differ in length ({pred.size} vs {true.size})")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = pred / true
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return {"response": _NAN, "iqr": _NAN, "iqr_over_median": _NAN, "n": 0}
    q25, q50, q75 = np.percentile(ratio, [25.0, 50.0, 75.0])
    iqr = float(q75 - q25)
    return {"response": float(q50), "iqr": iqr, "iqr_over_median": iqr / q50 if q50 != 0 else _NAN, "n": int(ratio.size)}


def response_in_bins(pred: np.ndarray, true: np.ndarray, bin_variable: np.ndarray, edges: Sequence[float]) -> list[dict]:
    """:func:`response_resolution` per bin of ``bin_variable`` (e.g. gen visible tau pT).

    Bins are [low, high) except the last, [low, high], as in :func:`numpy.histogram`; each dict
    holds ``bin_low`` and ``bin_high`` besides the metrics. Values outside the edges are left out.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise TaufmError(f"bin edges must be at least two increasing numbers, got {edges.tolist()}")
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    x = np.asarray(bin_variable, dtype=np.float64).ravel()
    if not pred.size == true.size == x.size:
        raise TaufmError(f"pred, true and bin variable differ in length ({pred.size}, {true.size}, {x.size})")
    rows = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == edges.size - 2
        inside = (x >= low) & ((x <= high) if last else (x < high))
        rows.append({"bin_low": float(low), "bin_high": float(high), **response_resolution(pred[inside], true[inside])})
    return rows


def response_histogram(pred: np.ndarray, true: np.ndarray, edges: Sequence[float] | np.ndarray = RESPONSE_EDGES) -> dict:
    """Fractions of the finite pred / true ratios in each bin of ``edges`` (Fig. 5b), values
    outside the range counted into the edge bins; ``fraction_outside`` says how many were.
    ``n`` is the number of finite ratios (fractions all zero when there are none)."""
    edges = np.asarray(edges, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = pred / true
    ratio = ratio[np.isfinite(ratio)]
    counts, _ = np.histogram(np.clip(ratio, edges[0], edges[-1]), bins=edges)
    n = int(ratio.size)
    return {
        "bin_edges": edges.tolist(),
        "fractions": (counts / n if n else counts * 0.0).tolist(),
        "fraction_outside": float(np.mean((ratio < edges[0]) | (ratio > edges[-1]))) if n else _NAN,
        "n": n,
    }


# --- decay modes -----------------------------------------------------------------------------


def decay_mode_aucs(true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """One-vs-rest ROC AUC per decay mode (keyed by name) and their class-frequency ``weighted`` mean.

    ``probabilities`` has one column per :data:`DECAY_MODE_NAMES` entry. A class absent from
    ``true`` gets NaN and no weight; ``weighted`` is NaN when fewer than two classes are present
    (or a present class's AUC is NaN, e.g. for non-finite probabilities).
    """
    true = np.asarray(true).astype(np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = len(DECAY_MODE_NAMES)
    if probabilities.ndim != 2 or probabilities.shape != (true.size, n):
        raise TaufmError(f"decay-mode probabilities must have shape ({true.size}, {n}), got {probabilities.shape}")
    result: dict[str, float] = {}
    aucs, counts = [], []
    for c, name in enumerate(DECAY_MODE_NAMES):
        count = int(np.sum(true == c))
        result[name] = roc_auc(true == c, probabilities[:, c]) if count else _NAN
        if count:
            aucs.append(result[name])
            counts.append(count)
    result["weighted"] = float(np.average(aucs, weights=counts)) if len(aucs) >= 2 else _NAN
    return result


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int = len(DECAY_MODE_NAMES)) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows true class, columns predicted; pairs with a value
    outside 0..n_classes-1 are not counted."""
    true = np.asarray(true).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if true.shape != pred.shape:
        raise TaufmError(f"true and predicted classes differ in length ({true.size} vs {pred.size})")
    ok = (true >= 0) & (true < n_classes) & (pred >= 0) & (pred < n_classes)
    flat = np.bincount(true[ok] * n_classes + pred[ok], minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


# --- run directories -------------------------------------------------------------------------


def best_validation_loss(history_csv: str | os.PathLike[str]) -> tuple[float, int]:
    """(lowest ``val_loss``, its epoch) of a training ``history.csv``; the first epoch on ties.

    A fine-tuning history validated on a subset each epoch marks the kept epoch with
    ``val_loss_full``, the kept model's loss on the whole validation set: then that, and its epoch.

    The epoch comes from the ``epoch`` column when there is one, else the row number (from 0).
    NaN entries are skipped; (NaN, -1) when there is no finite loss. A missing or unreadable
    file, a missing column or a non-numeric entry is a :class:`TaufmError` naming the file.
    """
    path = Path(history_csv)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TaufmError(f"{path}: cannot read the training history ({err})") from err
    if "val_loss" not in fields:
        raise TaufmError(f"{path}: no 'val_loss' column in the training history")
    try:
        losses = np.array([float(r["val_loss"]) for r in rows], dtype=np.float64)
        epochs = [int(float(r["epoch"])) if "epoch" in fields else i for i, r in enumerate(rows)]
    except (TypeError, ValueError) as err:
        raise TaufmError(f"{path}: non-numeric val_loss or epoch in the training history ({err})") from err
    if "val_loss_full" in fields:  # validated on a subset each epoch: the kept epoch's whole-set loss
        kept = [(i, r["val_loss_full"]) for i, r in enumerate(rows) if (r.get("val_loss_full") or "").strip()]
        if len(kept) > 1:
            raise TaufmError(f"{path}: val_loss_full is set on {len(kept)} epochs; it belongs to the kept epoch only")
        if kept:
            try:
                return float(kept[0][1]), epochs[kept[0][0]]
            except ValueError as err:
                raise TaufmError(f"{path}: non-numeric val_loss_full in the training history ({err})") from err
    finite = ~np.isnan(losses)
    if not finite.any():
        return _NAN, -1
    i = int(np.flatnonzero(finite)[np.argmin(losses[finite])])
    return float(losses[i]), epochs[i]


def _run_info(path: Path) -> tuple[dict, dict, dict]:
    """(task, strategy, size, seed), the strategy's backbone and inputs
    (:func:`_strategy_columns`) and the run's cost (:data:`COST_COLUMNS`, NaN where the summary
    lacks one, e.g. a run of an older taufm) from its ``summary.json``."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaufmError(f"{path}: cannot read the run summary ({err})") from err
    if not isinstance(summary, dict):
        raise TaufmError(f"{path}: the run summary is not a JSON object")
    missing = [k for k in RUN_KEYS if k not in summary]
    if missing:
        raise TaufmError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        info = {"task": str(summary["task"]), "strategy": str(summary["strategy"]), "size": int(summary["size"]), "seed": int(summary["seed"])}
    except (TypeError, ValueError) as err:
        raise TaufmError(f"{path}: size and seed must be integers ({err})") from err
    described = _strategy_columns(summary, path)
    cost = {name: float(summary[name]) if _is_number(summary.get(name)) else _NAN for name in COST_COLUMNS}
    if math.isnan(cost["train_flops_estimate"]) and math.isfinite(cost["flops_per_jet"]) and _is_number(summary.get("jets_trained")):
        cost["train_flops_estimate"] = TRAIN_FLOPS_PER_FORWARD * cost["flops_per_jet"] * float(summary["jets_trained"])
    return info, described, cost


def _strategy_columns(summary: Mapping, path: Path) -> dict:
    """The run's ``backbone`` (a name, or None for the ParT) and ``inputs`` (an input set's name):
    summary.json's ``backbone_name`` and ``inputs``, or, where an older summary lacks one, what
    the strategy name says (:func:`~taufm.finetune.strategies.parse_strategy`: no ``@backbone``
    is the default backbone, no ``+lifetime`` the paper's inputs)."""
    parsed = None
    described = {}
    for column, key in SUMMARY_STRATEGY_KEYS.items():
        if key not in summary:
            if parsed is None:
                try:
                    parsed = parse_strategy(str(summary["strategy"]), 0)
                except TaufmError as err:
                    raise TaufmError(f"{path}: no {key!r}, and the strategy name does not say it: {err}") from err
            described[column] = getattr(parsed, column)
            continue
        value = summary[key]
        if not (isinstance(value, str) and value) and not (column == "backbone" and value is None):
            allowed = "a backbone's name or null" if column == "backbone" else "an input set's name"
            raise TaufmError(f"{path}: {key} must be {allowed}, got {value!r}")
        described[column] = value
    return described


def _misid_key(efficiency: float) -> str:
    return f"misid_at_{round(100 * efficiency)}"


def headline_metrics(task: str, efficiency: float = DEFAULT_EFFICIENCY) -> tuple[str, ...]:
    """The metrics of ``task`` that get a bootstrap interval (the misID key follows ``efficiency``)."""
    if task == "tau_id":
        return ("auc", _misid_key(efficiency))
    return HEADLINE_METRICS[task]


def _tau_id_jets(columns: Mapping[str, np.ndarray], sample: str) -> np.ndarray:
    """Indices of the jets the tau-ID metrics of ``sample`` use: its tau jets and the qq background."""
    label = columns["label"].astype(np.int64) == 1
    here = columns["sample"] == sample
    if sample == BACKGROUND_SAMPLE:
        return np.flatnonzero(here)
    return np.flatnonzero((here & label) | ((columns["sample"] == BACKGROUND_SAMPLE) & ~label))


def _tau_id_metrics(columns: Mapping[str, np.ndarray], sample: str, efficiency: float) -> dict:
    label = columns["label"].astype(np.int64) == 1
    score = columns["score"]
    here = columns["sample"] == sample
    row = {"n_signal": int(np.sum(here & label)), "n_background": int(np.sum(here & ~label)), "auc": _NAN, _misid_key(efficiency): _NAN}
    if sample != BACKGROUND_SAMPLE:
        keep = (here & label) | ((columns["sample"] == BACKGROUND_SAMPLE) & ~label)
        row["auc"] = roc_auc(label[keep], score[keep])
        row[_misid_key(efficiency)] = misid_at_efficiency(label[keep], score[keep], efficiency)
    return row


def _tau_id_curves(columns: Mapping[str, np.ndarray], sample: str) -> dict:
    if sample == BACKGROUND_SAMPLE:
        return {}
    jets = _tau_id_jets(columns, sample)
    label = columns["label"][jets].astype(np.int64) == 1
    misid = misid_at_efficiencies(label, columns["score"][jets], EFFICIENCY_GRID)
    return {"misid": {"efficiency": EFFICIENCY_GRID.tolist(), "misid": misid.tolist(), "n_signal": int(label.sum()), "n_background": int((~label).sum())}}


def _sample_jets(columns: Mapping[str, np.ndarray], sample: str) -> np.ndarray:
    return np.flatnonzero(columns["sample"] == sample)


def _pt_regression_metrics(columns: Mapping[str, np.ndarray], sample: str, efficiency: float) -> dict:  # noqa: ARG001
    here = columns["sample"] == sample
    r = response_resolution(columns["pred_pt"][here], columns["gen_tau_vis_pt"][here])
    return {"response": r["response"], "resolution_iqr": r["iqr"], "resolution_iqr_over_median": r["iqr_over_median"]}


def _pt_regression_curves(columns: Mapping[str, np.ndarray], sample: str) -> dict:
    here = columns["sample"] == sample
    return {"response": response_histogram(columns["pred_pt"][here], columns["gen_tau_vis_pt"][here])}


def _decay_mode_metrics(columns: Mapping[str, np.ndarray], sample: str, efficiency: float) -> dict:  # noqa: ARG001
    here = columns["sample"] == sample
    probs = np.stack([columns[f"prob_{name}"][here] for name in DECAY_MODE_NAMES], axis=1)
    true = columns["decay_mode"][here].astype(np.int64)
    aucs = decay_mode_aucs(true, probs)
    accuracy = float(np.mean(columns["pred_decay_mode"][here].astype(np.int64) == true)) if true.size else _NAN
    return {"auc_weighted": aucs["weighted"], **{f"auc_{name}": aucs[name] for name in DECAY_MODE_NAMES}, "accuracy": accuracy}


@dataclass(frozen=True)
class TaskMetrics:
    """How one task is evaluated: the prediction columns it needs, its metrics on one test sample,
    the jets those metrics depend on (what the bootstrap resamples) and the curves the figures draw."""

    columns: tuple[str, ...]
    metrics: Callable[[Mapping[str, np.ndarray], str, float], dict]
    jets: Callable[[Mapping[str, np.ndarray], str], np.ndarray]
    curves: Callable[[Mapping[str, np.ndarray], str], dict]


TASK_METRICS: dict[str, TaskMetrics] = {
    "tau_id": TaskMetrics(("label", "score"), _tau_id_metrics, _tau_id_jets, _tau_id_curves),
    "pt_regression": TaskMetrics(("pred_pt", "gen_tau_vis_pt"), _pt_regression_metrics, _sample_jets, _pt_regression_curves),
    "decay_mode": TaskMetrics(
        ("decay_mode", "pred_decay_mode", *(f"prob_{n}" for n in DECAY_MODE_NAMES)), _decay_mode_metrics, _sample_jets, lambda c, s: {}
    ),
}


# --- bootstrap -------------------------------------------------------------------------------


def bootstrap_indices(n: int, n_replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED):
    """The resampled indices (each an array of n draws from 0..n-1 with replacement) of each
    replicate. They depend on ``seed`` and ``n`` only, so runs on the same test jets are resampled
    alike (a paired bootstrap)."""
    rng = np.random.default_rng([seed, n])
    for _ in range(n_replicates):
        yield rng.integers(0, n, size=n)


def interval(replicates: Sequence[float] | np.ndarray, level: float = INTERVAL) -> tuple[float, float]:
    """Central ``level`` interval (percentiles, linear interpolation) of the finite replicates;
    (NaN, NaN) when fewer than two are finite."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return _NAN, _NAN
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _ci_keys(metric: str) -> tuple[str, str]:
    percent = round(100 * INTERVAL)
    return f"{metric}_ci{percent}_low", f"{metric}_ci{percent}_high"


def jets_fingerprint(columns: Mapping[str, np.ndarray], jets: np.ndarray) -> str | None:
    """SHA-256 of the (sample, event, jet_index) of ``jets``, in order: equal for two runs exactly
    when they were tested on the same jets in the same order. None without event and jet_index."""
    if "event" not in columns or "jet_index" not in columns:
        return None
    digest = hashlib.sha256()
    digest.update("\0".join(columns["sample"][jets].tolist()).encode())
    digest.update(np.ascontiguousarray(columns["event"][jets], dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(columns["jet_index"][jets], dtype=np.int64).tobytes())
    return digest.hexdigest()


def _bootstrap(task: TaskMetrics, columns: Mapping[str, np.ndarray], sample: str, names: Sequence[str], efficiency: float, n_replicates: int, seed: int) -> dict[str, list[float]]:
    jets = task.jets(columns, sample)
    replicates: dict[str, list[float]] = {name: [] for name in names}
    if jets.size == 0:
        return replicates
    needed = ["sample", *task.columns]  # not the jet keys: only what the metrics read
    # scikit-learn checks every argument of every call (~10 ms for roc_auc_score): the inputs
    # here are the arrays the point estimate already passed with those checks on.
    with sklearn.config_context(skip_parameter_validation=True), Progress(f"bootstrap of the {sample} metrics", n_replicates, unit="replicate") as progress:
        for indices in bootstrap_indices(jets.size, n_replicates, seed):
            chosen = jets[indices]
            resampled = {k: columns[k][chosen] for k in needed}
            values = task.metrics(resampled, sample, efficiency)
            for name in names:
                replicates[name].append(float(values[name]))
            progress.update()
    return replicates


def evaluate_run(
    run_dir: str | os.PathLike[str],
    efficiency: float = DEFAULT_EFFICIENCY,
    n_bootstrap: int = BOOTSTRAP_REPLICATES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
) -> tuple[list[dict], dict]:
    """(:func:`run_metrics` rows, the run's details): the details hold, per test sample, the
    figures' curves, the bootstrap replicates of each headline metric and the test jets'
    fingerprint (``docs/data-format.md``, "metrics_details.json")."""
    if not 0.0 <= efficiency <= 1.0:
        raise TaufmError(f"tau efficiency must be within [0, 1], got {efficiency}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise TaufmError(f"the number of bootstrap replicates must be a non-negative integer, got {n_bootstrap!r}")
    run_dir = Path(run_dir)
    info, described, cost = _run_info(run_dir / SUMMARY_FILE)
    if info["task"] not in TASK_METRICS:
        raise TaufmError(f"{run_dir / SUMMARY_FILE}: unknown task {info['task']!r}; known: {', '.join(TASK_METRICS)}")
    best_loss, best_epoch = best_validation_loss(run_dir / HISTORY_FILE)
    task = TASK_METRICS[info["task"]]
    path = run_dir / PREDICTIONS_FILE
    try:
        with pq.ParquetFile(path) as handle:
            names = set(handle.schema_arrow.names)
        keys = [c for c in ("event", "jet_index") if c in names]
        columns = read_shards([path], ["sample", *task.columns, *keys])
    except (OSError, pa.ArrowException) as err:  # read_shards itself names missing files and columns
        raise TaufmError(f"{path}: cannot read the predictions ({err})") from err
    if len(columns["sample"]) == 0:
        raise TaufmError(f"{path}: no test jets in the predictions")
    columns["sample"] = columns["sample"].astype(str)
    samples = list(dict.fromkeys(columns["sample"].tolist()))
    headline = headline_metrics(info["task"], efficiency)
    rows, details = [], {"run": info, "bootstrap": {"replicates": n_bootstrap, "seed": bootstrap_seed, "interval": INTERVAL}, "samples": {}}
    for sample in samples:
        metrics = task.metrics(columns, sample, efficiency)
        replicates = _bootstrap(task, columns, sample, headline, efficiency, n_bootstrap, bootstrap_seed)
        for name in headline:
            metrics.update(zip(_ci_keys(name), interval(replicates[name]) if math.isfinite(metrics[name]) else (_NAN, _NAN)))
        n_jets = int(np.sum(columns["sample"] == sample))
        rows.append({**_with_strategy_columns(info, described), "test_sample": sample, "n_jets": n_jets, "best_val_loss": best_loss, "best_epoch": best_epoch, **metrics, **cost})
        details["samples"][sample] = {
            "n_jets": n_jets,
            "metrics": metrics,
            "jets_sha256": jets_fingerprint(columns, task.jets(columns, sample)),
            "bootstrap": replicates,
            "curves": task.curves(columns, sample),
        }
    details["best_val_loss"], details["best_epoch"] = best_loss, best_epoch
    return rows, details


def run_metrics(run_dir: str | os.PathLike[str], efficiency: float = DEFAULT_EFFICIENCY, n_bootstrap: int = BOOTSTRAP_REPLICATES, bootstrap_seed: int = BOOTSTRAP_SEED) -> list[dict]:
    """One row per test sample of a fine-tuning run directory, in the order the samples appear.

    Every row has task, strategy, backbone, inputs, size, seed (``summary.json``; backbone and
    inputs read off the strategy name where the summary lacks them), test_sample, n_jets,
    best_val_loss and best_epoch (``history.csv``), then the task's metrics:

    - tau_id: n_signal, n_background (jets of the sample with label 1 / 0), auc and
      misid_at_80 (``efficiency`` = 0.8): the sample's tau jets (label 1) against the label-0
      jets of the ``qq`` sample. The ``qq`` row itself has counts only (NaN metrics).
    - pt_regression: response, resolution_iqr, resolution_iqr_over_median of pred_pt / gen_tau_vis_pt.
    - decay_mode: auc_weighted, auc_<name> per decay mode, accuracy (truth: ``decay_mode``).

    Each headline metric (:func:`headline_metrics`) is followed by ``<metric>_ci68_low`` and
    ``_high``: the central 68% interval of ``n_bootstrap`` bootstrap replicates over the test jets
    (NaN where the metric is NaN or there are no replicates).
    """
    return evaluate_run(run_dir, efficiency, n_bootstrap, bootstrap_seed)[0]


def _with_strategy_columns(row: Mapping, described: Mapping) -> dict:
    """``row`` with the :data:`STRATEGY_COLUMNS` of ``described`` right after its strategy."""
    out = {}
    for key, value in row.items():
        out[key] = value
        if key == "strategy":
            out.update((column, described.get(column)) for column in STRATEGY_COLUMNS)
    return out


# --- aggregation and the table ---------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return _NAN, _NAN
    std = float(finite.std(ddof=STD_DDOF)) if finite.size > STD_DDOF else _NAN
    return float(finite.mean()), std


def _replicates_by_run(details: Sequence[Mapping] | None) -> dict[tuple, Mapping]:
    """(task, strategy, size, seed, test_sample) -> that sample's details (replicates, fingerprint)."""
    table: dict[tuple, Mapping] = {}
    for d in details or ():
        try:
            run = d["run"]
            key = (str(run["task"]), str(run["strategy"]), int(run["size"]), int(run["seed"]))
            samples = d["samples"]
        except (KeyError, TypeError, ValueError) as err:
            raise TaufmError(f"run details lack the run keys or the samples ({err!r})") from err
        for sample, values in samples.items():
            table[(*key, sample)] = values
    return table


def _is_headline(task: str, name: str) -> bool:
    """Whether ``name`` is a headline metric of ``task`` (any misID working point for tau ID)."""
    return name in HEADLINE_METRICS.get(task, ()) or (task == "tau_id" and re.fullmatch(r"misid_at_\d+", name) is not None)


def _seed_mean_replicates(group: Sequence[Mapping | None], metric: str) -> np.ndarray | None:
    """Per replicate, the NaN-ignoring mean over the group's seeds; None unless every seed has
    replicates of ``metric``, all of one length."""
    series = [None if g is None else g.get("bootstrap", {}).get(metric) for g in group]
    if not series or any(s is None or len(s) == 0 for s in series) or len({len(s) for s in series}) != 1:
        return None
    stack = np.asarray(series, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate columns give NaN
        return np.nanmean(stack, axis=0)


def aggregate(rows: Sequence[Mapping], details: Sequence[Mapping] | None = None) -> list[dict]:
    """The per-run rows (``statistic`` = "value") plus, per (task, strategy, size, test_sample),
    a "mean" and a "std" row over seeds.

    Summary rows have ``seed`` = None and ``n_seeds`` (the runs in the group), the group's
    :data:`STRATEGY_COLUMNS` (backbone, inputs; None where its rows lack them); their metrics are
    the NaN-ignoring mean and std (ddof = :data:`STD_DDOF`) over seeds of every numeric column
    other than the keys (counts and best_epoch included); NaN where no seed has a value. Groups
    keep their first-seen order, each as its runs by seed, then mean, then std. Two rows with
    one (task, strategy, size, seed, test_sample), or runs of one group that disagree on a
    strategy column, are a :class:`TaufmError`.

    With the runs' ``details`` (:func:`evaluate_run`), the mean row's ``<metric>_ci68_low/high``
    are the interval of the seed mean over the test jets: the mean over seeds of each bootstrap
    replicate, its central 68%. Without them (or where a seed lacks replicates) they are the
    means of the runs' bounds.
    """
    replicates = _replicates_by_run(details)
    groups: dict[tuple, list[dict]] = {}
    seen: set[tuple] = set()
    for row in rows:
        missing = [k for k in (*RUN_KEYS, "test_sample") if k not in row]
        if missing:
            raise TaufmError(f"metrics row lacks key(s) {', '.join(missing)}: {dict(row)}")
        key = (row["task"], row["strategy"], row["size"], row["test_sample"])
        if (*key, row["seed"]) in seen:
            raise TaufmError(f"two metrics rows for task {key[0]}, strategy {key[1]}, size {key[2]}, seed {row['seed']}, sample {key[3]}")
        seen.add((*key, row["seed"]))
        groups.setdefault(key, []).append({**row, "statistic": "value"})
    out: list[dict] = []
    for (task, strategy, size, sample), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        out.extend(runs)
        names = [k for k in dict.fromkeys(k for r in runs for k in r) if k not in TABLE_KEYS]
        names = [k for k in names if all(_is_number(r[k]) or r.get(k) is None for r in runs if k in r)]
        described = _group_strategy_columns(runs)
        mean = {"task": task, "strategy": strategy, **described, "size": size, "seed": None, "statistic": "mean", "n_seeds": len(runs), "test_sample": sample}
        std = {**mean, "statistic": "std"}
        for name in names:
            values = [_NAN if r.get(name) is None else float(r[name]) for r in runs]
            mean[name], std[name] = _mean_std(values)
        if task in TASK_METRICS:
            group = [replicates.get((task, strategy, size, r["seed"], sample)) for r in runs]
            for metric in [m for m in mean if _is_headline(task, m)]:
                seed_mean = _seed_mean_replicates(group, metric)
                if seed_mean is not None and math.isfinite(mean[metric]):
                    low, high = _ci_keys(metric)
                    mean[low], mean[high] = interval(seed_mean)
                    std[low], std[high] = _NAN, _NAN
        out.extend([mean, std])
    return out


def _group_strategy_columns(runs: Sequence[Mapping]) -> dict:
    """The :data:`STRATEGY_COLUMNS` the runs of one group share (None where they lack one)."""
    described = {}
    for column in STRATEGY_COLUMNS:
        values = list(dict.fromkeys(r.get(column) for r in runs))
        if len(values) > 1:
            first = runs[0]
            raise TaufmError(
                f"metrics rows of task {first['task']}, strategy {first['strategy']}, size {first['size']}, sample {first['test_sample']}"
                f" disagree on {column}: {', '.join(map(repr, values))}"
            )
        described[column] = values[0]
    return described


def compare_strategies(rows: Sequence[Mapping], details: Sequence[Mapping] | None = None, comparisons: Sequence[tuple[str, str]] = COMPARISONS) -> list[dict]:
    """The paper's comparisons (:data:`COMPARISONS`, strategy a minus strategy b) per task, size
    and test sample where both strategies ran, for each headline metric and the best
    validation loss.

    Each row: ``mean_a``, ``mean_b``, ``std_a``, ``std_b`` (over seeds, ddof = :data:`STD_DDOF`),
    ``n_seeds_a/b``, ``difference`` = mean_a - mean_b, ``difference_seed_se`` (the standard error
    from the seed spread, sqrt(s_a²/n_a + s_b²/n_b) with ddof 1; NaN with one seed each) and
    ``difference_ci68_low/high``: the bootstrap interval over the test jets of the difference of
    the seed means, replicate by replicate. ``bootstrap`` says ``paired`` when every run of both
    strategies was tested on the same jets (same fingerprint), ``independent`` when not, and
    ``none`` without replicates (e.g. the validation loss).
    """
    replicates = _replicates_by_run(details)
    per_run = [r for r in rows if r.get("statistic", "value") == "value" and r.get("seed") is not None]
    groups: dict[tuple, dict[str, list[Mapping]]] = {}
    for r in per_run:
        groups.setdefault((r["task"], r["size"], r["test_sample"]), {}).setdefault(r["strategy"], []).append(r)
    out = []
    for (task, size, sample), by_strategy in groups.items():
        if task not in TASK_METRICS:
            continue
        names = dict.fromkeys(k for r in per_run if r["task"] == task for k in r)
        metrics = [m for m in names if m == "best_val_loss" or _is_headline(task, m)]
        for a, b in comparisons:
            if a not in by_strategy or b not in by_strategy:
                continue
            runs_a = sorted(by_strategy[a], key=lambda r: r["seed"])
            runs_b = sorted(by_strategy[b], key=lambda r: r["seed"])
            details_a = [replicates.get((task, a, size, r["seed"], sample)) for r in runs_a]
            details_b = [replicates.get((task, b, size, r["seed"], sample)) for r in runs_b]
            for metric in metrics:
                values_a = [_NAN if r.get(metric) is None else float(r[metric]) for r in runs_a]
                values_b = [_NAN if r.get(metric) is None else float(r[metric]) for r in runs_b]
                mean_a, std_a = _mean_std(values_a)
                mean_b, std_b = _mean_std(values_b)
                row = {
                    "task": task, "size": size, "test_sample": sample, "metric": metric, "strategy_a": a, "strategy_b": b,
                    "n_seeds_a": len(runs_a), "n_seeds_b": len(runs_b), "mean_a": mean_a, "mean_b": mean_b, "std_a": std_a, "std_b": std_b,
                    "difference": mean_a - mean_b, "difference_seed_se": _seed_standard_error(values_a, values_b),
                }
                low, high = _ci_keys("difference")
                row[low], row[high], row["bootstrap"] = _NAN, _NAN, "none"
                rep_a, rep_b = _seed_mean_replicates(details_a, metric), _seed_mean_replicates(details_b, metric)
                if rep_a is not None and rep_b is not None and rep_a.size == rep_b.size and math.isfinite(row["difference"]):
                    row[low], row[high] = interval(rep_a - rep_b)
                    prints = {None if d is None else d.get("jets_sha256") for d in (*details_a, *details_b)}
                    row["bootstrap"] = "paired" if len(prints) == 1 and None not in prints else "independent"
                out.append(row)
    return out


def grid_cost(rows: Sequence[Mapping], stage_costs: Mapping[str, Mapping] | None = None) -> list[dict]:
    """What the study cost, per figure point and in total.

    One row per (task, strategy, size) of the fine-tuning runs in ``rows`` (the per-run rows of
    :func:`run_metrics`, each run counted once whatever its test samples): ``n_runs`` (seeds),
    ``device_seconds`` and ``train_flops_estimate`` summed over them, their mean
    ``jets_per_second`` and ``flops_per_jet``, the largest ``peak_memory_mb``. Then one row per
    upstream training stage in ``stage_costs`` (name -> its cost: device_seconds,
    flops_per_jet, jets_trained, jets_per_second, peak_memory_mb; the tokenizer's summary.json,
    pretraining's model_config.json ``cost``), and a ``total`` row summing device-seconds and
    FLOPs over everything. ``stage`` says which kind a row is (``finetune``, the stage's name,
    ``total``). NaN where no run recorded a number.
    """
    runs: dict[tuple, Mapping] = {}
    for r in rows:
        if r.get("statistic", "value") != "value" or r.get("seed") is None:
            continue
        runs.setdefault((r["task"], r["strategy"], r["size"], r["seed"]), r)
    points: dict[tuple, list[Mapping]] = {}
    for (task, strategy, size, _seed), r in runs.items():
        points.setdefault((task, strategy, size), []).append(r)

    def number(r: Mapping, name: str) -> float:
        value = r.get(name)
        return float(value) if _is_number(value) else _NAN

    def summed(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(sum(finite)) if finite else _NAN

    def mean(values: list[float]) -> float:
        return _mean_std(values)[0]

    out: list[dict] = []
    for (task, strategy, size), point in points.items():
        out.append(
            {
                "stage": "finetune", "task": task, "strategy": strategy, "size": size, "n_runs": len(point),
                "device_seconds": summed([number(r, "device_seconds") for r in point]),
                "train_flops_estimate": summed([number(r, "train_flops_estimate") for r in point]),
                "jets_per_second": mean([number(r, "jets_per_second") for r in point]),
                "flops_per_jet": mean([number(r, "flops_per_jet") for r in point]),
                "peak_memory_mb": max((v for v in (number(r, "peak_memory_mb") for r in point) if math.isfinite(v)), default=_NAN),
            }
        )
    for name, cost in (stage_costs or {}).items():
        flops = number(cost, "flops_per_jet")
        jets = number(cost, "jets_trained")
        out.append(
            {
                "stage": name, "task": None, "strategy": None, "size": None, "n_runs": 1,
                "device_seconds": number(cost, "device_seconds"),
                "train_flops_estimate": TRAIN_FLOPS_PER_FORWARD * flops * jets,
                "jets_per_second": number(cost, "jets_per_second"),
                "flops_per_jet": flops,
                "peak_memory_mb": number(cost, "peak_memory_mb"),
            }
        )
    out.append(
        {
            "stage": "total", "task": None, "strategy": None, "size": None, "n_runs": sum(r["n_runs"] for r in out),
            "device_seconds": summed([r["device_seconds"] for r in out]),
            "train_flops_estimate": summed([r["train_flops_estimate"] for r in out]),
            "jets_per_second": _NAN, "flops_per_jet": _NAN,
            "peak_memory_mb": max((r["peak_memory_mb"] for r in out if math.isfinite(r["peak_memory_mb"])), default=_NAN),
        }
    )
    return out


def write_grid_cost(rows: Sequence[Mapping], csv_path: str | os.PathLike[str], parquet_path: str | os.PathLike[str]) -> None:
    """The rows of :func:`grid_cost` as a table (CSV and Parquet), :data:`GRID_COST_KEYS` first."""
    _write(_table(rows, GRID_COST_KEYS), csv_path, parquet_path)


def _seed_standard_error(values_a: Sequence[float], values_b: Sequence[float]) -> float:
    a = np.asarray([v for v in values_a if not math.isnan(v)])
    b = np.asarray([v for v in values_b if not math.isnan(v)])
    if a.size < 2 or b.size < 2:
        return _NAN
    return float(math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def _column_type(name: str, values: list) -> pa.DataType:
    if name in _KEY_TYPES:
        return _KEY_TYPES[name]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return pa.string()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return pa.int64()
    if all(_is_number(v) for v in present):
        return pa.float64()
    raise TaufmError(f"table column {name!r} mixes types: {sorted({type(v).__name__ for v in present})}")


def _table(rows: Sequence[Mapping], keys: Sequence[str] = TABLE_KEYS) -> pa.Table:
    seen = dict.fromkeys(k for r in rows for k in r)
    names = [*keys, *(k for k in RUN_COLUMNS if k in seen and k not in keys), *(k for k in seen if k not in keys and k not in RUN_COLUMNS)]
    arrays = {}
    for name in names:
        values = [r.get(name) for r in rows]
        kind = _column_type(name, values)
        if pa.types.is_floating(kind):
            values = [None if v is None else float(v) for v in values]
        elif pa.types.is_integer(kind):
            values = [None if v is None else int(v) for v in values]
        arrays[name] = pa.array(values, type=kind)
    return pa.table(arrays)


def _csv_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact form: "nan", "inf" and round-trip digits
    return str(value)


def write_table(rows: Sequence[Mapping], csv_path: str | os.PathLike[str], parquet_path: str | os.PathLike[str]) -> None:
    """Write the rows as one tidy table, to CSV and to Parquet, each atomically, same content.

    Columns: :data:`TABLE_KEYS`, then :data:`RUN_COLUMNS`, then every other key in first-seen
    order; a key a row lacks is empty in the CSV and null in Parquet. A numeric column is int64
    only if all its values are integers (so n_jets and best_epoch, averaged in the summary rows,
    are float64). Floats are written exactly (``repr``: "nan" for NaN); rows without
    ``statistic`` get "value" if they carry a seed.
    """
    rows = [{**r, "statistic": r.get("statistic", "value" if r.get("seed") is not None else None)} for r in rows]
    _write(_table(rows), csv_path, parquet_path)


def write_comparisons(rows: Sequence[Mapping], csv_path: str | os.PathLike[str], parquet_path: str | os.PathLike[str]) -> None:
    """The rows of :func:`compare_strategies` as a table (CSV and Parquet, like :func:`write_table`),
    :data:`COMPARISON_KEYS` first. No rows (no pair of strategies ran) gives a table of the keys alone."""
    _write(_table(rows, COMPARISON_KEYS), csv_path, parquet_path)


def write_probes(rows: Sequence[Mapping], csv_path: str | os.PathLike[str], parquet_path: str | os.PathLike[str]) -> None:
    """The embedding probes of :func:`taufm.evaluate.embeddings.probe_decay_modes` as a table
    (CSV and Parquet), :data:`PROBE_KEYS` first."""
    _write(_table(rows, PROBE_KEYS), csv_path, parquet_path)


def _write(table: pa.Table, csv_path: str | os.PathLike[str], parquet_path: str | os.PathLike[str]) -> None:
    with atomic_output(parquet_path) as tmp:
        pq.write_table(table, tmp)
    with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.column_names)
        for record in table.to_pylist():
            writer.writerow([_csv_text(record[name]) for name in table.column_names])
