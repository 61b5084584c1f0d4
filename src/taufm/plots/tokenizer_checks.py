"""The tokenizer cross-checks of the paper (Fig. 2 and 3): what survives encode -> quantise -> decode.

Jets of one split are passed through the trained VQ-VAE tokenizer
(:func:`taufm.tokenizer.reconstruct.reconstruct_shards`), once for JetClass (all processes
together) and once per Fuτure sample, and the reconstructed candidates are compared with the
originals. Three figures are written into the output directory:

- ``fig2_residuals``: one panel per continuous feature, normalised histograms of the residual,
  one line per dataset (JetClass and each Fuτure sample). pT is shown as the relative residual
  (reco - true) / true; Δη, Δφ and mass as absolute residuals reco - true. Each x range is
  symmetric around zero, wide enough for the bulk of the JetClass residuals
  (:data:`RANGE_QUANTILE` of |residual|, rounded up); entries outside are counted into the edge
  bins and the legend says how many. The legend also gives each line's IQR.
- ``fig3_pid_confusion``: the paper's Fig. 3. True PID (x) against reconstructed PID (y) for
  JetClass (left) and Fuτure (right, all samples together), normalised by reconstructed values:
  each row (one reconstructed class) sums to 1. Rows of a class never reconstructed are left
  blank ("n/a"). The fraction is printed in every cell.
- ``fig3_charge_confusion``: the same for the charge (-1, 0, +1), a companion figure of the same
  layout rather than extra panels, so that ``fig3_pid_confusion`` stays the paper's figure.

Candidates are those the tokenizer sees: inside its angular window, with pT > 0. Everything is
computed and checked before any figure is drawn, so bad input leaves no file behind. The numbers
drawn are returned as a JSON-friendly dict (``None`` where a number is undefined).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import mplhep as hep
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from taufm import paths
from taufm.errors import TaufmError
from taufm.models.vqvae import VQVAE
from taufm.plots.style import new_figure, no_data_panel, save_figure, taufm_style
from taufm.tokenizer.preprocessing import CHARGE_VALUES, CONTINUOUS, PID_NAMES, Preprocessing
from taufm.tokenizer.reconstruct import reconstruct_shards
from taufm.tokenizer.train import load_tokenizer

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

JETCLASS = "JetClass"
FUTURE = "Future"  # key of all Fuτure samples together (the right panel of Fig. 3)
FIG2_STEM = paths.FIG2_STEM
FIG3_PID_STEM = paths.FIG3_PID_STEM
FIG3_CHARGE_STEM = paths.FIG3_CHARGE_STEM
OUTPUT_STEMS = paths.TOKENIZER_FIGURE_STEMS

# Residual x ranges: this quantile of the JetClass |residual|, times a margin, rounded up.
RANGE_QUANTILE = 0.98
_RANGE_MARGIN = 1.25
_N_BINS = 60

# Per continuous feature (order of taufm.tokenizer.preprocessing.CONTINUOUS): relative residual?,
# panel title, x-axis label, unit of the IQR in the legend.
_RESIDUALS: dict[str, tuple[bool, str, str, str]] = {
    "pt": (True, "Candidate $p_T$", r"$(p_T^{\mathrm{reco}} - p_T^{\mathrm{true}})\,/\,p_T^{\mathrm{true}}$", ""),
    "deta": (
        False,
        r"Candidate $\Delta\eta$ to the jet axis",
        r"$\Delta\eta^{\mathrm{reco}} - \Delta\eta^{\mathrm{true}}$",
        "",
    ),
    "dphi": (
        False,
        r"Candidate $\Delta\phi$ to the jet axis",
        r"$\Delta\phi^{\mathrm{reco}} - \Delta\phi^{\mathrm{true}}$ [rad]",
        " rad",
    ),
    "mass": (False, "Candidate mass", r"$m^{\mathrm{reco}} - m^{\mathrm{true}}$ [GeV]", " GeV"),
}

_DATASET_LABELS = {
    JETCLASS: "JetClass",
    FUTURE: "Fuτure",
    "Z_Ztautau": r"Fuτure $Z\to\tau\tau$",
    "ZH_Htautau": r"Fuτure $ZH,\,H\to\tau\tau$",
    "qq": r"Fuτure $Z/\gamma^{*}\to q\bar{q}$",
}
_DATASET_COLORS = {JETCLASS: "#222222", "Z_Ztautau": "#5790fc", "ZH_Htautau": "#e42536", "qq": "#f89c20"}
_OTHER_COLORS = ("#964a8b", "#7a21dd", "#9c9ca1", "#a96b59", "#3f90da")

PID_TICK_LABELS = tuple(name.replace(" ", "\n") for name in PID_NAMES)
CHARGE_TICK_LABELS = tuple(f"{q:+d}" if q else "0" for q in CHARGE_VALUES)
_MATRIX_CMAP = colormaps["Blues"].with_extremes(bad="0.92")


def plot_tokenizer_checks(
    tokenizer: PathLike,
    jetclass_shards: Sequence[PathLike],
    future_shards: Mapping[str, Sequence[PathLike]],
    output_dir: PathLike,
    *,
    split: str = "test",
    max_jets: int = 5000,
    seed: int = 0,
) -> dict:
    """Draw Fig. 2 and Fig. 3 (plus the charge confusion) into ``output_dir``; return their numbers.

    Up to ``max_jets`` jets (a seeded subset) of ``split`` are reconstructed from the JetClass
    shards (all processes together) and from each Fuτure sample (the keys of ``future_shards``).
    Raises :class:`TaufmError`, writing nothing, for a missing or foreign tokenizer file, a missing
    or unreadable shard or column, an empty shard list, or a dataset without candidates in ``split``.
    """
    datasets: dict[str, Sequence[PathLike]] = {JETCLASS: _as_list(jetclass_shards)}
    for sample, shards in future_shards.items():
        if sample in datasets:
            raise TaufmError(f"tokenizer checks: Fuτure sample name {sample!r} clashes with the JetClass dataset")
        datasets[sample] = _as_list(shards)
    for name, shards in datasets.items():
        if not shards:
            raise TaufmError(f"tokenizer checks: no shards given for {name}")

    model, preprocessing = load_tokenizer(tokenizer)
    recos = {name: _reconstruct(model, preprocessing, name, shards, split, max_jets, seed) for name, shards in datasets.items()}
    residuals = {name: _residuals(reco) for name, reco in recos.items()}
    ranges = {feature: _half_width(residuals, feature) for feature in CONTINUOUS}

    samples = [name for name in datasets if name != JETCLASS]
    panels = {JETCLASS: recos[JETCLASS]}
    if samples:
        panels[FUTURE] = {k: np.concatenate([recos[s][k] for s in samples]) for k in recos[JETCLASS]}
    confusions = {
        name: {
            "pid": _confusion(reco["pid_true"], reco["pid_reco"], PID_NAMES),
            "charge": _confusion(reco["charge_true"] + 1, reco["charge_reco"] + 1, CHARGE_TICK_LABELS),
        }
        for name, reco in panels.items()
    }

    summary: dict = {
        "split": split,
        "max_jets": max_jets,
        "seed": seed,
        "tokenizer": str(tokenizer),
        "future_samples": samples,
        "residual_range": {f: ranges[f] for f in CONTINUOUS},
        "datasets": {name: _dataset_summary(recos[name], residuals[name], ranges) for name in datasets},
        "confusion": {name: {kind: _public(c) for kind, c in kinds.items()} for name, kinds in confusions.items()},
    }

    out = Path(output_dir)
    with taufm_style():
        figures = {
            FIG2_STEM: _draw_residuals(residuals, ranges, summary["datasets"], split),
            FIG3_PID_STEM: _draw_confusions(confusions, "pid", split),
            FIG3_CHARGE_STEM: _draw_confusions(confusions, "charge", split),
        }
        files = {}
        for stem, fig in figures.items():
            png, pdf = save_figure(fig, out / stem)
            files[stem] = {"png": str(png), "pdf": str(pdf)}
    summary["files"] = files
    log.info("tokenizer checks: %s", {n: (d["n_candidates"], d["pid"]["accuracy"]) for n, d in summary["datasets"].items()})
    return summary


# --- numbers -----------------------------------------------------------------------------------


def _as_list(shards: Sequence[PathLike] | PathLike) -> list[PathLike]:
    return [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)


def _reconstruct(
    model: VQVAE, preprocessing: Preprocessing, name: str, shards: Sequence[PathLike], split: str, max_jets: int, seed: int
) -> dict[str, np.ndarray]:
    """Reconstruct one dataset; fail naming it and its files when nothing (or nonsense) comes back."""
    reco = reconstruct_shards(model, preprocessing, shards, split=split, max_jets=max_jets, seed=seed)
    files = ", ".join(map(str, shards))
    if len(reco["pid_true"]) == 0:
        raise TaufmError(f"tokenizer checks: {name} has no candidates in the {split} split of {files}")
    for key in ("continuous_true", "continuous_reco"):
        if not np.all(np.isfinite(reco[key])):
            what = "input features" if key == "continuous_true" else "reconstructed features"
            raise TaufmError(f"tokenizer checks: {name} has NaN or infinite {what} in the {split} split of {files}")
    return reco


def _residuals(reco: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    true = reco["continuous_true"].astype(np.float64)
    rec = reco["continuous_reco"].astype(np.float64)
    out = {}
    for j, feature in enumerate(CONTINUOUS):
        diff = rec[:, j] - true[:, j]
        out[feature] = diff / true[:, j] if _RESIDUALS[feature][0] else diff
    return out


def _half_width(residuals: Mapping[str, Mapping[str, np.ndarray]], feature: str) -> float:
    """Half-width of the symmetric x range of ``feature`` from the JetClass residuals.

    Falls back to all datasets, then to 1, if the JetClass residuals are all zero.
    """
    candidates = [residuals[JETCLASS][feature], np.concatenate([r[feature] for r in residuals.values()])]
    for values in candidates:
        width = float(np.quantile(np.abs(values), RANGE_QUANTILE)) * _RANGE_MARGIN
        if width > 0 and math.isfinite(width):
            return _nice_ceil(width)
    return 1.0


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (times a power of ten) that is >= ``x``."""
    scale = 10.0 ** math.floor(math.log10(x))
    for m in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if m * scale >= x * (1 - 1e-12):
            return float(f"{m * scale:.6g}")
    return 10.0 * scale  # pragma: no cover (the loop ends at 10)


def _dataset_summary(reco: Mapping[str, np.ndarray], residuals: Mapping[str, np.ndarray], ranges: Mapping[str, float]) -> dict:
    out: dict = {"n_candidates": int(len(reco["pid_true"])), "residuals": {}}
    for feature in CONTINUOUS:
        values = residuals[feature]
        q25, median, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
        width = ranges[feature]
        out["residuals"][feature] = {
            "kind": "relative" if _RESIDUALS[feature][0] else "absolute",
            "median": median,
            "q25": q25,
            "q75": q75,
            "iqr": q75 - q25,
            "n_outside_range": int(np.count_nonzero(np.abs(values) > width)),
        }
    for kind, (true, reco_) in {"pid": ("pid_true", "pid_reco"), "charge": ("charge_true", "charge_reco")}.items():
        offset = 1 if kind == "charge" else 0
        names = PID_NAMES if kind == "pid" else CHARGE_TICK_LABELS
        c = _confusion(reco[true] + offset, reco[reco_] + offset, names)
        out[kind] = {"accuracy": c["accuracy"], "recall": c["recall"]}
    return out


def _confusion(true: np.ndarray, reco: np.ndarray, names: Sequence[str]) -> dict:
    """Counts[reco, true], the row-normalised fractions (NaN rows where a class is never
    reconstructed), accuracy and per-class recall (``None`` for a class absent from the truth)."""
    n = len(names)
    counts = np.bincount(reco.astype(np.int64) * n + true.astype(np.int64), minlength=n * n).reshape(n, n)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.full((n, n), np.nan)
    np.divide(counts, rows, out=fractions, where=rows > 0)
    per_true = counts.sum(axis=0)
    diagonal = np.diag(counts)
    recall = {name: (float(diagonal[i] / per_true[i]) if per_true[i] else None) for i, name in enumerate(names)}
    return {
        "classes": list(names),
        "counts": counts,
        "fractions": fractions,
        "accuracy": float(diagonal.sum() / counts.sum()),
        "recall": recall,
        "n_candidates": int(counts.sum()),
    }


def _public(c: Mapping) -> dict:
    """JSON-friendly copy of a :func:`_confusion` result (rows: reconstructed class, columns: true)."""
    return {
        "classes": c["classes"],
        "counts_reco_by_true": c["counts"].tolist(),
        "fractions_reco_by_true": [[None if math.isnan(v) else float(v) for v in row] for row in c["fractions"]],
        "accuracy": c["accuracy"],
        "recall": c["recall"],
        "n_candidates": c["n_candidates"],
    }


# --- drawing -----------------------------------------------------------------------------------


def _label(name: str) -> str:
    return _DATASET_LABELS.get(name, f"Fuτure {name}")


def _percent(fraction: float) -> str:
    return "<0.1%" if fraction < 0.001 else f"{fraction:.1%}"


def _colors(names: Sequence[str]) -> dict[str, str]:
    others = iter(_OTHER_COLORS * (len(names) // len(_OTHER_COLORS) + 1))
    return {name: _DATASET_COLORS.get(name) or next(others) for name in names}


def _draw_residuals(
    residuals: Mapping[str, Mapping[str, np.ndarray]], ranges: Mapping[str, float], numbers: Mapping[str, Mapping], split: str
) -> Figure:
    fig, axes = new_figure(2, 2, panel_size=(6.5, 5.0))
    colors = _colors(list(residuals))
    for ax, feature in zip(axes.ravel(), CONTINUOUS, strict=True):
        _, title, xlabel, unit = _RESIDUALS[feature]
        width = ranges[feature]
        edges = np.linspace(-width, width, _N_BINS + 1)
        top = 0.0
        for name, values in residuals.items():
            counts, _ = np.histogram(np.clip(values[feature], -width, width), bins=edges)
            fractions = counts / len(values[feature])
            top = max(top, float(fractions.max()))
            stats = numbers[name]["residuals"][feature]
            label = f"{_label(name)}: IQR {stats['iqr']:.3g}{unit}"
            if stats["n_outside_range"]:
                label += f", {_percent(stats['n_outside_range'] / len(values[feature]))} in edge bins"
            if name == JETCLASS:
                hep.histplot(fractions, edges, ax=ax, color=colors[name], histtype="fill", alpha=0.15, yerr=False)
            hep.histplot(fractions, edges, ax=ax, color=colors[name], histtype="step", yerr=False, linewidth=1.6, label=label)
        ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.set_xlim(-width, width)
        ax.set_ylim(0.0, top * 1.7)
        ax.set(title=title, xlabel=xlabel, ylabel="Fraction of candidates / bin")
        # Plain tick labels: an offset or "1e-2" text would collide with the right-aligned x label.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, symmetric=True))
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.legend(loc="upper left", fontsize="x-small", frameon=False)
    fig.suptitle(f"Tokenizer reconstruction residuals ({split} split; out-of-range values in the edge bins)", fontsize="medium")
    return fig


def _draw_confusions(confusions: Mapping[str, Mapping[str, Mapping]], kind: str, split: str) -> Figure:
    is_pid = kind == "pid"
    panel = (6.4, 6.0) if is_pid else (5.0, 4.6)
    fig, axes = new_figure(1, 2, panel_size=panel)
    ticks = PID_TICK_LABELS if is_pid else CHARGE_TICK_LABELS
    what = "PID" if is_pid else "charge [e]"
    image = None
    for ax, name in zip(axes[0], (JETCLASS, FUTURE), strict=True):
        if name not in confusions:
            no_data_panel(ax, _label(name), "no Fuτure samples given")
            continue
        c = confusions[name][kind]
        image = _draw_matrix(ax, c["fractions"], ticks, small=is_pid)
        ax.set(xlabel=f"True {what}", ylabel=f"Reconstructed {what}")
        ax.set_title(f"{_label(name)}\n{c['n_candidates']} candidates, accuracy {c['accuracy']:.3f}", fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.85, label="Fraction of reconstructed class")
    title = "PID" if is_pid else "Charge"
    fig.suptitle(f"{title} through the tokenizer ({split} split), normalised by reconstructed values", fontsize="medium")
    return fig


def _draw_matrix(ax: Axes, fractions: np.ndarray, ticks: Sequence[str], *, small: bool):
    n = len(ticks)
    image = ax.imshow(np.ma.masked_invalid(fractions), origin="lower", cmap=_MATRIX_CMAP, vmin=0.0, vmax=1.0, aspect="auto")
    cell_font = "small" if small else "medium"
    for reco in range(n):
        for true in range(n):
            value = fractions[reco, true]
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            color = "white" if not math.isnan(value) and value > 0.6 else "black"
            ax.text(true, reco, text, ha="center", va="center", color=color, fontsize=cell_font)
    positions = np.arange(n)
    ax.set_xticks(positions, ticks, fontsize="x-small" if small else "medium")
    ax.set_yticks(positions, ticks, fontsize="x-small" if small else "medium")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(NullLocator())
    ax.tick_params(which="both", top=False, right=False, length=0)
    return image
