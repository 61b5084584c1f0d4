"""Data-quality figure of one sample's ingested Parquet shards, and the numbers it shows.

One figure per sample, so a person can see at a glance that ingestion did what SPEC §3 asks
before any network is trained on its output:

- e+e- (Fuτure), six panels: jet pT (all and tau-matched jets), candidate multiplicity,
  decay-mode fractions of the tau jets (six classes of :data:`taufm.physics.tau.DECAY_MODE_NAMES`),
  the response jet pT / visible tau pT of the tau jets, and the lifetime-signed d0 and dz
  significances (:mod:`taufm.physics.lifetime`) of the tracks in tau-matched and in the other
  jets: a tau's flight shows as a positive tail that prompt tracks do not have. A sample without
  tau jets (qq) shows that in words; a sample without tracks (no track collection read) too.
- JetClass, four panels: jet pT, candidate multiplicity, soft-drop mass, tau3/tau2.

Only the columns needed are read (the candidate lists only for the lifetime panels). The numbers
drawn are returned as a small JSON-friendly dict for logs and tests.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import mplhep as hep
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter, NullLocator

from taufm.data import column_to_numpy
from taufm.errors import TaufmError
from taufm.ingest.shards import MASK_COLUMN, SPLITS
from taufm.physics.lifetime import signed_impact_parameters
from taufm.physics.tau import DECAY_MODE_NAMES
from taufm.plots.style import DECAY_MODE_COLORS, JET_COLORS, new_figure, no_data_panel, save_figure, taufm_style

log = logging.getLogger(__name__)

Kind = Literal["ee", "jetclass"]

LIFETIME_INPUT_COLUMNS = ("cand_d0", "cand_d0err", "cand_dz", "cand_dzerr", "cand_deta", "cand_dphi")
EE_COLUMNS = ("sample", "split", "jet_pt", "jet_eta", "n_cand", "label", "decay_mode", "gen_tau_vis_pt", *LIFETIME_INPUT_COLUMNS, MASK_COLUMN)
JETCLASS_COLUMNS = ("sample", "split", "jet_pt", "n_cand", "jet_sdmass", "jet_tau2", "jet_tau3")
_COLUMNS: dict[str, tuple[str, ...]] = {"ee": EE_COLUMNS, "jetclass": JETCLASS_COLUMNS}
_KIND_LABELS = {"ee": r"$e^+e^-$ (Fuτure)", "jetclass": "JetClass"}

# Response panel range; values outside are counted into the edge bins (and said so in the legend).
RESPONSE_RANGE = (0.0, 2.0)
_N_BINS = 40
_MAX_INT_BINS = 60
NO_TAU_MESSAGE = "no tau jets in this sample"
NO_TRACK_MESSAGE = "no candidate with a track (d0, dz errors > 0)"
# Significance panels: this range, values outside counted into the edge bins.
SIGNIFICANCE_RANGE = (-10.0, 30.0)
LIFETIME_TAIL = 3.0  # the summary's fraction of tracks with a signed significance above this


def plot_dataquality(
    shards: Sequence[str | os.PathLike[str]],
    output_stem: str | os.PathLike[str],
    *,
    sample: str,
    kind: Kind,
) -> dict:
    """Draw the data-quality figure of ``sample`` to ``<output_stem>.png`` / ``.pdf``; return its numbers.

    Raises :class:`TaufmError` (and writes nothing) for an empty shard list, a missing or
    unreadable shard, a missing column, rows of another sample, no jets at all, or values that
    cannot come from ingestion (NaN pT, a tau jet without decay mode or visible pT).
    """
    if kind not in _COLUMNS:
        raise TaufmError(f"data-quality plot: kind must be 'ee' or 'jetclass', got {kind!r}")
    data = read_columns(shards, _COLUMNS[kind], sample=sample)
    n_jets = len(data["jet_pt"])
    if n_jets == 0:
        raise TaufmError(f"data-quality plot: the shards of sample {sample} hold no jets")

    summary: dict = {
        "sample": sample,
        "kind": kind,
        "n_jets": n_jets,
        "n_jets_per_split": {name: int(np.count_nonzero(data["split"] == i)) for i, name in enumerate(SPLITS)},
        "n_cand_mean": float(np.mean(data["n_cand"])),
    }
    with taufm_style():
        fig, axes = new_figure(2, 3 if kind == "ee" else 2)
        if kind == "ee":
            summary |= _draw_ee(axes, data)
        else:
            summary |= _draw_jetclass(axes, data)
        fig.suptitle(f"{sample}: {n_jets} jets, {_KIND_LABELS[kind]}")
        save_figure(fig, output_stem)
    log.info("data quality %s: %s", sample, summary)
    return summary


def read_columns(
    shards: Sequence[str | os.PathLike[str]], columns: Sequence[str], *, sample: str
) -> dict[str, np.ndarray]:
    """Read ``columns`` of every shard (only those) and concatenate them, checking each file.

    Every row must belong to ``sample``: a shard of another sample in the list is a wiring error.
    """
    if isinstance(shards, (str, os.PathLike)):  # one path, not a list of paths
        shards = [shards]
    paths = [Path(s) for s in shards]
    if not paths:
        raise TaufmError(f"data-quality plot: no shards given for sample {sample}")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for path in paths:
        table = _read_table(path, columns)
        arrays = {c: column_to_numpy(table.column(c)) for c in columns}
        _check_shard(path, arrays, sample)
        for c in columns:
            parts[c].append(arrays[c])
    return {c: np.concatenate(parts[c]) for c in columns}


def _read_table(path: Path, columns: Sequence[str]) -> pa.Table:
    if not path.is_file():
        raise TaufmError(f"shard {path} does not exist")
    try:
        with pq.ParquetFile(path) as pf:
            names = set(pf.schema_arrow.names)
            missing = [c for c in columns if c not in names]
            if missing:
                raise TaufmError(f"shard {path} has no column(s) {', '.join(missing)}")
            return pf.read(columns=list(columns))
    except (pa.ArrowException, OSError) as err:
        raise TaufmError(f"cannot read Parquet shard {path}: {err}") from err


def _check_shard(path: Path, arrays: dict[str, np.ndarray], sample: str) -> None:
    """Values no correct ingestion writes: fail naming the file and column, not draw nonsense."""
    others = sorted(map(str, set(arrays["sample"].tolist()) - {sample}))
    if others:
        raise TaufmError(f"shard {path} holds jets of sample(s) {', '.join(others)}, expected {sample}")
    for column in ("jet_pt", "n_cand", "split"):
        values = np.asarray(arrays[column], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise TaufmError(f"shard {path}: column {column} has NaN or missing values")
    if not np.all(np.isin(arrays["split"], np.arange(len(SPLITS)))):
        raise TaufmError(f"shard {path}: column split has values outside 0..{len(SPLITS) - 1}")
    if "label" not in arrays:
        return
    label = np.asarray(arrays["label"], dtype=np.float64)
    if not np.all(np.isin(label, (0, 1))):
        raise TaufmError(f"shard {path}: column label has values other than 0 and 1")
    tau = label == 1
    decay_mode = np.asarray(arrays["decay_mode"], dtype=np.float64)[tau]
    if not np.all(np.isin(decay_mode, np.arange(len(DECAY_MODE_NAMES)))):
        raise TaufmError(f"shard {path}: column decay_mode is outside 0..{len(DECAY_MODE_NAMES) - 1} for a tau jet")
    vis_pt = np.asarray(arrays["gen_tau_vis_pt"], dtype=np.float64)[tau]
    if not np.all(np.isfinite(vis_pt) & (vis_pt > 0)):
        raise TaufmError(f"shard {path}: column gen_tau_vis_pt is NaN or not positive for a tau jet")


# --- e+e- panels -------------------------------------------------------------------------------


def _draw_ee_jets(axes: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    pt = data["jet_pt"].astype(np.float64)
    n_cand = data["n_cand"].astype(np.int64)
    tau = data["label"] == 1
    n_tau = int(np.count_nonzero(tau))

    ax = axes[0, 0]
    edges = _edges(pt)
    _step(ax, pt, edges, label=f"all jets ({len(pt)})", color=JET_COLORS["all"], fill=True)
    if n_tau:
        _step(ax, pt[tau], edges, label=f"τ-matched jets ({n_tau})", color=JET_COLORS["tau"])
    else:
        ax.plot([], [], " ", label="τ-matched jets: none")
    _log_y(ax, _max_count(pt, edges))
    ax.set(title="Jet $p_T$", xlabel="Jet $p_T$ [GeV]", ylabel="Jets / bin")
    ax.legend(loc="upper right")

    ax = axes[0, 1]
    edges = _int_edges(n_cand)
    _step(ax, n_cand, edges, label=f"all jets, mean {n_cand.mean():.1f}", color=JET_COLORS["all"], fill=True)
    if n_tau:
        _step(ax, n_cand[tau], edges, label=f"τ-matched jets, mean {n_cand[tau].mean():.1f}", color=JET_COLORS["tau"])
    ax.set(title="Candidate multiplicity", xlabel="Candidates per jet (before truncation)", ylabel="Jets / bin")
    _linear_y(ax)
    ax.legend(loc="upper right")

    counts = np.bincount(data["decay_mode"][tau].astype(np.int64), minlength=len(DECAY_MODE_NAMES))
    summary: dict = {
        "n_tau_jets": n_tau,
        "decay_mode_counts": {name: int(c) for name, c in zip(DECAY_MODE_NAMES, counts, strict=True)},
        "decay_mode_fractions": None,
        "response_median": None,
        "response_iqr": None,
    }
    if not n_tau:
        no_data_panel(axes[1, 0], "τ decay modes", NO_TAU_MESSAGE)
        no_data_panel(axes[1, 1], "τ-jet response", NO_TAU_MESSAGE)
        return summary

    fractions = counts / n_tau
    summary["decay_mode_fractions"] = {name: float(f) for name, f in zip(DECAY_MODE_NAMES, fractions, strict=True)}
    _draw_decay_modes(axes[1, 0], counts, fractions)

    response = pt[tau] / data["gen_tau_vis_pt"][tau].astype(np.float64)
    q25, median, q75 = (float(q) for q in np.percentile(response, [25, 50, 75]))
    summary["response_median"] = median
    summary["response_iqr"] = q75 - q25
    _draw_response(axes[1, 1], response, median, q25, q75)
    return summary


def _draw_ee(axes: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    summary = _draw_ee_jets(axes, data)
    summary["track_significance"] = _draw_lifetime(axes[:, 2], data)
    return summary


def _draw_lifetime(axes: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """Signed d0 and dz significance of the tracks of tau-matched and of the other jets."""
    values = signed_impact_parameters(*(data[c] for c in LIFETIME_INPUT_COLUMNS[:4]), data["cand_deta"], data["cand_dphi"], data["jet_eta"][:, None])
    has_track = data[MASK_COLUMN].astype(bool) & (data["cand_d0err"] > 0) & (data["cand_dzerr"] > 0)
    tau_jet = (data["label"] == 1)[:, None] & has_track
    other_jet = (data["label"] != 1)[:, None] & has_track
    summary: dict = {}
    edges = np.linspace(*SIGNIFICANCE_RANGE, 2 * _N_BINS + 1)
    for ax, name, title in ((axes[0], "signed_d0_significance", "$d_0$"), (axes[1], "signed_dz_significance", "$d_z$")):
        summary[name] = {}
        panel_title = f"Lifetime-signed {title} significance of tracks"
        if not has_track.any():
            no_data_panel(ax, panel_title, NO_TRACK_MESSAGE)
            continue
        for group, select, color in (("tau_jets", tau_jet, JET_COLORS["tau"]), ("other_jets", other_jet, JET_COLORS["all"])):
            s = values[name][select]
            if s.size == 0:
                summary[name][group] = None
                continue
            above = float(np.mean(s > LIFETIME_TAIL))
            summary[name][group] = {"tracks": int(s.size), "median": float(np.median(s)), "fraction_above_3": above}
            counts, _ = np.histogram(np.clip(s, edges[0], edges[-1]), bins=edges)
            label = f"{'τ-matched' if group == 'tau_jets' else 'other'} jets: {s.size} tracks, {100 * above:.0f}% > {LIFETIME_TAIL:g}"
            hep.histplot(counts / s.size, edges, ax=ax, label=label, color=color, histtype="step", yerr=False, linewidth=1.6)
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(title=panel_title, xlabel=f"signed {title} / $\\sigma$ (edge bins: overflow)", ylabel="Fraction of tracks / bin")
        ax.legend(loc="upper right")
    return summary


def _draw_decay_modes(ax: Axes, counts: np.ndarray, fractions: np.ndarray) -> None:
    x = np.arange(len(DECAY_MODE_NAMES))
    bars = ax.bar(x, fractions, color=[DECAY_MODE_COLORS[n] for n in DECAY_MODE_NAMES], width=0.7)
    ax.bar_label(bars, labels=[str(int(c)) for c in counts], padding=2, fontsize="small")
    ax.set_xticks(x, DECAY_MODE_NAMES, rotation=30, ha="right", rotation_mode="anchor")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", which="both", top=False)
    ax.set_ylim(0, max(float(fractions.max()), 0.05) * 1.2)
    ax.set(title=f"τ decay modes ({int(counts.sum())} τ jets, counts on bars)", ylabel="Fraction of τ jets")


def _draw_response(ax: Axes, response: np.ndarray, median: float, q25: float, q75: float) -> None:
    lo, hi = RESPONSE_RANGE
    outside = int(np.count_nonzero((response < lo) | (response > hi)))
    edges = np.linspace(lo, hi, _N_BINS + 1)
    label = f"τ jets ({len(response)})" + (f", {outside} outside range in edge bins" if outside else "")
    _step(ax, np.clip(response, lo, hi), edges, label=label, color=JET_COLORS["tau"])
    ax.axvspan(q25, q75, color=JET_COLORS["tau"], alpha=0.15, label=f"IQR = {q75 - q25:.3f} [{q25:.3f}, {q75:.3f}]")
    ax.axvline(median, color="0.2", linestyle="--", label=f"median = {median:.3f}")
    _linear_y(ax)
    ax.set(
        title="τ-jet response",
        xlabel=r"$p_T^{\mathrm{jet}}$ / $p_T^{\mathrm{vis},\,\tau}$ (generator)",
        ylabel="Jets / bin",
    )
    ax.legend(loc="upper left", fontsize="x-small")


# --- JetClass panels ---------------------------------------------------------------------------


def _draw_jetclass(axes: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    pt = data["jet_pt"].astype(np.float64)
    n_cand = data["n_cand"].astype(np.int64)
    sdmass = data["jet_sdmass"].astype(np.float64)
    tau2 = data["jet_tau2"].astype(np.float64)
    tau3 = data["jet_tau3"].astype(np.float64)

    ax = axes[0, 0]
    edges = _edges(pt)
    _step(ax, pt, edges, label=f"all jets ({len(pt)})", color=JET_COLORS["all"])
    _log_y(ax, _max_count(pt, edges))
    ax.set(title="Jet $p_T$", xlabel="Jet $p_T$ [GeV]", ylabel="Jets / bin")
    ax.legend(loc="upper right")

    ax = axes[0, 1]
    _step(ax, n_cand, _int_edges(n_cand), label=f"all jets, mean {n_cand.mean():.1f}", color=JET_COLORS["all"])
    ax.set(title="Candidate multiplicity", xlabel="Candidates per jet (before truncation)", ylabel="Jets / bin")
    _linear_y(ax)
    ax.legend(loc="upper right")

    summary: dict = {"jet_sdmass_median": None, "tau32_median": None}
    finite_mass = sdmass[np.isfinite(sdmass)]
    if len(finite_mass):
        summary["jet_sdmass_median"] = float(np.median(finite_mass))
        ax = axes[1, 0]
        label = f"all jets, median {summary['jet_sdmass_median']:.1f} GeV"
        _step(ax, finite_mass, _edges(finite_mass, lo=0.0), label=label, color=JET_COLORS["all"])
        ax.set(title="Soft-drop mass", xlabel=r"$m_{\mathrm{SD}}$ [GeV]", ylabel="Jets / bin")
        _linear_y(ax)
        ax.legend(loc="upper right")
    else:
        no_data_panel(axes[1, 0], "Soft-drop mass", "no finite jet_sdmass values")

    defined = np.isfinite(tau2) & np.isfinite(tau3) & (tau2 > 0)
    summary["n_tau32_undefined"] = int(np.count_nonzero(~defined))
    if np.any(defined):
        tau32 = tau3[defined] / tau2[defined]
        summary["tau32_median"] = float(np.median(tau32))
        ax = axes[1, 1]
        undefined = summary["n_tau32_undefined"]
        label = f"all jets, median {summary['tau32_median']:.3f}"
        jets = "jet" if undefined == 1 else "jets"
        label += f"\n({undefined} {jets} with $\\tau_2$ <= 0 or NaN left out)" if undefined else ""
        _step(ax, np.clip(tau32, 0.0, 1.0), np.linspace(0.0, 1.0, _N_BINS + 1), label=label, color=JET_COLORS["all"])
        ax.set(title="N-subjettiness ratio", xlabel=r"$\tau_3 / \tau_2$", ylabel="Jets / bin")
        _linear_y(ax)
        ax.legend(loc="upper left")
    else:
        no_data_panel(axes[1, 1], "N-subjettiness ratio", "no jet with $\\tau_2$ > 0")
    return summary


# --- helpers -----------------------------------------------------------------------------------


def _step(ax: Axes, values: np.ndarray, edges: np.ndarray, *, label: str, color: str, fill: bool = False) -> None:
    """Histogram of ``values`` as a step line; ``fill`` shades it too (the population drawn underneath)."""
    counts, _ = np.histogram(values, bins=edges)
    if fill:
        hep.histplot(counts, edges, ax=ax, color=color, histtype="fill", alpha=0.15, yerr=False)
    hep.histplot(counts, edges, ax=ax, label=label, color=color, histtype="step", yerr=False, linewidth=1.6)


def _max_count(values: np.ndarray, edges: np.ndarray) -> int:
    return int(np.histogram(values, bins=edges)[0].max())


def _edges(values: np.ndarray, *, lo: float | None = None) -> np.ndarray:
    """Equal-width bins over the range of ``values`` (a unit-wide range if they are all equal)."""
    low = float(np.min(values)) if lo is None else lo
    high = float(np.max(values))
    low, high = math.floor(low), math.ceil(high)
    if high <= low:
        high = low + 1
    return np.linspace(low, high, _N_BINS + 1)


def _int_edges(values: np.ndarray) -> np.ndarray:
    """Bins centred on integers (several integers per bin beyond ``_MAX_INT_BINS`` values)."""
    low, high = int(np.min(values)), int(np.max(values))
    step = max(1, math.ceil((high - low + 1) / _MAX_INT_BINS))
    return np.arange(low - 0.5, high + 0.5 + step, step, dtype=np.float64)


def _log_y(ax: Axes, max_count: int) -> None:
    """Log y from below one jet, with headroom for the legend and at least two labelled decades."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0.5, max(5.0 * max_count, 20.0))


def _linear_y(ax: Axes) -> None:
    """Linear y from zero with headroom above the highest bin for the legend."""
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
