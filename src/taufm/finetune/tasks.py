"""The three downstream tasks (SPEC §5): targets, losses, predictions and per-epoch metrics.

Each task is a name in :data:`TASK_NAMES`; everything task-specific a training loop needs (how
many outputs the head has, what it regresses or classifies, its loss, how raw outputs become
physics predictions, and what goes into the per-epoch history) is a function of that name here,
so the loop itself has no ``if task == ...`` in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from taufm.config import reject_unknown_keys
from taufm.errors import TaufmError
from taufm.evaluate import metrics
from taufm.physics.tau import DECAY_MODE_NAMES

TASK_NAMES = ("tau_id", "pt_regression", "decay_mode")


@dataclass(frozen=True)
class TaskSettings:
    """Per-task settings; :func:`default_task_settings` gives SPEC §5 / the reference values."""

    train_samples: tuple[str, ...]
    test_samples: tuple[str, ...]
    min_jet_pt: float  # reco jet pT cut (GeV)
    signal_only: bool  # train and test on tau jets only
    focal_gamma: float = 2.0  # tau_id
    class_weights: tuple[float, float] = (10.0, 1.0)  # tau_id: (background, signal)
    huber_delta: float = 1.0  # pt_regression

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists), for resolved-config files."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_DEFAULTS = {
    "tau_id": TaskSettings(
        train_samples=("Z_Ztautau", "qq"),
        test_samples=("Z_Ztautau", "ZH_Htautau", "qq"),
        min_jet_pt=20.0,
        signal_only=False,
    ),
    "pt_regression": TaskSettings(
        train_samples=("Z_Ztautau",),
        test_samples=("Z_Ztautau", "ZH_Htautau"),
        min_jet_pt=0.0,
        signal_only=True,
    ),
    "decay_mode": TaskSettings(
        train_samples=("Z_Ztautau",),
        test_samples=("Z_Ztautau", "ZH_Htautau"),
        min_jet_pt=5.0,
        signal_only=True,
    ),
}


def check_task(task: str) -> str:
    """``task`` itself, or a :class:`TaufmError` naming it and listing the known tasks."""
    if task not in TASK_NAMES:
        raise TaufmError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
    return task


def default_task_settings(task: str) -> TaskSettings:
    """SPEC §5 defaults (reference cuts and samples) for ``task``."""
    return _DEFAULTS[check_task(task)]


def _sample_tuple(value, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise TaufmError(f"{key} must be a non-empty list of sample names, got {value!r}")
    return tuple(value)


def task_settings(task: str, overrides: Mapping | None) -> TaskSettings:
    """The defaults of ``task`` with the config's ``overrides`` applied and checked."""
    settings = default_task_settings(task)
    values = dict(overrides or {})
    reject_unknown_keys(values, (f.name for f in dataclasses.fields(TaskSettings)), f"finetune task {task!r}")
    for key in ("train_samples", "test_samples"):
        if key in values:
            values[key] = _sample_tuple(values[key], f"{task}.{key}")
    if "class_weights" in values:
        weights = values["class_weights"]
        try:
            if not isinstance(weights, (list, tuple)) or len(weights) != 2:
                raise ValueError
            values["class_weights"] = (float(weights[0]), float(weights[1]))
        except (TypeError, ValueError) as err:
            raise TaufmError(f"{task}.class_weights must be two numbers (background, signal), got {weights!r}") from err
        if min(values["class_weights"]) <= 0:
            raise TaufmError(f"{task}.class_weights must be positive, got {weights!r}")
    for key in ("min_jet_pt", "focal_gamma", "huber_delta"):
        if key in values:
            try:
                values[key] = float(values[key])
            except (TypeError, ValueError) as err:
                raise TaufmError(f"{task}.{key} must be a number, got {values[key]!r}") from err
    if "signal_only" in values and not isinstance(values["signal_only"], bool):
        raise TaufmError(f"{task}.signal_only must be true or false, got {values['signal_only']!r}")
    settings = dataclasses.replace(settings, **values)
    if settings.min_jet_pt < 0 or settings.focal_gamma < 0:
        raise TaufmError(f"{task}: min_jet_pt and focal_gamma must be non-negative")
    if settings.huber_delta <= 0:
        raise TaufmError(f"{task}.huber_delta must be positive, got {settings.huber_delta}")
    return settings


def n_outputs(task: str) -> int:
    """Width of the task head's output: one logit, one log-ratio, or one logit per decay mode."""
    return {"tau_id": 1, "pt_regression": 1, "decay_mode": len(DECAY_MODE_NAMES)}[check_task(task)]


def require_column(columns: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """``columns[name]`` as an array, or a :class:`TaufmError` naming the missing column."""
    if name not in columns:
        raise TaufmError(f"column {name!r} missing (needed by the task)")
    return np.asarray(columns[name])


def targets(task: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per jet: the label (float32 0/1), log(gen visible tau pT / jet pT) (float32) or decay mode (int64)."""
    check_task(task)
    if task == "tau_id":
        return require_column(columns, "label").astype(np.float32)
    if task == "pt_regression":
        gen_pt = require_column(columns, "gen_tau_vis_pt").astype(np.float64)
        jet_pt = require_column(columns, "jet_pt").astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(gen_pt / jet_pt).astype(np.float32)
    modes = require_column(columns, "decay_mode").astype(np.int64)
    bad = (modes < 0) | (modes >= len(DECAY_MODE_NAMES))
    if np.any(bad):
        raise TaufmError(f"decay_mode outside 0..{len(DECAY_MODE_NAMES) - 1} for {int(bad.sum())} jet(s) (background jets in a tau-only task?)")
    return modes


def _first_output(outputs):
    """Column 0 of (N, 1) outputs, or (N,) outputs as they are."""
    return outputs[:, 0] if outputs.ndim == 2 else outputs


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, class_weights: tuple[float, float]) -> torch.Tensor:
    """Binary focal loss: the plain mean over jets of ``-w_y (1 - p_t)^gamma log(p_t)``.

    ``p_t`` is sigmoid(logit) for y = 1 and 1 - sigmoid(logit) for y = 0; ``w_y`` is
    ``class_weights[y]`` (background, signal). The mean is not normalised by the weights.
    """
    y = target.float()
    log_pt = y * F.logsigmoid(logits) + (1.0 - y) * F.logsigmoid(-logits)
    weight = y * class_weights[1] + (1.0 - y) * class_weights[0]
    return (-weight * (1.0 - log_pt.exp()).pow(gamma) * log_pt).mean()


def loss(task: str, outputs: torch.Tensor, target: torch.Tensor, settings: TaskSettings) -> torch.Tensor:
    """The task loss, averaged over the batch (computed in float32 whatever the autocast dtype).

    tau_id: :func:`focal_loss` with ``settings.focal_gamma`` and ``settings.class_weights``;
    pt_regression: Huber(``settings.huber_delta``) on the log-ratio; decay_mode: cross entropy.
    """
    check_task(task)
    outputs = outputs.float()
    if task == "tau_id":
        return focal_loss(_first_output(outputs), target, settings.focal_gamma, settings.class_weights)
    if task == "pt_regression":
        return F.huber_loss(_first_output(outputs), target.float(), delta=settings.huber_delta)
    return F.cross_entropy(outputs, target.long())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict(task: str, outputs: np.ndarray, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-jet predictions from raw head outputs.

    tau_id: ``score`` (sigmoid); pt_regression: ``pred_pt`` = exp(out) * jet_pt and
    ``pred_log_ratio`` = out; decay_mode: ``pred_decay_mode`` (argmax) and ``prob_<name>`` per
    decay mode (softmax).
    """
    check_task(task)
    outputs = np.asarray(outputs, dtype=np.float64)
    if task == "tau_id":
        return {"score": _sigmoid(_first_output(outputs)).astype(np.float32)}
    if task == "pt_regression":
        out = _first_output(outputs)
        with np.errstate(over="ignore"):
            pred_pt = np.exp(out) * require_column(columns, "jet_pt").astype(np.float64)
        return {"pred_pt": pred_pt.astype(np.float32), "pred_log_ratio": out.astype(np.float32)}
    if outputs.ndim != 2 or outputs.shape[1] != len(DECAY_MODE_NAMES):
        raise TaufmError(f"decay_mode outputs must have shape (jets, {len(DECAY_MODE_NAMES)}), got {outputs.shape}")
    probs = _softmax(outputs)
    result = {"pred_decay_mode": probs.argmax(axis=1).astype(np.int64)}
    for i, name in enumerate(DECAY_MODE_NAMES):
        result[f"prob_{name}"] = probs[:, i].astype(np.float32)
    return result


def epoch_metrics(task: str, outputs: np.ndarray, target: np.ndarray, columns: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Validation metrics for the per-epoch history, by the test metrics' own definitions
    (:mod:`taufm.evaluate.metrics`).

    tau_id: ``auc`` (:func:`~taufm.evaluate.metrics.roc_auc`); pt_regression: ``response_median``
    and ``resolution_iqr`` (q75 - q25) of pred_pt / gen_tau_vis_pt over jets where that ratio is
    finite (:func:`~taufm.evaluate.metrics.response_resolution`); decay_mode: ``accuracy`` and
    ``auc_weighted``, the one-vs-rest AUCs averaged with class-frequency weights over the classes
    present, NaN when fewer than two are (:func:`~taufm.evaluate.metrics.decay_mode_aucs`).
    Empty inputs give NaN.
    """
    check_task(task)
    pred = predict(task, outputs, columns)
    if task == "tau_id":
        return {"auc": metrics.roc_auc(target, pred["score"])}
    if task == "pt_regression":
        r = metrics.response_resolution(pred["pred_pt"], require_column(columns, "gen_tau_vis_pt"))
        return {"response_median": r["response"], "resolution_iqr": r["iqr"]}
    target = np.asarray(target).astype(np.int64)
    if target.size == 0:
        return {"accuracy": float("nan"), "auc_weighted": float("nan")}
    accuracy = float(np.mean(pred["pred_decay_mode"] == target))
    probabilities = np.stack([pred[f"prob_{name}"] for name in DECAY_MODE_NAMES], axis=1)
    return {"accuracy": accuracy, "auc_weighted": metrics.decay_mode_aucs(target, probabilities)["weighted"]}
