"""JetClass ingestion: features against hand-computed values, labels, splits, cutflow, bad input."""

from __future__ import annotations

import json
import math

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from taufm.errors import TaufmError
from taufm.ingest.jetclass import ingest_jetclass_file
from taufm import paths
from taufm.ingest.shards import CANDIDATE_COLUMNS, SPLITS, assign_split
from taufm.sim.jetclass import LABELS, simulate_jetclass_shard

N_SIM_JETS = 60
SIM_LABEL = {"ZJetsToNuNu": "label_QCD", "TTBar": "label_Tbqq"}
FLAG_OF_KIND = {
    "ch": "isChargedHadron",
    "nh": "isNeutralHadron",
    "ph": "isPhoton",
    "el": "isElectron",
    "mu": "isMuon",
}
JET_SCALARS = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_sdmass", "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4")
FLOAT_PART_FIELDS = ("px", "py", "pz", "energy", "deta", "dphi", "charge", "d0val", "d0err", "dzval", "dzerr")


# --- Writing small JetClass-layout files by hand -------------------------------------------------


def cand(px, py, pz, energy, kind, *, charge=0.0, deta=0.0, dphi=0.0, d0=0.0, d0err=0.0, dz=0.0, dzerr=0.0) -> dict:
    """One candidate as a record of JetClass ``part_*`` fields (without the prefix)."""
    record = {"px": px, "py": py, "pz": pz, "energy": energy, "deta": deta, "dphi": dphi, "charge": charge}
    record |= {"d0val": d0, "d0err": d0err, "dzval": dz, "dzerr": dzerr}
    record |= {flag: int(kind == k) for k, flag in FLAG_OF_KIND.items()}
    return record


def jet(candidates, label, *, pt=40.0, eta=0.0, phi=0.0, energy=100.0, nparticles=None) -> dict:
    scalars = {"jet_pt": pt, "jet_eta": eta, "jet_phi": phi, "jet_energy": energy, "jet_sdmass": 1.0}
    scalars |= {f"jet_tau{n}": 0.1 * n for n in (1, 2, 3, 4)}
    scalars["jet_nparticles"] = len(candidates) if nparticles is None else nparticles
    return {"candidates": candidates, "label": label, **scalars}


def write_jetclass(
    path, jets, *, drop=(), label_branches=LABELS, label_dtype=np.bool_, labels=None, tree_name="tree", extra=None
):
    """Write ``jets`` as tree ``tree`` in the JetClass layout (one shared ``npart`` counter).

    ``labels`` (branch -> values) overrides the one-hot labels made from each jet's ``label``;
    ``extra`` adds branches (e.g. a jagged branch with its own counter).
    """
    fields = (*FLOAT_PART_FIELDS, *FLAG_OF_KIND.values())
    counts = np.array([len(j["candidates"]) for j in jets], dtype=np.int64)
    flat = {}
    for field in fields:
        dtype = np.int32 if field.startswith("is") else np.float32
        flat[field] = np.array([c[field] for j in jets for c in j["candidates"]], dtype=dtype)
    data = {"part": ak.unflatten(ak.zip({f: v for f, v in flat.items() if f"part_{f}" not in drop}, depth_limit=1), counts)}
    for name in (*JET_SCALARS, "jet_nparticles"):
        if name not in drop:
            data[name] = np.array([j[name] for j in jets], dtype=np.float32)
    if labels is None:
        labels = {b: np.array([j["label"] == b for j in jets]) for b in label_branches}
    data |= {b: np.asarray(v).astype(label_dtype) for b, v in labels.items()}
    data |= extra or {}
    types = {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()}
    with uproot.recreate(path) as file:
        tree = file.mktree(
            tree_name, types, counter_name=lambda counted: f"n{counted}", field_name=lambda outer, inner: f"{outer}_{inner}"
        )
        tree.extend(data)
    return path


# Jet 0: three candidates with hand-computed pT and mass, unsorted on input.
JET0 = [
    cand(3.0, 4.0, 0.0, 13.0, "ch", charge=-1.0, deta=-0.1, dphi=0.2, d0=0.5, d0err=0.05, dz=-0.7, dzerr=0.07),  # pT 5, m 12
    cand(0.0, 10.0, 7.0, math.hypot(10.0, 7.0), "ph", deta=0.3, dphi=-0.4, d0=9.0, d0err=9.0, dz=9.0, dzerr=9.0),  # pT 10, m 0
    cand(1.0, 0.0, 0.0, 0.5, "nh", deta=-0.25, dphi=-0.05, d0=7.0, d0err=7.0, dz=7.0, dzerr=7.0),  # pT 1, E < p: m 0
]
# Jet 1: five charged pions with pT 1..5, shuffled, for the truncation test.
JET1 = [cand(pt, 0.0, 0.0, pt + 0.1, "ch", charge=1.0, deta=0.01 * pt) for pt in (3.0, 1.0, 5.0, 2.0, 4.0)]
# Jet 4: an electron and a muon.
JET4 = [cand(0.0, -20.0, 0.0, 20.0, "el", charge=-1.0, d0=0.1), cand(6.0, 8.0, 0.0, 10.0, "mu", charge=1.0, d0=-0.2)]


def hand_jets() -> list[dict]:
    """Five jets: two good, one without candidates, one with a NaN momentum, one lepton jet."""
    nan_jet = [cand(float("nan"), 1.0, 0.0, 2.0, "ch", charge=1.0), cand(1.0, 1.0, 0.0, 2.0, "ph")]
    # |p| = pT cosh(eta) = 40 * 1.25 = 50 with eta = asinh(0.75); E = 130 -> m = 120.
    return [
        jet(JET0, "label_QCD", pt=40.0, eta=math.asinh(0.75), phi=0.3, energy=130.0),
        jet(JET1, "label_Hbb", pt=30.0, eta=0.0, energy=50.0),  # m = 40
        jet([], "label_Zqq"),
        jet(nan_jet, "label_Tbqq"),
        jet(JET4, "label_Wqq", pt=30.0, energy=20.0),  # E < p: m = 0
    ]


@pytest.fixture(scope="module")
def hand_file(tmp_path_factory):
    return write_jetclass(tmp_path_factory.mktemp("hand") / "Hand_000.root", hand_jets())


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    """One small shard per generated JetClass process, plus its ingested shard."""
    out = tmp_path_factory.mktemp("jetclass_sim")
    files = {}
    for process in SIM_LABEL:
        root = out / f"{process}_000.root"
        simulate_jetclass_shard(process, 0, N_SIM_JETS, root, seed=7, multiparton_interactions=False)
        shard = out / f"{process}_000.parquet"
        manifest = ingest_jetclass_file(root, shard, sample=process, max_candidates=64)
        files[process] = {"root": root, "shard": shard, "manifest": manifest}
    return files


def read(shard) -> dict:
    """The shard as numpy arrays (fixed-size lists as 2-D arrays)."""
    table = pq.read_table(shard)
    out = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def assert_no_output(shard) -> None:
    assert not shard.exists()
    assert not paths.manifest(shard).exists()
    if shard.parent.exists():
        assert list(shard.parent.iterdir()) == []


def check_cutflow(manifest) -> None:
    cutflow = manifest["cutflow"]
    assert cutflow[0]["cut"] == "read" and cutflow[0]["in"] == manifest["entries"]
    assert cutflow[-1]["cut"] == "written" and cutflow[-1]["out"] == manifest["jets"]
    for before, after in zip(cutflow, cutflow[1:]):
        assert after["in"] == before["out"]
    assert all(step["out"] <= step["in"] for step in cutflow)
    assert sum(manifest["jets_per_split"].values()) == manifest["jets"]
    assert sum(manifest["labels"].values()) == manifest["jets"]


# --- Simulated files --------------------------------------------------------------------------------


@pytest.mark.parametrize("process", list(SIM_LABEL))
def test_simulated_file_rows_labels_and_manifest(sim_files, process):
    info = sim_files[process]
    manifest, columns = info["manifest"], read(info["shard"])
    assert manifest["entries"] == manifest["jets"] == N_SIM_JETS
    check_cutflow(manifest)
    assert json.loads(paths.manifest(info["shard"]).read_text()) == manifest
    assert manifest["labels"][SIM_LABEL[process]] == N_SIM_JETS
    np.testing.assert_array_equal(columns["label"], LABELS.index(SIM_LABEL[process]))
    np.testing.assert_array_equal(columns["entry"], np.arange(N_SIM_JETS))
    assert set(columns["sample"]) == {process} and set(columns["file"]) == {f"{process}_000.root"}
    ratios = dict(zip(SPLITS, (0.8, 0.1, 0.1)))
    np.testing.assert_array_equal(columns["split"], assign_split(process, f"{process}_000.root", np.arange(N_SIM_JETS), ratios))
    dtypes = {"entry": np.int64, "split": np.int8, "label": np.int8, "n_cand": np.int32, "jet_mass": np.float32}
    for name, dtype in dtypes.items():
        assert columns[name].dtype == dtype, name
    for name in CANDIDATE_COLUMNS:
        assert columns[name].shape == (N_SIM_JETS, 64) and columns[name].dtype == np.float32, name
    assert columns["cand_mask"].dtype == np.bool_

    with uproot.open(info["root"]) as file:
        arrays = file["tree"].arrays()
    np.testing.assert_array_equal(columns["n_cand"], ak.to_numpy(ak.num(arrays.part_px)))
    np.testing.assert_array_equal(columns["cand_mask"].sum(axis=1), np.minimum(columns["n_cand"], 64))
    assert manifest["truncated_jets"] == int((columns["n_cand"] > 64).sum())
    # pT column: each jet's constituent pTs, sorted decreasing, truncated, zero padded.
    pt = np.hypot(arrays.part_px, arrays.part_py)
    expected = ak.to_numpy(ak.fill_none(ak.pad_none(ak.sort(pt, ascending=False)[:, :64], 64, clip=True), 0.0))
    np.testing.assert_allclose(columns["cand_pt"], expected, rtol=1e-6)
    assert np.all(np.diff(columns["cand_pt"], axis=1)[columns["cand_mask"][:, 1:]] <= 0)
    # Jet mass from the jet four-momentum equals the constituents' invariant mass (E-scheme jets).
    total = {
        k: ak.to_numpy(ak.sum(ak.values_astype(arrays[f"part_{k}"], np.float64), axis=1)) for k in ("px", "py", "pz", "energy")
    }
    mass = np.sqrt(np.maximum(total["energy"] ** 2 - total["px"] ** 2 - total["py"] ** 2 - total["pz"] ** 2, 0))
    np.testing.assert_allclose(columns["jet_mass"], mass, rtol=2e-3, atol=0.5)
    np.testing.assert_array_equal(columns["jet_sdmass"], ak.to_numpy(arrays.jet_sdmass))
    # Lifetime: neutral candidates carry the sentinel (0 here), charged ones their d0.
    neutral = (columns["cand_charge"] == 0) & columns["cand_mask"]
    assert np.all(columns["cand_d0"][neutral] == 0) and np.any(columns["cand_d0"][~neutral & columns["cand_mask"]] != 0)


def test_chunked_reading_gives_the_same_shard(sim_files, tmp_path):
    info = sim_files["TTBar"]
    manifest = ingest_jetclass_file(info["root"], tmp_path / "chunked.parquet", sample="TTBar", max_candidates=64, chunk_size=7)
    assert pq.read_table(tmp_path / "chunked.parquet").equals(pq.read_table(info["shard"]))
    manifest.pop("chunk_size")
    assert manifest == {k: v for k, v in info["manifest"].items() if k != "chunk_size"}


# --- Hand-written files: features against hand-computed values ---------------------------------


HAND_SETTINGS = {"sample": "Hand", "max_candidates": 4, "lifetime_sentinel": -999.0, "config": {"run": "test"}}


@pytest.fixture(scope="module")
def hand_shard(hand_file, tmp_path_factory):
    shard = tmp_path_factory.mktemp("hand_out") / "Hand_000.parquet"
    manifest = ingest_jetclass_file(hand_file, shard, **HAND_SETTINGS)
    return manifest, read(shard)


def test_hand_cutflow_entries_and_labels(hand_shard):
    manifest, columns = hand_shard
    check_cutflow(manifest)
    steps = {step["cut"]: (step["in"], step["out"]) for step in manifest["cutflow"]}
    assert steps == {
        "read": (5, 5),
        "finite_momenta": (5, 4),
        "finite_features": (4, 4),
        "has_candidates": (4, 3),
        "written": (3, 3),
    }
    np.testing.assert_array_equal(columns["entry"], [0, 1, 4])
    np.testing.assert_array_equal(columns["label"], [LABELS.index(b) for b in ("label_QCD", "label_Hbb", "label_Wqq")])
    assert manifest["labels"]["label_Tbqq"] == 0 and manifest["labels"]["label_QCD"] == 1
    assert manifest["config"] == {"run": "test"}
    assert manifest["max_candidates"] == 4 and manifest["truncated_jets"] == 1
    assert manifest["settings"]["lifetime_sentinel"] == -999.0


def test_hand_features_sorted_padded_and_masked(hand_shard):
    _, c = hand_shard
    # Jet 0 sorted by pT: photon (10), charged hadron (5), neutral hadron (1), one padded slot.
    np.testing.assert_array_equal(c["cand_mask"][0], [True, True, True, False])
    np.testing.assert_allclose(c["cand_pt"][0], [10.0, 5.0, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_mass"][0], [0.0, 12.0, 0.0, 0.0], atol=2e-3)
    np.testing.assert_allclose(c["cand_deta"][0], [0.3, -0.1, -0.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_dphi"][0], [-0.4, 0.2, -0.05, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(c["cand_charge"][0], [0.0, -1.0, 0.0, 0.0])
    np.testing.assert_array_equal(c["cand_isPhoton"][0], [1, 0, 0, 0])
    np.testing.assert_array_equal(c["cand_isChargedHadron"][0], [0, 1, 0, 0])
    np.testing.assert_array_equal(c["cand_isNeutralHadron"][0], [0, 0, 1, 0])
    # Lifetime: the charged candidate's values, the sentinel for neutrals, zero in padding.
    np.testing.assert_allclose(c["cand_d0"][0], [-999.0, 0.5, -999.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_d0err"][0], [-999.0, 0.05, -999.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_dz"][0], [-999.0, -0.7, -999.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_dzerr"][0], [-999.0, 0.07, -999.0, 0.0], rtol=1e-6)
    # Jet 1: five candidates, the four of highest pT kept.
    assert c["n_cand"][1] == 5 and c["cand_mask"][1].all()
    np.testing.assert_allclose(c["cand_pt"][1], [5.0, 4.0, 3.0, 2.0])
    # Jet 1 sits at eta 0, which JetClass's convention counts as negative: part_deta turned.
    np.testing.assert_allclose(c["cand_deta"][1], [-0.05, -0.04, -0.03, -0.02], rtol=1e-6)
    # Jet 4: electron (pT 20) before muon (pT 10); both charged, so both keep their d0.
    np.testing.assert_array_equal(c["cand_isElectron"][2], [1, 0, 0, 0])
    np.testing.assert_array_equal(c["cand_isMuon"][2], [0, 1, 0, 0])
    np.testing.assert_allclose(c["cand_d0"][2], [0.1, -0.2, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(c["n_cand"], [3, 5, 2])
    # Jet masses from (pT, eta, E): 120, 40, and 0 where E < |p|.
    np.testing.assert_allclose(c["jet_mass"], [120.0, 40.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(c["jet_pt"], [40.0, 30.0, 30.0])
    np.testing.assert_allclose(c["jet_tau3"], 0.3, rtol=1e-6)


def test_unsigned_angles_take_absolute_values(hand_file, tmp_path):
    ingest_jetclass_file(hand_file, tmp_path / "abs.parquet", sample="Hand", max_candidates=4, signed_angles=False)
    c = read(tmp_path / "abs.parquet")
    np.testing.assert_allclose(c["cand_deta"][0], [0.3, 0.1, 0.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["cand_dphi"][0], [0.4, 0.2, 0.05, 0.0], rtol=1e-6)
    # Default sentinel: 0 for neutrals.
    np.testing.assert_allclose(c["cand_d0"][0], [0.0, 0.5, 0.0, 0.0], rtol=1e-6)


def test_hand_file_in_single_entry_chunks(hand_file, hand_shard, tmp_path):
    manifest = ingest_jetclass_file(hand_file, tmp_path / "one.parquet", **HAND_SETTINGS, chunk_size=1)
    columns = read(tmp_path / "one.parquet")
    for name, values in hand_shard[1].items():
        np.testing.assert_array_equal(columns[name], values, err_msg=name)
    assert manifest["cutflow"] == hand_shard[0]["cutflow"]


def test_non_finite_features_are_counted(tmp_path):
    jets = hand_jets()
    jets[0]["candidates"] = [dict(c) for c in JET0]
    jets[0]["candidates"][2]["deta"] = float("inf")
    jets[1]["jet_tau2"] = float("nan")
    jets[4]["candidates"] = [dict(c) for c in JET4]
    jets[4]["candidates"][0]["energy"] = float("-inf")
    # A NaN lifetime value of a neutral candidate is replaced by the sentinel: not a reason to skip.
    jets[3] = jet([cand(1.0, 0.0, 0.0, 1.0, "nh", d0=float("nan"))], "label_Tbqq")
    path = write_jetclass(tmp_path / "Nan_000.root", jets)
    manifest = ingest_jetclass_file(path, tmp_path / "nan.parquet", sample="Nan")
    steps = {step["cut"]: step["out"] for step in manifest["cutflow"]}
    assert steps == {"read": 5, "finite_momenta": 4, "finite_features": 2, "has_candidates": 1, "written": 1}
    check_cutflow(manifest)
    np.testing.assert_array_equal(read(tmp_path / "nan.parquet")["entry"], [3])


def test_labels_of_other_types_and_subsets(tmp_path):
    jets = hand_jets()
    for label_dtype in (np.float32, np.int32):
        path = write_jetclass(tmp_path / f"L{np.dtype(label_dtype).char}_000.root", jets, label_dtype=label_dtype)
        manifest = ingest_jetclass_file(path, tmp_path / f"{path.stem}.parquet", sample="L")
        assert manifest["labels"]["label_Wqq"] == 1
    subset = [jet(JET0, "label_Tbqq"), jet(JET1, "label_QCD")]
    path = write_jetclass(tmp_path / "Sub_000.root", subset, label_branches=("label_QCD", "label_Tbqq"))
    manifest = ingest_jetclass_file(path, tmp_path / "sub.parquet", sample="Sub")
    np.testing.assert_array_equal(read(tmp_path / "sub.parquet")["label"], [8, 0])
    assert manifest["labels"] == {"label_QCD": 1, "label_Tbqq": 1}


def test_split_depends_only_on_sample_file_and_entry(tmp_path):
    many = [jet([cand(1.0 + i, 0.0, 0.0, 2.0 + i, "ph")], "label_QCD") for i in range(300)]
    small = write_jetclass((tmp_path / "a").mkdir() or tmp_path / "a" / "QCD_007.root", many[:40])
    large = write_jetclass((tmp_path / "b").mkdir() or tmp_path / "b" / "QCD_007.root", many)
    ingest_jetclass_file(small, tmp_path / "small.parquet", sample="QCD", chunk_size=16)
    ingest_jetclass_file(large, tmp_path / "large.parquet", sample="QCD", chunk_size=128)
    split_small, split_large = read(tmp_path / "small.parquet")["split"], read(tmp_path / "large.parquet")["split"]
    np.testing.assert_array_equal(split_small, split_large[:40])
    fractions = np.bincount(split_large, minlength=3) / 300
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.07)


# --- Bad input: a TaufmError naming the file (and branch), nothing written ----------------------------


def expect_error(path, tmp_path, *fragments, **kwargs) -> None:
    shard = tmp_path / "out" / "shard.parquet"
    with pytest.raises(TaufmError) as info:
        ingest_jetclass_file(path, shard, sample="Bad", **kwargs)
    for fragment in (str(path), *fragments):
        assert fragment in str(info.value)
    assert_no_output(shard)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "Nothing_000.root", tmp_path, "does not exist")


def test_garbage_file(tmp_path):
    path = tmp_path / "Garbage_000.root"
    path.write_bytes(b"not a ROOT file at all " * 50)
    expect_error(path, tmp_path, "ROOT")


@pytest.mark.parametrize("fraction", [0.3, 0.8, 0.98])
def test_truncated_file(hand_file, tmp_path, fraction):
    data = hand_file.read_bytes()
    path = tmp_path / "Truncated_000.root"
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_error(path, tmp_path)


def test_file_without_tree(tmp_path):
    path = write_jetclass(tmp_path / "Events_000.root", hand_jets(), tree_name="events")
    expect_error(path, tmp_path, "no tree 'tree'")


def test_rntuple_instead_of_ttree(tmp_path):
    path = tmp_path / "RNTuple_000.root"
    with uproot.recreate(path) as file:
        file["tree"] = {"jet_pt": np.ones(3, dtype=np.float32)}  # writes an RNTuple
    expect_error(path, tmp_path, "not a TTree")


@pytest.mark.parametrize("branch", ["part_d0val", "part_px", "jet_sdmass", "jet_nparticles"])
def test_missing_branch(tmp_path, branch):
    path = write_jetclass(tmp_path / "Old_000.root", hand_jets(), drop=(branch,))
    expect_error(path, tmp_path, branch)


def test_empty_tree(tmp_path):
    path = write_jetclass(tmp_path / "Empty_000.root", [])
    expect_error(path, tmp_path, "no entries")


def test_labels_not_one_hot(tmp_path):
    jets = hand_jets()
    two_hot = {b: np.array([j["label"] == b for j in jets]) for b in LABELS}
    two_hot["label_Hcc"][3] = True
    expect_error(write_jetclass(tmp_path / "Two_000.root", jets, labels=two_hot), tmp_path, "entry 3", "one-hot")
    none_hot = {b: np.array([j["label"] == b for j in jets]) for b in LABELS}
    none_hot["label_QCD"][0] = False
    expect_error(write_jetclass(tmp_path / "None_000.root", jets, labels=none_hot), tmp_path, "entry 0", "one-hot")
    half = {b: np.array([j["label"] == b for j in jets], dtype=np.float32) for b in LABELS}
    half["label_Hbb"][1] = 0.5
    expect_error(write_jetclass(tmp_path / "Half_000.root", jets, labels=half, label_dtype=np.float32), tmp_path, "entry 1")


def test_label_branches_missing_or_unknown(tmp_path):
    jets = hand_jets()
    expect_error(write_jetclass(tmp_path / "NoLabel_000.root", jets, label_branches=()), tmp_path, "label_")
    labels = {b: np.array([j["label"] == b for j in jets]) for b in LABELS} | {"label_Xyz": np.zeros(5, dtype=bool)}
    expect_error(write_jetclass(tmp_path / "Xyz_000.root", jets, labels=labels), tmp_path, "label_Xyz")


def test_inconsistent_candidate_counts(tmp_path):
    jets = hand_jets()
    jets[1]["jet_nparticles"] = 4
    expect_error(write_jetclass(tmp_path / "Count_000.root", jets), tmp_path, "jet_nparticles", "entry 1")
    # A part_* branch with its own counter and other lengths than part_px.
    deta = ak.Array([[0.0]] * 5)
    path = write_jetclass(tmp_path / "Ragged_000.root", hand_jets(), drop=("part_dzerr",), extra={"part_dzerr": deta})
    expect_error(path, tmp_path, "part_dzerr", "entry 0")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_candidates": 0},
        {"chunk_size": -1},
        {"split_ratios": {"train": 0.8, "val": 0.3, "test": 0.1}},
        {"split_ratios": {"train": 1.0}},
        {"lifetime_sentinel": float("nan")},
    ],
)
def test_bad_settings(hand_file, tmp_path, kwargs):
    shard = tmp_path / "out" / "shard.parquet"
    with pytest.raises(TaufmError):
        ingest_jetclass_file(hand_file, shard, sample="Bad", **kwargs)
    assert_no_output(shard)


def test_deta_is_turned_back_from_jetclass_convention(tmp_path):
    """JetClass stores part_deta times the sign of the jet's eta; shards hold eta - eta_jet."""
    candidates = [cand(5.0, 0.0, 0.0, 5.1, "ch", charge=1.0, deta=0.2, dphi=0.1)]
    path = write_jetclass(tmp_path / "Signs_000.root", [jet(candidates, "label_QCD", eta=eta) for eta in (0.8, -0.8)])
    ingest_jetclass_file(path, tmp_path / "signs.parquet", sample="Signs")
    shard = read(tmp_path / "signs.parquet")
    assert shard["cand_deta"][:, 0].tolist() == pytest.approx([0.2, -0.2])
    assert shard["cand_dphi"][:, 0].tolist() == pytest.approx([0.1, 0.1])


def test_simulated_deta_is_the_candidates_eta_minus_the_jets(sim_files):
    for files in sim_files.values():
        shard = read(files["shard"])
        with uproot.open(files["root"]) as f:
            a = f["tree"].arrays(["part_px", "part_py", "part_pz", "jet_eta"])
        eta = np.arcsinh(a.part_pz / np.hypot(a.part_px, a.part_py))
        width = shard["cand_deta"].shape[1]
        for i, (row, mask) in enumerate(zip(shard["cand_deta"], shard["cand_mask"])):  # both in pT order
            expected = ak.to_numpy(eta[i] - a.jet_eta[i])[:width]
            np.testing.assert_allclose(row[mask], expected, atol=3e-4)
