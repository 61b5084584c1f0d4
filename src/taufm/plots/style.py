"""The look of every taufm figure: style, colours, figure creation and saving.

Figures are plain :class:`matplotlib.figure.Figure` objects on the Agg canvas, made without pyplot:
no display is needed (CI, batch nodes) and no global figure registry fills up. The mplhep style is
applied only inside :func:`taufm_style`; importing this module changes no global rcParams.

Colours are fixed per meaning (training strategy, decay mode), so one strategy or one decay mode
has the same colour in every figure of the paper reproduction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import mplhep as hep
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from taufm.io import atomic_output
from taufm.physics.tau import DECAY_MODE_NAMES

DPI = 150

# mplhep's experiment-neutral ROOT style, scaled down for multi-panel figures (its 26 pt font and
# 10 x 10 inch canvas are sized for one panel per figure).
_STYLE_OVERRIDES = {
    "font.size": 14,
    "axes.titlesize": "medium",
    "axes.linewidth": 1.2,
    "xtick.major.size": 7,
    "xtick.minor.size": 3.5,
    "ytick.major.size": 7,
    "ytick.minor.size": 3.5,
    "figure.constrained_layout.use": True,
    "savefig.dpi": DPI,
}

# Training strategies (SPEC: backbone from scratch, frozen "fixed" backbone, fine-tuned backbone,
# and the ParT baseline). Colour-blind-safe colours from the Petroff palettes.
STRATEGY_COLORS: Mapping[str, str] = MappingProxyType(
    {
        "scratch": "#e42536",
        "fixed": "#f89c20",
        "finetune": "#5790fc",
        "part": "#964a8b",
    }
)
STRATEGY_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "scratch": "From scratch",
        "fixed": "Fixed backbone",
        "finetune": "Fine-tuned backbone",
        "part": "ParT (baseline)",
    }
)

# One colour per decay mode, keyed by the names in taufm.physics.tau.DECAY_MODE_NAMES ("rare" grey).
DECAY_MODE_COLORS: Mapping[str, str] = MappingProxyType(
    dict(zip(DECAY_MODE_NAMES, ("#3f90da", "#ffa90e", "#bd1f01", "#832db6", "#a96b59", "#94a4a2"), strict=True))
)

# Jet populations drawn on top of each other (all jets of a sample vs. tau-matched jets).
JET_COLORS: Mapping[str, str] = MappingProxyType({"all": "#222222", "tau": "#e42536"})


@contextlib.contextmanager
def taufm_style() -> Iterator[None]:
    """Apply the taufm style inside the block; rcParams are restored on exit.

    Create, draw and save a figure inside one block: matplotlib reads rcParams when artists are
    made and when the figure is saved.
    """
    import matplotlib.style

    with matplotlib.style.context([hep.style.ROOT, _STYLE_OVERRIDES]):
        yield


def new_figure(
    nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (6.0, 4.75)
) -> tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas with a grid of panels (``axes`` is always a 2-D array).

    ``panel_size`` is the size of one panel in inches; call inside :func:`taufm_style`.
    """
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def no_data_panel(ax: Axes, title: str, message: str) -> None:
    """Turn ``ax`` into a clearly labelled "nothing to show" panel instead of an empty axis."""
    ax.set_title(title)
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize="large",
        bbox={"boxstyle": "round,pad=0.6", "facecolor": "0.95", "edgecolor": "0.6"},
    )


def save_figure(fig: Figure, stem_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` atomically, close ``fig``, return both paths.

    ``stem_path`` has no suffix; a dot in it is kept (``dq.ZH_Htautau`` -> ``dq.ZH_Htautau.png``).
    Both files are rendered under temporary names first, so an error leaves neither behind. The
    PDF carries no creation date, so a rerun writes the same bytes.
    """
    stem = os.fspath(stem_path)
    png, pdf = Path(stem + ".png"), Path(stem + ".pdf")
    try:
        with atomic_output(png) as tmp_png, atomic_output(pdf) as tmp_pdf:
            fig.savefig(tmp_png, format="png", dpi=DPI)
            fig.savefig(tmp_pdf, format="pdf", metadata={"CreationDate": None})
    finally:
        _close(fig)
    return png, pdf


def _close(fig: Figure) -> None:
    """Release ``fig``: drop it from pyplot's registry if pyplot made it, and clear its artists."""
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    fig.clear()
