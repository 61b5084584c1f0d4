"""Training curves from a stage's ``history.csv``: a figure job, apart from the training itself.

Drawing them in a figure rule (not in the training stage) keeps a style change from rerunning a
training: ``plots/style.py`` is in the figure stages' source hash only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from taufm.errors import TaufmError
from taufm.plots.style import new_figure, save_figure, taufm_style

CURVES = (("train_loss", "training", "o"), ("val_loss", "validation", "s"))


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of a history CSV with ``epoch``, ``train_loss`` and ``val_loss`` columns."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise TaufmError(f"{path}: cannot read the training history ({err.strerror})") from err
    if not rows:
        raise TaufmError(f"{path}: the training history has no epochs")
    missing = {"epoch", *(column for column, _, _ in CURVES)} - set(rows[0])
    if missing:
        raise TaufmError(f"{path}: training history lacks column(s) {', '.join(sorted(missing))}")
    try:
        return [{k: float(row[k]) for k in ("epoch", *(c for c, _, _ in CURVES)) if row[k] != ""} for row in rows]
    except ValueError as err:
        raise TaufmError(f"{path}: a non-numeric loss in the training history ({err})") from err


def plot_loss_curve(history: str | Path, stem: str | Path, title: str, ylabel: str) -> dict[str, float]:
    """Training and validation loss per epoch (PNG + PDF); returns the last and best values."""
    rows = read_history(history)
    with taufm_style():
        fig, axes = new_figure()
        ax = axes[0, 0]
        for column, label, marker in CURVES:
            points = [(row["epoch"] + 1, row[column]) for row in rows if column in row]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        save_figure(fig, stem)
    validation = [row["val_loss"] for row in rows if "val_loss" in row]
    return {"epochs": len(rows), "last_train_loss": rows[-1]["train_loss"], "best_val_loss": min(validation) if validation else float("nan")}
