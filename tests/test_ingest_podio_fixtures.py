"""Files in the real podio split-class structure of each generation (``tests/fixtures/edm4hep``,
made with CERN ROOT by ``make_edm4hep_fixtures.py``) read as the flat-branch files we write."""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from taufm.errors import TaufmError
from taufm.ingest.edm4hep import COLLECTION_TYPES, _pick_collection, collection_types, read_layout
from taufm.ingest.ee import EEIngestSettings, ingest_ee_file
from taufm.ingest.shards import LIFETIME_FEATURES

FIXTURES = Path(__file__).parent / "fixtures" / "edm4hep"
SPLIT_FILES = sorted(p for p in FIXTURES.glob("*.root") if not p.name.endswith(".flat.root"))
SENTINEL = -7.0


def test_every_generation_has_a_fixture():
    generations = {p.name.split("_")[0] for p in SPLIT_FILES}
    assert generations == {"podio-0.16", "podio-0.17", "podio-1.3"}
    assert any("no_tracks" in p.name for p in SPLIT_FILES)


def _ingest(path: Path, directory: Path) -> tuple[dict, dict]:
    """Ingest ``path`` under its split-class name (the file name enters the shard and its split)."""
    directory.mkdir()
    name = path.name.replace(".flat.root", ".root")
    shutil.copy(path, directory / name)
    out = directory / "shard.parquet"
    manifest = ingest_ee_file(directory / name, out, sample="fixture", settings=EEIngestSettings(chunk_size=7, lifetime_sentinel=SENTINEL))
    return pq.read_table(out).to_pydict(), manifest


@pytest.mark.parametrize("split_file", SPLIT_FILES, ids=lambda p: p.stem)
def test_split_class_file_gives_the_shard_of_its_flat_twin(tmp_path, split_file):
    with uproot.open(split_file) as f:
        assert any("/" in key for key in f["events"].keys(recursive=True)), "leaves sit inside split class branches"
    split_table, split_manifest = _ingest(split_file, tmp_path / "split")
    flat_table, flat_manifest = _ingest(split_file.with_name(split_file.stem + ".flat.root"), tmp_path / "flat")
    # Only the covariance leaf is named differently: a fixed-size array in a split class
    # branch carries its size in its name (covMatrix[21]), a flat jagged branch cannot.
    split_layout, flat_layout = dict(split_manifest["layout"]), dict(flat_manifest["layout"])
    if split_layout["has_tracks"]:
        assert split_layout.pop("covariance").endswith("[21]") and "[" not in flat_layout.pop("covariance")
    assert split_layout == flat_layout
    assert split_manifest["layout"]["generation"] == split_file.name.split("_")[0]
    assert split_manifest["cutflow"] == flat_manifest["cutflow"] and split_manifest["events"] == flat_manifest["events"] > 0
    assert set(split_table) == set(flat_table)
    for column in split_table:
        np.testing.assert_array_equal(np.asarray(split_table[column]), np.asarray(flat_table[column]), err_msg=column)
    assert sum(split_table["label"]) > 0 or "qq" in split_file.name


@pytest.mark.parametrize("split_file", [p for p in SPLIT_FILES if "no_tracks" not in p.name], ids=lambda p: p.stem)
def test_lifetimes_come_from_the_track_state_at_the_ip(tmp_path, split_file):
    layout = read_layout(split_file)
    assert layout.has_tracks and "covMatrix" in layout.covariance
    with uproot.open(split_file) as f:
        states = f["events"].arrays(filter_name=lambda n: n in {f"{layout.track_states}.location", f"{layout.track_states}.D0", f"{layout.tracks}.trackStates_begin"})
    location = ak.to_numpy(ak.flatten(states[f"{layout.track_states}.location"]))
    d0 = ak.to_numpy(ak.flatten(states[f"{layout.track_states}.D0"]))
    n_tracks = int(ak.sum(ak.num(states[f"{layout.tracks}.trackStates_begin"])))
    assert len(d0) == 4 * n_tracks > 0, "four states per track"
    n_states = ak.to_numpy(ak.num(states[f"{layout.track_states}.location"]))
    begin = states[f"{layout.tracks}.trackStates_begin"]
    first = ak.to_numpy(ak.flatten(begin + (np.cumsum(n_states) - n_states))).astype(np.int64)
    assert 0 < np.mean(location[first] == 1) < 1, "the IP state is first for some tracks, not for all"
    table, _ = _ingest(split_file, tmp_path / "ingest")
    mask = np.asarray(table["cand_mask"])
    read = np.asarray(table["cand_d0"])[mask & (np.asarray(table["cand_charge"]) != 0)]
    assert len(read) > 0
    at_ip = set(d0[location == 1].astype(np.float32).tolist())
    assert set(read.tolist()) <= at_ip, "every candidate's d0 is that of an IP state"
    assert not set(read.tolist()) & set(d0[location != 1].astype(np.float32).tolist())


def test_a_file_without_tracks_reads_with_sentinel_lifetimes(tmp_path):
    (path,) = [p for p in SPLIT_FILES if "no_tracks" in p.name]
    table, manifest = _ingest(path, tmp_path / "ingest")
    assert manifest["layout"]["has_tracks"] is False
    mask = np.asarray(table["cand_mask"])
    for name in LIFETIME_FEATURES:
        assert np.all(np.asarray(table[f"cand_{name}"])[mask] == SENTINEL), name


@pytest.mark.parametrize("split_file", SPLIT_FILES, ids=lambda p: p.stem)
def test_collection_types_come_from_the_podio_metadata_tree(split_file):
    """podio 0.16-1.2: (ID, type) tuples beside an ID table; podio >= 1.3: CollectionWriteInfo."""
    with uproot.open(split_file) as f:
        types = collection_types(f, split_file)
    reco = "MergedRecoParticles" if split_file.name.startswith("podio-0.16") else "PandoraPFOs"
    assert types["MCParticles"] == COLLECTION_TYPES["mc_particles"]
    assert types[reco] == COLLECTION_TYPES["reco_particles"]
    assert types.get("SiTracks_Refitted") == (None if "no_tracks" in split_file.name else COLLECTION_TYPES["tracks"])
    with uproot.open(split_file.with_name(split_file.stem + ".flat.root")) as f:
        assert collection_types(f, split_file) == {}, "flat files carry no metadata tree"


def test_metadata_types_choose_the_collection_and_ambiguity_is_named():
    leaves = {"PandoraPFOs.energy", "SelectedPFOs.energy", "MyPFOs.energy"}
    pfo = COLLECTION_TYPES["reco_particles"]
    assert _pick_collection("reco_particles", "auto", leaves, {"MyPFOs": pfo}, "f.root", "energy") == "MyPFOs"
    assert _pick_collection("reco_particles", "auto", leaves, {"MyPFOs": pfo, "PandoraPFOs": pfo}, "f.root", "energy") == "PandoraPFOs"
    with pytest.raises(TaufmError, match=r"f.root: several edm4hep::ReconstructedParticleCollection collections \(MyPFOs, SelectedPFOs\).*collections.reco_particles"):
        _pick_collection("reco_particles", "auto", leaves, {"MyPFOs": pfo, "SelectedPFOs": pfo}, "f.root", "energy")
