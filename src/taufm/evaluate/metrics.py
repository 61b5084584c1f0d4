"""Test-set metrics of fine-tuning runs (SPEC §5) and their tidy table over seeds (SPEC §8).

Building blocks work on plain arrays: ROC curve and AUC, misID rate at a tau efficiency, pT
response and resolution (overall and in bins), decay-mode AUCs and confusion counts, the best
validation loss of a ``history.csv``. :func:`run_metrics` turns one run directory
(``docs/data-format.md``, "Fine-tuning runs") into one row per test sample, :func:`aggregate`
adds the mean and spread over seeds, and :func:`write_table` writes the rows as CSV and Parquet.

Physics oddities (a class absent from a test sample, no finite pT ratio, a diverged model giving
NaN scores) give NaN metrics, never an exception; missing or unreadable files and missing
columns are a :class:`~taufm.errors.TaufmError` naming the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn import metrics as skm

from taufm.data import read_shards
from taufm.errors import TaufmError
from taufm.io import atomic_output
from taufm.physics.tau import DECAY_MODE_NAMES

DEFAULT_EFFICIENCY = 0.8  # tau efficiency of the misID working point (SPEC §5)
BACKGROUND_SAMPLE = "qq"  # tau ID: the background every tau sample is measured against
STD_DDOF = 0  # aggregate(): std over seeds is the population std of the seeds run (0 for one seed)

PREDICTIONS_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.csv"

RUN_KEYS = ("task", "strategy", "size", "seed")  # from summary.json
# Leading columns of the tidy table; the metrics follow in first-seen order.
TABLE_KEYS = ("task", "strategy", "size", "seed", "statistic", "n_seeds", "test_sample")
_KEY_TYPES = {
    "task": pa.string(),
    "strategy": pa.string(),
    "size": pa.int64(),
    "seed": pa.int64(),
    "statistic": pa.string(),
    "n_seeds": pa.int64(),
    "test_sample": pa.string(),
}
STATISTICS = ("value", "mean", "std")
RUN_COLUMNS = ("n_jets", "best_val_loss", "best_epoch")  # follow the keys in the table, before the metrics

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
    tpr, fpr = roc_curve(label, score)
    if tpr.size == 0:
        return _NAN
    i = int(np.argmax(tpr >= efficiency))  # tpr ends at 1, so some point reaches it
    if tpr[i] == efficiency or i == 0:
        return float(fpr[i])
    t0, t1, f0, f1 = tpr[i - 1], tpr[i], fpr[i - 1], fpr[i]
    return float(f0 + (efficiency - t0) * (f1 - f0) / (t1 - t0))


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
    finite = ~np.isnan(losses)
    if not finite.any():
        return _NAN, -1
    i = int(np.flatnonzero(finite)[np.argmin(losses[finite])])
    return float(losses[i]), epochs[i]


def _run_info(path: Path) -> dict:
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
        return {"task": str(summary["task"]), "strategy": str(summary["strategy"]), "size": int(summary["size"]), "seed": int(summary["seed"])}
    except (TypeError, ValueError) as err:
        raise TaufmError(f"{path}: size and seed must be integers ({err})") from err


def _tau_id_rows(columns: Mapping[str, np.ndarray], samples: Sequence[str], efficiency: float) -> list[dict]:
    label = columns["label"].astype(np.int64) == 1
    score = columns["score"]
    is_bkg_sample = columns["sample"] == BACKGROUND_SAMPLE
    bkg = is_bkg_sample & ~label
    rows = []
    for sample in samples:
        here = columns["sample"] == sample
        row = {"n_signal": int(np.sum(here & label)), "n_background": int(np.sum(here & ~label)), "auc": _NAN, f"misid_at_{round(100 * efficiency)}": _NAN}
        if sample != BACKGROUND_SAMPLE:
            sig = here & label
            keep = sig | bkg
            row["auc"] = roc_auc(label[keep], score[keep])
            row[f"misid_at_{round(100 * efficiency)}"] = misid_at_efficiency(label[keep], score[keep], efficiency)
        rows.append(row)
    return rows


def _pt_regression_rows(columns: Mapping[str, np.ndarray], samples: Sequence[str], efficiency: float) -> list[dict]:  # noqa: ARG001
    rows = []
    for sample in samples:
        here = columns["sample"] == sample
        r = response_resolution(columns["pred_pt"][here], columns["gen_tau_vis_pt"][here])
        rows.append({"response": r["response"], "resolution_iqr": r["iqr"], "resolution_iqr_over_median": r["iqr_over_median"]})
    return rows


def _decay_mode_rows(columns: Mapping[str, np.ndarray], samples: Sequence[str], efficiency: float) -> list[dict]:  # noqa: ARG001
    probs = np.stack([columns[f"prob_{name}"] for name in DECAY_MODE_NAMES], axis=1)
    rows = []
    for sample in samples:
        here = columns["sample"] == sample
        true = columns["decay_mode"][here].astype(np.int64)
        aucs = decay_mode_aucs(true, probs[here])
        accuracy = float(np.mean(columns["pred_decay_mode"][here].astype(np.int64) == true)) if true.size else _NAN
        rows.append({"auc_weighted": aucs["weighted"], **{f"auc_{name}": aucs[name] for name in DECAY_MODE_NAMES}, "accuracy": accuracy})
    return rows


_Metrics = Callable[[Mapping[str, np.ndarray], Sequence[str], float], list[dict]]
# Per task: the prediction columns its metrics need, and the function computing them per sample.
TASK_METRICS: dict[str, tuple[tuple[str, ...], _Metrics]] = {
    "tau_id": (("label", "score"), _tau_id_rows),
    "pt_regression": (("pred_pt", "gen_tau_vis_pt"), _pt_regression_rows),
    "decay_mode": (("decay_mode", "pred_decay_mode", *(f"prob_{n}" for n in DECAY_MODE_NAMES)), _decay_mode_rows),
}


def run_metrics(run_dir: str | os.PathLike[str], efficiency: float = DEFAULT_EFFICIENCY) -> list[dict]:
    """One row per test sample of a fine-tuning run directory, in the order the samples appear.

    Every row has task, strategy, size, seed (``summary.json``), test_sample, n_jets,
    best_val_loss and best_epoch (``history.csv``), then the task's metrics:

    - tau_id: n_signal, n_background (jets of the sample with label 1 / 0), auc and
      misid_at_80 (``efficiency`` = 0.8): the sample's tau jets (label 1) against the label-0
      jets of the ``qq`` sample. The ``qq`` row itself has counts only (NaN metrics).
    - pt_regression: response, resolution_iqr, resolution_iqr_over_median of pred_pt / gen_tau_vis_pt.
    - decay_mode: auc_weighted, auc_<name> per decay mode, accuracy (truth: ``decay_mode``).
    """
    run_dir = Path(run_dir)
    info = _run_info(run_dir / SUMMARY_FILE)
    if info["task"] not in TASK_METRICS:
        raise TaufmError(f"{run_dir / SUMMARY_FILE}: unknown task {info['task']!r}; known: {', '.join(TASK_METRICS)}")
    best_loss, best_epoch = best_validation_loss(run_dir / HISTORY_FILE)
    needed, compute = TASK_METRICS[info["task"]]
    path = run_dir / PREDICTIONS_FILE
    try:
        columns = read_shards([path], ["sample", *needed])
    except (OSError, pa.ArrowException) as err:  # read_shards itself names missing files and columns
        raise TaufmError(f"{path}: cannot read the predictions ({err})") from err
    if len(columns["sample"]) == 0:
        raise TaufmError(f"{path}: no test jets in the predictions")
    columns["sample"] = columns["sample"].astype(str)
    samples = list(dict.fromkeys(columns["sample"].tolist()))
    metrics = compute(columns, samples, efficiency)
    return [
        {**info, "test_sample": sample, "n_jets": int(np.sum(columns["sample"] == sample)), "best_val_loss": best_loss, "best_epoch": best_epoch, **m}
        for sample, m in zip(samples, metrics)
    ]


# --- aggregation and the table ---------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return _NAN, _NAN
    std = float(finite.std(ddof=STD_DDOF)) if finite.size > STD_DDOF else _NAN
    return float(finite.mean()), std


def aggregate(rows: Sequence[Mapping]) -> list[dict]:
    """The per-run rows (``statistic`` = "value") plus, per (task, strategy, size, test_sample),
    a "mean" and a "std" row over seeds.

    Summary rows have ``seed`` = None and ``n_seeds`` (the runs in the group); their metrics are
    the NaN-ignoring mean and std (ddof = :data:`STD_DDOF`) over seeds of every numeric column
    other than the keys (counts and best_epoch included); NaN where no seed has a value. Groups
    keep their first-seen order, each as its runs by seed, then mean, then std. Two rows with
    one (task, strategy, size, seed, test_sample) are a :class:`TaufmError`.
    """
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
        mean = {"task": task, "strategy": strategy, "size": size, "seed": None, "statistic": "mean", "n_seeds": len(runs), "test_sample": sample}
        std = {**mean, "statistic": "std"}
        for name in names:
            values = [_NAN if r.get(name) is None else float(r[name]) for r in runs]
            mean[name], std[name] = _mean_std(values)
        out.extend([mean, std])
    return out


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


def _table(rows: Sequence[Mapping]) -> pa.Table:
    seen = dict.fromkeys(k for r in rows for k in r)
    names = [*TABLE_KEYS, *(k for k in RUN_COLUMNS if k in seen), *(k for k in seen if k not in TABLE_KEYS and k not in RUN_COLUMNS)]
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
    table = _table(rows)
    with atomic_output(parquet_path) as tmp:
        pq.write_table(table, tmp)
    with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.column_names)
        for record in table.to_pylist():
            writer.writerow([_csv_text(record[name]) for name in table.column_names])
