"""Data-quality figures: numbers drawn, files written atomically, clear errors on bad shards."""

from __future__ import annotations

import subprocess
import sys

import matplotlib as mpl
import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taufm.errors import TaufmError
from taufm.physics.tau import DECAY_MODE_NAMES
from taufm.plots import dataquality
from taufm.plots.dataquality import NO_TAU_MESSAGE, NO_TRACK_MESSAGE, plot_dataquality
from taufm.plots.style import DECAY_MODE_COLORS, STRATEGY_COLORS, new_figure, save_figure, taufm_style

# Tau jets of the e+e- test sample: decay mode and response (jet pT / visible tau pT) per jet.
TAU_DECAY_MODES = np.array([0, 0, 1, 1, 1, 2, 3, 4, 5, 5])
TAU_RESPONSE = np.array([0.8, 0.9, 1.0, 1.0, 1.1, 1.2, 0.95, 1.05, 0.85, 1.15])
TAU_VIS_PT = np.array([20.0, 40.0, 25.0, 50.0, 30.0, 35.0, 45.0, 60.0, 22.0, 28.0])
N_BACKGROUND = 6
N_CAND_LENGTH = 4  # candidate list length of the test shards


# Lifetime-signed d0 (and dz) significances of the candidates of each jet (the fourth is padding):
# tau jets two displaced tracks and one behind, the other jets prompt ones.
TAU_SIGNIFICANCES = (5.0, 5.0, -1.0, 0.0)
OTHER_SIGNIFICANCES = (1.0, -1.0, 0.5, 0.0)
TRACK_ERROR_MM = 0.01


def _candidate_column(n: int, values: np.ndarray | None = None, dtype=pa.float32()) -> pa.FixedSizeListArray:
    values = np.arange(n * N_CAND_LENGTH, dtype=np.float32) if values is None else np.asarray(values).ravel()
    return pa.FixedSizeListArray.from_arrays(pa.array(values, dtype), N_CAND_LENGTH)


def _lifetime_columns(tau: np.ndarray, *, with_tracks: bool = True) -> dict[str, pa.FixedSizeListArray]:
    """Candidate columns that give TAU/OTHER_SIGNIFICANCES: Δφ = Δη = 0.1 at jet η = 0 make the
    lifetime sign that of -d0 and -dz, so d0 = dz = -S * error."""
    n = len(tau)
    significance = np.where(tau[:, None], TAU_SIGNIFICANCES, OTHER_SIGNIFICANCES)
    error = np.full((n, N_CAND_LENGTH), TRACK_ERROR_MM if with_tracks else 0.0)
    mask = np.arange(N_CAND_LENGTH)[None, :] < 3
    impact = -significance * TRACK_ERROR_MM * with_tracks
    angle = np.full((n, N_CAND_LENGTH), 0.1)
    columns = {"cand_d0": impact, "cand_d0err": error, "cand_dz": impact, "cand_dzerr": error, "cand_deta": angle, "cand_dphi": angle}
    out = {name: _candidate_column(n, np.where(mask, v, 0.0)) for name, v in columns.items()}
    out["cand_mask"] = _candidate_column(n, np.broadcast_to(mask, (n, N_CAND_LENGTH)), pa.bool_())
    return out


def _ee_table(sample: str, n_tau: int, n_background: int, *, first_event: int = 0, with_tracks: bool = True) -> pa.Table:
    """An e+e- shard in the ingestion column contract: ``n_tau`` tau jets then background jets."""
    n = n_tau + n_background
    tau = np.arange(n) < n_tau
    vis_pt = np.full(n, np.nan)
    vis_pt[:n_tau] = TAU_VIS_PT[:n_tau]
    jet_pt = np.linspace(15.0, 80.0, n)
    jet_pt[:n_tau] = TAU_VIS_PT[:n_tau] * TAU_RESPONSE[:n_tau]
    decay_mode = np.full(n, -1)
    decay_mode[:n_tau] = TAU_DECAY_MODES[:n_tau]
    nan = np.full(n, np.nan, dtype=np.float32)
    return pa.table(
        {
            "sample": pa.array([sample] * n),
            "file": pa.array([f"{sample}_000.root"] * n),
            "event": pa.array(np.arange(first_event, first_event + n), pa.int64()),
            "split": pa.array(np.arange(n) % 3, pa.int8()),
            "jet_index": pa.array(np.zeros(n), pa.int16()),
            "jet_pt": pa.array(jet_pt, pa.float32()),
            "jet_eta": pa.array(np.zeros(n), pa.float32()),
            "jet_phi": pa.array(np.zeros(n), pa.float32()),
            "jet_energy": pa.array(jet_pt * 1.2, pa.float32()),
            "jet_mass": pa.array(np.ones(n), pa.float32()),
            "n_cand": pa.array(np.where(tau, 3, 12), pa.int32()),
            "label": pa.array(tau, pa.int8()),
            "decay_mode": pa.array(decay_mode, pa.int8()),
            "gen_tau_vis_pt": pa.array(vis_pt, pa.float32()),
            "gen_tau_vis_eta": pa.array(np.where(tau, 0.1, nan), pa.float32()),
            "gen_tau_vis_phi": pa.array(np.where(tau, 0.2, nan), pa.float32()),
            "gen_tau_vis_energy": pa.array(vis_pt * 1.1, pa.float32()),
            "gen_tau_vis_mass": pa.array(np.where(tau, 0.8, nan), pa.float32()),
            "cand_pt": _candidate_column(n),
            **_lifetime_columns(tau, with_tracks=with_tracks),
        }
    )


def _jetclass_table(n: int = 8) -> pa.Table:
    tau2 = np.linspace(0.1, 0.4, n)
    tau2[-1] = 0.0  # tau3/tau2 undefined for this jet
    return pa.table(
        {
            "sample": pa.array(["TTBar"] * n),
            "file": pa.array(["TTBar_000.root"] * n),
            "entry": pa.array(np.arange(n), pa.int64()),
            "split": pa.array(np.zeros(n), pa.int8()),
            "jet_pt": pa.array(np.linspace(510.0, 990.0, n), pa.float32()),
            "jet_eta": pa.array(np.zeros(n), pa.float32()),
            "jet_phi": pa.array(np.zeros(n), pa.float32()),
            "jet_energy": pa.array(np.full(n, 1000.0), pa.float32()),
            "jet_mass": pa.array(np.full(n, 170.0), pa.float32()),
            "jet_sdmass": pa.array(np.arange(160.0, 160.0 + 2 * n, 2.0), pa.float32()),
            "jet_tau1": pa.array(np.full(n, 0.5), pa.float32()),
            "jet_tau2": pa.array(tau2, pa.float32()),
            "jet_tau3": pa.array(tau2 * 0.5, pa.float32()),
            "jet_tau4": pa.array(tau2 * 0.25, pa.float32()),
            "label": pa.array(np.full(n, 8), pa.int8()),
            "n_cand": pa.array(np.arange(40, 40 + n), pa.int32()),
            "cand_pt": _candidate_column(n),
        }
    )


@pytest.fixture
def ee_shards(tmp_path):
    """The ZH test sample in two shards: 4 tau jets + 3 background, then 6 tau jets + 3 background."""
    first = tmp_path / "shards" / "ZH_Htautau_000.parquet"
    second = tmp_path / "shards" / "ZH_Htautau_001.parquet"
    first.parent.mkdir()
    table = _ee_table("ZH_Htautau", len(TAU_DECAY_MODES), N_BACKGROUND)
    # Rows 0-3 and 10-12 in the first shard, the rest in the second: taus and background in both.
    order = np.r_[0:4, 10:13, 4:10, 13:16]
    table = table.take(pa.array(order))
    pq.write_table(table.slice(0, 7), first)
    pq.write_table(table.slice(7), second)
    return [first, second]


def _outputs(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _check_figure_files(stem):
    for suffix in (".png", ".pdf"):
        assert stem.with_name(stem.name + suffix).stat().st_size > 1000
    image = matplotlib.image.imread(stem.with_name(stem.name + ".png"))
    height, width = image.shape[:2]
    assert 800 <= width <= 4000
    assert 600 <= height <= 4000
    assert stem.with_name(stem.name + ".pdf").read_bytes().startswith(b"%PDF")


def test_ee_numbers_equal_hand_computed_values(ee_shards, tmp_path, monkeypatch):
    read = []  # the columns asked of each shard: the candidate lists only those the lifetime panels need
    original_read = pq.ParquetFile.read

    def spy(self, columns=None, **kwargs):
        read.append(columns)
        return original_read(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    stem = tmp_path / "out" / "dataquality.ZH_Htautau"
    summary = plot_dataquality(ee_shards, stem, sample="ZH_Htautau", kind="ee")

    assert len(read) == 2
    lifetime = {"cand_d0", "cand_d0err", "cand_dz", "cand_dzerr", "cand_deta", "cand_dphi", "cand_mask"}
    assert all(columns is not None and {c for c in columns if c.startswith("cand_")} == lifetime for columns in read)
    _check_figure_files(stem)
    assert _outputs(stem.parent) == ["dataquality.ZH_Htautau.pdf", "dataquality.ZH_Htautau.png"]
    assert summary["n_jets"] == 16
    assert summary["n_jets_per_split"] == {"train": 6, "val": 5, "test": 5}
    assert summary["n_tau_jets"] == 10
    assert summary["n_cand_mean"] == pytest.approx((10 * 3 + 6 * 12) / 16)
    counts = dict(zip(DECAY_MODE_NAMES, (2, 3, 1, 1, 1, 2), strict=True))
    assert summary["decay_mode_counts"] == counts
    assert summary["decay_mode_fractions"] == pytest.approx({k: v / 10 for k, v in counts.items()})
    # Sorted responses 0.8 0.85 0.9 0.95 1.0 1.0 1.05 1.1 1.15 1.2: median 1.0; numpy's linear
    # percentiles give q25 = 0.9 + 0.25 * 0.05 and q75 = 1.05 + 0.75 * 0.05.
    assert summary["response_median"] == pytest.approx(1.0, rel=1e-6)
    assert summary["response_iqr"] == pytest.approx(1.0875 - 0.9125, rel=1e-5)
    for name in ("signed_d0_significance", "signed_dz_significance"):
        tracks = summary["track_significance"][name]
        assert tracks["tau_jets"] == {"tracks": 30, "median": pytest.approx(5.0, rel=1e-5), "fraction_above_3": pytest.approx(2 / 3)}
        assert tracks["other_jets"] == {"tracks": 18, "median": pytest.approx(0.5, rel=1e-5), "fraction_above_3": 0.0}


def test_ee_sample_without_tau_jets(tmp_path):
    shard = tmp_path / "qq_000.parquet"
    pq.write_table(_ee_table("qq", 0, 9), shard)
    stem = tmp_path / "qq"
    summary = plot_dataquality([shard], stem, sample="qq", kind="ee")

    _check_figure_files(stem)
    assert summary["n_jets"] == 9
    assert summary["n_tau_jets"] == 0
    assert summary["decay_mode_counts"] == dict.fromkeys(DECAY_MODE_NAMES, 0)
    assert summary["decay_mode_fractions"] is None
    assert summary["response_median"] is None
    assert summary["response_iqr"] is None


def test_no_tau_panels_say_so(tmp_path, monkeypatch):
    """The decay-mode and response panels of a sample without taus carry the message, not an empty axis."""
    shard = tmp_path / "qq_000.parquet"
    pq.write_table(_ee_table("qq", 0, 5), shard)
    drawn = []
    monkeypatch.setattr(dataquality, "save_figure", lambda fig, stem: drawn.append(fig))
    plot_dataquality([shard], tmp_path / "qq", sample="qq", kind="ee")

    (fig,) = drawn
    messages = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert messages.count(NO_TAU_MESSAGE) == 2
    for ax in fig.axes:
        assert ax.get_xlabel() or ax.texts, "every panel has an axis label or a message"


def test_a_sample_without_tracks_says_so_in_the_lifetime_panels(tmp_path, monkeypatch):
    shard = tmp_path / "qq_000.parquet"
    pq.write_table(_ee_table("qq", 0, 5, with_tracks=False), shard)
    drawn = []
    monkeypatch.setattr(dataquality, "save_figure", lambda fig, stem: drawn.append(fig))
    summary = plot_dataquality([shard], tmp_path / "qq", sample="qq", kind="ee")

    (fig,) = drawn
    assert [t.get_text() for ax in fig.axes for t in ax.texts].count(NO_TRACK_MESSAGE) == 2
    assert summary["track_significance"] == {"signed_d0_significance": {}, "signed_dz_significance": {}}


def test_jetclass_numbers(tmp_path):
    shard = tmp_path / "TTBar_000.parquet"
    pq.write_table(_jetclass_table(), shard)
    stem = tmp_path / "TTBar"
    summary = plot_dataquality([shard], stem, sample="TTBar", kind="jetclass")

    _check_figure_files(stem)
    assert summary["n_jets"] == 8
    assert summary["n_jets_per_split"] == {"train": 8, "val": 0, "test": 0}
    assert summary["n_cand_mean"] == pytest.approx(43.5)
    assert summary["jet_sdmass_median"] == pytest.approx(167.0)  # 160, 162, ..., 174
    assert summary["n_tau32_undefined"] == 1
    assert summary["tau32_median"] == pytest.approx(0.5, rel=1e-6)


def test_outputs_are_reproducible(ee_shards, tmp_path):
    first, second = tmp_path / "a" / "dq", tmp_path / "b" / "dq"
    plot_dataquality(ee_shards, first, sample="ZH_Htautau", kind="ee")
    plot_dataquality(ee_shards, second, sample="ZH_Htautau", kind="ee")
    for suffix in (".png", ".pdf"):
        assert (first.parent / f"dq{suffix}").read_bytes() == (second.parent / f"dq{suffix}").read_bytes()


def _write(tmp_path, table):
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    return [path]


def _corrupt(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not a parquet file")
    return [path]


@pytest.mark.parametrize(
    ("make_shards", "sample", "kind", "message"),
    [
        (lambda tmp: [], "ZH_Htautau", "ee", "no shards"),
        (lambda tmp: [tmp / "absent.parquet"], "ZH_Htautau", "ee", "absent.parquet does not exist"),
        (lambda tmp: _write(tmp, _ee_table("qq", 0, 3).drop_columns(["n_cand"])), "qq", "ee", "no column.*n_cand"),
        (lambda tmp: _write(tmp, _jetclass_table().drop_columns(["jet_sdmass"])), "TTBar", "jetclass", "jet_sdmass"),
        (lambda tmp: _write(tmp, _ee_table("qq", 0, 3)), "ZH_Htautau", "ee", "bad.parquet holds jets of sample.*qq"),
        (lambda tmp: _write(tmp, _ee_table("qq", 0, 0)), "qq", "ee", "hold no jets"),
        (lambda tmp: _write(tmp, _ee_table("qq", 0, 3)), "qq", "lhc", "kind"),
        (_corrupt, "qq", "ee", "cannot read Parquet shard .*bad.parquet"),
    ],
    ids=[
        "empty-list",
        "missing-file",
        "missing-column",
        "missing-jetclass-column",
        "other-sample",
        "no-jets",
        "bad-kind",
        "corrupt",
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, make_shards, sample, kind, message):
    shards = make_shards(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(TaufmError, match=message):
        plot_dataquality(shards, out / "dq", sample=sample, kind=kind)
    assert _outputs(out) == []


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("jet_pt", np.nan, "jet_pt has NaN"),
        ("gen_tau_vis_pt", np.nan, "gen_tau_vis_pt is NaN"),
        ("decay_mode", -1, "decay_mode is outside"),
    ],
)
def test_impossible_values_of_a_tau_jet_are_errors(tmp_path, column, value, message):
    table = _ee_table("ZH_Htautau", 3, 2)
    values = table.column(column).to_numpy().copy()
    values[0] = value
    field = table.schema.get_field_index(column)
    table = table.set_column(field, column, pa.array(values, table.schema.field(column).type))
    out = tmp_path / "out"
    with pytest.raises(TaufmError, match=f"bad.parquet: column {message}"):
        plot_dataquality(_write(tmp_path, table), out / "dq", sample="ZH_Htautau", kind="ee")
    assert _outputs(out) == []


def test_save_figure_writes_both_or_neither(tmp_path):
    with taufm_style():
        fig, axes = new_figure()
        axes[0, 0].plot([0, 1], [0, 1])
        png, pdf = save_figure(fig, tmp_path / "ok.v1")
    assert (png.name, pdf.name) == ("ok.v1.png", "ok.v1.pdf")
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0

    with taufm_style():
        fig, _ = new_figure()
    original = fig.savefig

    def fail_on_pdf(path, **kwargs):
        if kwargs.get("format") == "pdf":
            raise RuntimeError("disk full")
        original(path, **kwargs)

    fig.savefig = fail_on_pdf
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "broken")
    assert _outputs(tmp_path) == ["ok.v1.pdf", "ok.v1.png"]


def test_style_is_scoped_to_the_context():
    before = dict(mpl.rcParams)
    with taufm_style():
        assert mpl.rcParams["font.size"] == 14
        assert mpl.rcParams["xtick.direction"] == "in"
    assert dict(mpl.rcParams) == before


def test_importing_the_plots_changes_no_rcparams():
    code = (
        "import matplotlib as mpl; before = dict(mpl.rcParams); "
        "import taufm.plots.dataquality; assert dict(mpl.rcParams) == before, 'rcParams changed'"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def test_colours_are_fixed_and_distinct():
    assert set(STRATEGY_COLORS) == {"scratch", "fixed", "finetune", "part"}
    assert tuple(DECAY_MODE_COLORS) == DECAY_MODE_NAMES
    assert len(set(STRATEGY_COLORS.values())) == len(STRATEGY_COLORS)
    assert len(set(DECAY_MODE_COLORS.values())) == len(DECAY_MODE_COLORS)
