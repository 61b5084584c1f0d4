"""JetClass-like shards: file layout, selection, labels, kinematics and substructure physics."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from taufm.errors import TaufmError
from taufm.sim import jetclass
from taufm.sim.jetclass import (
    DELPHES_CMS_LIKE,
    JETCLASS_PROCESSES,
    jets_matched_to_tops,
    simulate_jetclass_shard,
    top_decay_partons,
)
from taufm.sim.pythia import GenRecord

N_JETS = 60
RADIUS = 0.8
PARTICLE_FLOATS = [
    "part_px",
    "part_py",
    "part_pz",
    "part_energy",
    "part_deta",
    "part_dphi",
    "part_charge",
    "part_d0val",
    "part_d0err",
    "part_dzval",
    "part_dzerr",
]
PARTICLE_FLAGS = ["part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon"]
JET_FLOATS = ["jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass"] + [f"jet_tau{n}" for n in (1, 2, 3, 4)]
LABELS = [f"label_{name}" for name in ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")]
EXPECTED_LABEL = {"ZJetsToNuNu": "label_QCD", "TTBar": "label_Tbqq"}

# Small, fast settings for the tests that only need a valid file (no MPI, small batches).
QUICK = {"multiparton_interactions": False, "batch_size": 50}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """One shard per process at the default (JetClass) settings, read back with uproot."""
    out = tmp_path_factory.mktemp("jetclass")
    result = {}
    for process in JETCLASS_PROCESSES:
        path = out / f"{process}_000.root"
        summary = simulate_jetclass_shard(process, 0, N_JETS, path, seed=3)
        with uproot.open(path) as file:
            tree = file["tree"]
            dtypes = {name: tree[name].interpretation for name in tree.keys()}
            arrays = tree.arrays()
        result[process] = {"path": path, "summary": summary, "arrays": arrays, "interpretations": dtypes}
    return result


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_file_layout_and_dtypes(shards, process):
    arrays = shards[process]["arrays"]
    interpretations = shards[process]["interpretations"]
    assert len(arrays) == N_JETS
    assert shards[process]["summary"]["jets_written"] == N_JETS
    expected = {name: np.dtype(np.float32) for name in PARTICLE_FLOATS + JET_FLOATS}
    expected |= {name: np.dtype(np.int32) for name in PARTICLE_FLAGS}
    expected |= {name: np.dtype(np.bool_) for name in LABELS}
    for name, dtype in expected.items():
        assert name in interpretations, name
        interpretation = interpretations[name]
        stored = interpretation.content.from_dtype if isinstance(interpretation, uproot.AsJagged) else interpretation.from_dtype
        assert stored.newbyteorder("=") == dtype, (name, stored)
        is_jagged = name.startswith("part_")
        assert isinstance(interpretation, uproot.AsJagged) == is_jagged, name


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_jets_pass_cuts_and_labels_are_one_hot(shards, process):
    a = shards[process]["arrays"]
    assert np.all((a.jet_pt > 500) & (a.jet_pt < 1000))
    assert np.all(np.abs(a.jet_eta) < 2.0)
    labels = np.stack([ak.to_numpy(a[name]) for name in LABELS], axis=1)
    assert np.all(labels.sum(axis=1) == 1)
    assert np.all(ak.to_numpy(a[EXPECTED_LABEL[process]]))
    # Jets are in event order and by decreasing pT within an event, not globally sorted.
    assert len(np.unique(ak.to_numpy(a.jet_pt))) == N_JETS


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_constituents_add_up_to_the_jet(shards, process):
    a = shards[process]["arrays"]
    n = ak.to_numpy(ak.num(a.part_px))
    assert np.array_equal(ak.to_numpy(a.jet_nparticles), n)
    assert np.array_equal(ak.to_numpy(a.npart), n)
    px, py, pz, e = (ak.to_numpy(ak.sum(a[f"part_{k}"], axis=1)).astype(np.float64) for k in ("px", "py", "pz", "energy"))
    pt = np.hypot(px, py)
    np.testing.assert_allclose(pt, a.jet_pt, rtol=1e-4)
    np.testing.assert_allclose(e, a.jet_energy, rtol=1e-4)
    np.testing.assert_allclose(np.arcsinh(pz / pt), a.jet_eta, atol=1e-4)
    np.testing.assert_allclose(np.arctan2(py, px), a.jet_phi, atol=1e-4)


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_constituent_features(shards, process):
    a = shards[process]["arrays"]
    pt = np.hypot(a.part_px, a.part_py)
    # Sorted by decreasing pT inside each jet.
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    # deta, dphi: constituent minus jet axis, dphi wrapped to [-pi, pi].
    eta = np.arcsinh(a.part_pz / pt)
    phi = np.arctan2(a.part_py, a.part_px)
    # part_deta as JetClass writes it: times the sign of the jet's eta.
    sign = np.where(a.jet_eta > 0, 1.0, -1.0)
    np.testing.assert_allclose(ak.flatten((eta - a.jet_eta) * sign), ak.flatten(a.part_deta), atol=2e-4)
    dphi = ak.flatten(a.part_dphi)
    assert np.all(np.abs(dphi) <= np.pi)
    np.testing.assert_allclose(np.cos(ak.flatten(phi - a.jet_phi)), np.cos(dphi), atol=2e-4)
    # Anti-kt jets are cones of radius R in (rapidity, phi) around their hardest particles: all but
    # a few per cent of the jet pT lie within R of the axis (a nearby hard jet can deform the cone).
    e = ak.values_astype(a.part_energy, np.float64)
    pz = ak.values_astype(a.part_pz, np.float64)
    rapidity = 0.5 * np.log((e + pz) / (e - pz))
    jet_rapidity = 0.5 * np.log((ak.sum(e, axis=1) + ak.sum(pz, axis=1)) / (ak.sum(e, axis=1) - ak.sum(pz, axis=1)))
    outside = np.hypot(rapidity - jet_rapidity, a.part_dphi) > RADIUS
    assert ak.all(ak.sum(pt[outside], axis=1) < 0.05 * ak.sum(pt, axis=1))

    flags = np.stack([ak.to_numpy(ak.flatten(a[f])) for f in PARTICLE_FLAGS], axis=1)
    assert set(np.unique(flags)) <= {0, 1}
    assert np.all(flags.sum(axis=1) == 1)
    charge = ak.to_numpy(ak.flatten(a.part_charge))
    charged = flags[:, 0] | flags[:, 3] | flags[:, 4]
    assert np.all((charge != 0) == charged.astype(bool))
    # Neutrals carry no track parameters (as in JetClass); tracks have positive errors.
    for name in ("part_d0val", "part_d0err", "part_dzval", "part_dzerr"):
        values = ak.to_numpy(ak.flatten(a[name]))
        assert np.all(values[~charged.astype(bool)] == 0), name
    d0err = ak.to_numpy(ak.flatten(a.part_d0err))[charged.astype(bool)]
    assert np.all(d0err > 0)
    assert 0.01 < np.median(d0err) < 0.1  # mm: CMS-like, ~10 um for hard, ~100 um for 1 GeV tracks
    # Photons are massless calorimeter objects; PF energy = |p| for them.
    photon = flags[:, 2].astype(bool)
    p = np.sqrt(ak.flatten(a.part_px) ** 2 + ak.flatten(a.part_py) ** 2 + ak.flatten(a.part_pz) ** 2)
    np.testing.assert_allclose(ak.to_numpy(p)[photon], ak.to_numpy(ak.flatten(a.part_energy))[photon], rtol=1e-4)


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_tau1_is_the_normalised_measure_around_the_jet_axis(shards, process):
    """With one exclusive-kt axis (the jet itself), tau1 = sum pT_i dR_i / (R0 sum pT_i)."""
    a = shards[process]["arrays"]
    px, py, pz, e = (ak.values_astype(a[f"part_{k}"], np.float64) for k in ("px", "py", "pz", "energy"))
    pt = np.hypot(px, py)
    rap = 0.5 * np.log((e + pz) / (e - pz))
    jpx, jpy, jpz, je = (ak.sum(v, axis=1) for v in (px, py, pz, e))
    jrap = 0.5 * np.log((je + jpz) / (je - jpz))
    dphi = (np.arctan2(py, px) - np.arctan2(jpy, jpx) + np.pi) % (2 * np.pi) - np.pi
    dr = np.hypot(rap - jrap, dphi)
    tau1 = ak.sum(pt * dr, axis=1) / (RADIUS * ak.sum(pt, axis=1))
    np.testing.assert_allclose(ak.to_numpy(tau1), ak.to_numpy(a.jet_tau1), rtol=2e-3, atol=1e-5)
    taus = np.stack([ak.to_numpy(a[f"jet_tau{n}"]) for n in (1, 2, 3, 4)], axis=1)
    assert np.all(taus >= 0) and np.all(taus < 1)


@pytest.mark.parametrize("process", list(EXPECTED_LABEL))
def test_soft_drop_mass_does_not_exceed_the_jet_mass(shards, process):
    a = shards[process]["arrays"]
    px, py, pz, e = (ak.to_numpy(ak.sum(ak.values_astype(a[f"part_{k}"], np.float64), axis=1)) for k in ("px", "py", "pz", "energy"))
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    sd = ak.to_numpy(a.jet_sdmass)
    assert np.all(sd >= 0)
    assert np.all(sd <= mass * (1 + 1e-4) + 1e-3)


def test_top_jets_have_three_prongs_and_the_top_mass(shards):
    top, qcd = shards["TTBar"]["arrays"], shards["ZJetsToNuNu"]["arrays"]
    tau32_top = np.mean(ak.to_numpy(top.jet_tau3 / top.jet_tau2))
    tau32_qcd = np.mean(ak.to_numpy(qcd.jet_tau3 / qcd.jet_tau2))
    assert tau32_top < tau32_qcd - 0.1, (tau32_top, tau32_qcd)
    sd_top, sd_qcd = np.mean(ak.to_numpy(top.jet_sdmass)), np.mean(ak.to_numpy(qcd.jet_sdmass))
    assert 120 < sd_top < 220, sd_top
    assert sd_qcd < 100 and sd_qcd < sd_top - 50, (sd_qcd, sd_top)
    # Most top jets have a groomed mass in a window around m_t; few QCD jets do.
    in_window = lambda a: np.mean((ak.to_numpy(a.jet_sdmass) > 130) & (ak.to_numpy(a.jet_sdmass) < 210))  # noqa: E731
    assert in_window(top) > 0.5 > 0.25 > in_window(qcd)
    # Top jets hold more particles (three hard prongs) than q/g jets of the same pT.
    assert np.mean(ak.to_numpy(top.jet_nparticles)) > np.mean(ak.to_numpy(qcd.jet_nparticles))


def test_b_decays_give_displaced_tracks_in_top_jets(shards):
    """Every top jet holds a b quark: its B-hadron decay yields tracks with large d0 significance."""

    def displaced_fraction(a):
        charged = ak.to_numpy(ak.flatten(a.part_charge)) != 0
        d0 = ak.to_numpy(ak.flatten(a.part_d0val))[charged]
        err = ak.to_numpy(ak.flatten(a.part_d0err))[charged]
        return np.mean(np.abs(d0 / err) > 5)

    top, qcd = displaced_fraction(shards["TTBar"]["arrays"]), displaced_fraction(shards["ZJetsToNuNu"]["arrays"])
    assert top > 1.5 * qcd and top > 0.02, (top, qcd)


def test_summary_counts(shards):
    for process, shard in shards.items():
        s = shard["summary"]
        assert s["process"] == process and s["shard"] == 0 and s["label"] == EXPECTED_LABEL[process]
        assert s["events"] > 0 and s["events"] % 200 == 0
        assert s["jets_written"] == N_JETS <= s["jets_selected"]
        assert s["jets_selected"] + s["jets_not_top_matched"] == s["jets_in_window"]
    assert shards["ZJetsToNuNu"]["summary"]["jets_not_top_matched"] == 0
    # Not every TTBar jet in the window holds a whole top decay.
    assert shards["TTBar"]["summary"]["jets_not_top_matched"] > 0


def _record(events: list[list[tuple[int, tuple[float, float, float], list[int]]]]) -> GenRecord:
    """A GenRecord from (PDG, (pt, eta, phi), daughters) per particle (other fields unused)."""
    pdg, px, py, pz, daughters = [], [], [], [], []
    for event in events:
        pdg.append([p[0] for p in event])
        px.append([p[1][0] * np.cos(p[1][2]) for p in event])
        py.append([p[1][0] * np.sin(p[1][2]) for p in event])
        pz.append([p[1][0] * np.sinh(p[1][1]) for p in event])
        daughters.append([p[2] for p in event])
    particles = ak.zip({"PDG": pdg, "px": px, "py": py, "pz": pz})
    return GenRecord(particles=particles, parents=ak.Array(daughters), daughters=ak.Array(daughters))


def test_top_partons_follow_copies_to_the_last_quarks():
    top_event = [
        (2212, (0.0, 0.0, 0.0), [1]),
        (6, (500.0, 0.1, 0.2), [2]),  # top, then its recoil copy, which decays
        (6, (510.0, 0.1, 0.2), [3, 4]),
        (24, (300.0, 0.2, 0.3), [5]),  # W -> W copy -> u dbar
        (5, (200.0, 0.3, -0.1), [6, 7]),  # b radiates a gluon: b copy is the last b
        (24, (300.0, 0.2, 0.3), [8, 9]),
        (5, (190.0, 0.35, -0.15), []),
        (21, (10.0, 0.0, 1.0), []),
        (2, (150.0, 0.1, 0.5), [10]),
        (-1, (150.0, 0.4, 0.1), []),
        (2, (148.0, 0.12, 0.55), []),
        (-6, (500.0, -1.0, 3.0), [12]),  # anti-top decaying leptonically: W- -> e nu
        (-24, (300.0, -1.0, 3.0), [13, 14]),
        (11, (150.0, -1.0, 3.0), []),
        (-12, (150.0, -1.0, 3.0), []),
    ]
    no_top = [(21, (100.0, 0.0, 0.0), [])]
    # The anti-top above has no W daughter from a top decay (t -> W b is required): give it one.
    top_event[11] = (-6, (500.0, -1.0, 3.0), [12, 15])
    top_event.append((-5, (100.0, -1.1, 3.0), []))
    tops = top_decay_partons(_record([no_top, top_event]))
    assert tops.event.tolist() == [1]  # only the hadronic top counts
    np.testing.assert_allclose(tops.eta[0], [0.35, 0.12, 0.4], atol=1e-9)  # b, u, dbar
    np.testing.assert_allclose(tops.phi[0], [-0.15, 0.55, 0.1], atol=1e-9)

    jet_event = np.array([0, 1, 1, 1])
    jet_eta = np.array([0.2, 0.25, 0.25, -1.0])
    jet_phi = np.array([0.2, 0.2, 0.2 + np.pi, 3.0])
    matched = jets_matched_to_tops(jet_event, jet_eta, jet_phi, tops, RADIUS)
    assert matched.tolist() == [False, True, False, False]
    # A smaller radius no longer holds all three quarks.
    assert not jets_matched_to_tops(jet_event, jet_eta, jet_phi, tops, 0.3).any()


def test_detector_parameters_are_cms_like():
    d = DELPHES_CMS_LIKE
    eta = lambda theta_deg: -np.log(np.tan(np.radians(theta_deg) / 2))  # noqa: E731
    assert eta(d.tracker_min_theta_deg) == pytest.approx(2.5)
    assert eta(d.calorimeter_min_theta_deg) == pytest.approx(3.0)
    assert d.magnetic_field_tesla == 3.8
    assert 0.01 < np.hypot(d.ecal_stochastic / np.sqrt(100), d.ecal_constant) < 0.02  # 100 GeV photon
    assert 0.1 < np.hypot(d.hcal_stochastic / np.sqrt(100), d.hcal_constant) < 0.2  # 100 GeV hadron
    assert 0.01 < d.sigma_pt_over_pt2 * 100 < 0.05  # 100 GeV track


def test_same_seed_gives_identical_bytes_and_shards_differ(tmp_path):
    paths = [tmp_path / sub / "ZJetsToNuNu_000.root" for sub in ("a", "b", "c")]
    simulate_jetclass_shard("ZJetsToNuNu", 0, 8, paths[0], seed=5, **QUICK)
    simulate_jetclass_shard("ZJetsToNuNu", 0, 8, paths[1], seed=5, **QUICK)
    simulate_jetclass_shard("ZJetsToNuNu", 1, 8, paths[2], seed=5, **QUICK)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with uproot.open(paths[0]) as f0, uproot.open(paths[2]) as f2:
        pt0, pt2 = f0["tree"]["jet_pt"].array(library="np"), f2["tree"]["jet_pt"].array(library="np")
    assert len(pt0) == len(pt2) == 8
    assert not np.array_equal(pt0, pt2)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"process": "WToQQ"}, "'WToQQ'"),
        ({"n_jets": 0}, "0"),
        ({"n_jets": -3}, "-3"),
        ({"shard": -1}, "-1"),
        ({"jet_pt_min": 900.0, "jet_pt_max": 800.0}, "900.0"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, kwargs, named):
    args = {"process": "TTBar", "shard": 0, "n_jets": 10, "output": tmp_path / "x.root"} | kwargs
    with pytest.raises(TaufmError, match=named):
        simulate_jetclass_shard(args.pop("process"), args.pop("shard"), args.pop("n_jets"), args.pop("output"), **args)
    assert not (tmp_path / "x.root").exists()


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    original = jetclass._JetClassWriter.flush

    def flush_then_fail(self):
        original(self)
        raise OSError("disk full")

    monkeypatch.setattr(jetclass._JetClassWriter, "flush", flush_then_fail)
    out = tmp_path / "out" / "TTBar_000.root"
    with pytest.raises(OSError, match="disk full"):
        simulate_jetclass_shard("TTBar", 0, 3, out, **QUICK)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no scratch directory left behind either


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TaufmError, match="file"):
        simulate_jetclass_shard("TTBar", 0, 3, blocker / "TTBar_000.root", **QUICK)


def test_a_selection_that_finds_nothing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(jetclass, "_MAX_EVENTS_WITHOUT_JET", 100)
    out = tmp_path / "ZJetsToNuNu_000.root"
    with pytest.raises(TaufmError, match="no jet passed the selection in 100 events"):
        simulate_jetclass_shard("ZJetsToNuNu", 0, 3, out, jet_abs_eta_max=1e-9, **QUICK)
    assert not out.exists()
