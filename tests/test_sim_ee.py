"""Fuτure-like e+e- shards: the EDM4hep layout on disk, the physics inside, and bad input."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from taufm.errors import TaufmError
from taufm.physics.tau import find_taus
from taufm.sim import ee as ee_module
from taufm.sim.ee import simulate_ee_shard

from .conftest import read_collection, read_relation, relation_lists

# SPEC §2 branches with the dtypes of EDM4hep's data classes (see docs/data-format.md).
EXPECTED_BRANCHES = {
    "MCParticles.PDG": "int32",
    "MCParticles.generatorStatus": "int32",
    "MCParticles.charge": "float32",
    "MCParticles.mass": "float64",
    "MCParticles.momentum.x": "float32",
    "MCParticles.momentum.y": "float32",
    "MCParticles.momentum.z": "float32",
    "MCParticles.vertex.x": "float64",
    "MCParticles.vertex.y": "float64",
    "MCParticles.vertex.z": "float64",
    "MCParticles.endpoint.x": "float64",
    "MCParticles.endpoint.y": "float64",
    "MCParticles.endpoint.z": "float64",
    "MCParticles.parents_begin": "uint32",
    "MCParticles.parents_end": "uint32",
    "MCParticles.daughters_begin": "uint32",
    "MCParticles.daughters_end": "uint32",
    "MCParticles#0.index": "int32",
    "MCParticles#1.index": "int32",
    "MergedRecoParticles.type": "int32",
    "MergedRecoParticles.energy": "float32",
    "MergedRecoParticles.momentum.x": "float32",
    "MergedRecoParticles.momentum.y": "float32",
    "MergedRecoParticles.momentum.z": "float32",
    "MergedRecoParticles.referencePoint.x": "float32",
    "MergedRecoParticles.referencePoint.y": "float32",
    "MergedRecoParticles.referencePoint.z": "float32",
    "MergedRecoParticles.charge": "float32",
    "MergedRecoParticles.mass": "float32",
    "MergedRecoParticles.tracks_begin": "uint32",
    "MergedRecoParticles.tracks_end": "uint32",
    "MergedRecoParticles#1.index": "int32",
    "SiTracks_Refitted.trackStates_begin": "uint32",
    "SiTracks_Refitted.trackStates_end": "uint32",
    "SiTracks_Refitted_1.location": "int32",
    "SiTracks_Refitted_1.D0": "float32",
    "SiTracks_Refitted_1.Z0": "float32",
    "SiTracks_Refitted_1.phi": "float32",
    "SiTracks_Refitted_1.omega": "float32",
    "SiTracks_Refitted_1.tanLambda": "float32",
    "SiTracks_Refitted_1.covMatrix": "float32",
    "RecoMCTruthLink.weight": "float32",
    "RecoMCTruthLink#0.index": "int32",
    "RecoMCTruthLink#1.index": "int32",
    "EventHeader.eventNumber": "int32",
    "PrimaryVertices.position.x": "float32",
}


def test_files_open_with_expected_branches_and_types(ee_files):
    for sample, path in ee_files.items():
        with uproot.open(path) as f:
            assert f.classname_of("events") == "TTree", "a TTree, not an RNTuple"
            tree = f["events"]
            assert tree.num_entries > 0
            for name, dtype in EXPECTED_BRANCHES.items():
                assert name in tree, f"{sample}: missing {name}"
                array = tree[name].array()
                assert str(ak.type(array).content.content) == dtype, (name, ak.type(array))


def test_written_relations_point_both_ways(ee_files):
    path = ee_files["qq"]
    daughters = relation_lists(*read_relation(path, "MCParticles", 1))
    parents = relation_lists(*read_relation(path, "MCParticles", 0))
    n_particles = ak.to_numpy(ak.num(read_collection(path, "MCParticles").PDG))
    for event in range(20):
        d, p = ak.to_list(daughters[event]), ak.to_list(parents[event])
        assert len(d) == len(p) == n_particles[event]
        for i, kids in enumerate(d):
            for k in kids:
                assert i in p[k]
        for k, mothers in enumerate(p):
            for i in mothers:
                assert k in d[i]


def test_charge_is_conserved_in_every_event(ee_files):
    for path in ee_files.values():
        mc = read_collection(path, "MCParticles")
        final = mc[mc.generatorStatus == 1]
        np.testing.assert_allclose(ak.to_numpy(ak.sum(final.charge, axis=1)), 0.0, atol=1e-4)


def _gen_record_from_file(path):
    mc = read_collection(path, "MCParticles")
    particles = ak.zip(
        {
            "PDG": mc.PDG,
            "generatorStatus": mc.generatorStatus,
            "charge": mc.charge,
            "px": mc["momentum.x"],
            "py": mc["momentum.y"],
            "pz": mc["momentum.z"],
            "energy": np.sqrt(mc["momentum.x"] ** 2 + mc["momentum.y"] ** 2 + mc["momentum.z"] ** 2 + mc.mass**2),
        }
    )
    return particles, relation_lists(*read_relation(path, "MCParticles", 1))


def test_tau_decays_read_back_from_file_are_pdg_like(ee_files):
    particles, daughters = _gen_record_from_file(ee_files["Z_Ztautau"])
    taus = ak.flatten(find_taus(particles, daughters).taus)
    assert len(taus) == 2 * 800
    hadronic = ak.to_numpy(taus.hadronic)
    assert abs(hadronic.mean() - 0.648) < 4 * np.sqrt(0.648 * 0.352 / len(taus))
    one_prong = np.mean(ak.to_numpy(taus.n_charged[taus.hadronic]) == 1)
    assert one_prong == pytest.approx(0.775, abs=0.05)  # PDG: ~77% of hadronic decays are 1-prong


def test_reco_energy_tracks_visible_generator_energy(ee_files):
    path = ee_files["qq"]
    particles, _ = _gen_record_from_file(path)
    vis = particles[(particles.generatorStatus == 1) & (abs(particles.PDG) != 12) & (abs(particles.PDG) != 14) & (abs(particles.PDG) != 16)]
    p = np.sqrt(vis.px**2 + vis.py**2 + vis.pz**2)
    in_acceptance = abs(vis.pz) < np.cos(np.radians(8.0)) * p
    gen_energy = ak.to_numpy(ak.sum(vis.energy[in_acceptance], axis=1))
    reco_energy = ak.to_numpy(ak.sum(read_collection(path, "MergedRecoParticles").energy, axis=1))
    ok = gen_energy > 20
    ratio = reco_energy[ok] / gen_energy[ok]
    assert np.corrcoef(gen_energy[ok], reco_energy[ok])[0, 1] > 0.97
    assert 0.9 < np.median(ratio) < 1.05


def test_reco_candidates_are_particle_flow_like(ee_files):
    path = ee_files["Z_Ztautau"]
    reco = read_collection(path, "MergedRecoParticles")
    types = ak.to_numpy(ak.flatten(reco["type"]))
    assert set(np.abs(types).tolist()) <= {11, 13, 22, 211, 2112}
    charge = ak.to_numpy(ak.flatten(reco.charge))
    n_tracks = ak.to_numpy(ak.flatten(reco.tracks_end - reco.tracks_begin))
    assert np.array_equal(n_tracks == 1, charge != 0)
    # Truth links point at final-state generator particles.
    with uproot.open(path) as f:
        mc_index = f["events"]["RecoMCTruthLink#1.index"].array()
    status = read_collection(path, "MCParticles").generatorStatus
    assert ak.all(status[mc_index] == 1)
    # Lifetime information: tau decay products have displaced tracks.
    with uproot.open(path) as f:
        d0 = ak.to_numpy(ak.flatten(f["events"]["SiTracks_Refitted_1.D0"].array()))
        cov = ak.to_numpy(ak.flatten(f["events"]["SiTracks_Refitted_1.covMatrix"].array())).reshape(-1, 21)
    assert len(cov) == len(d0)
    assert np.all(cov[:, 0] > 0) and np.median(np.abs(d0) / np.sqrt(cov[:, 0])) > 1.0


def test_same_seed_is_byte_identical_and_shards_differ(tmp_path):
    a, b, c = tmp_path / "a" / "qq_000.root", tmp_path / "b" / "qq_000.root", tmp_path / "c" / "qq_000.root"
    simulate_ee_shard("qq", 0, 30, a, seed=7)
    simulate_ee_shard("qq", 0, 30, b, seed=7)
    simulate_ee_shard("qq", 1, 30, c, seed=7)
    assert a.read_bytes() == b.read_bytes()
    pdg_a = read_collection(a, "MCParticles").PDG
    pdg_c = read_collection(c, "MCParticles").PDG
    assert ak.to_list(pdg_a) != ak.to_list(pdg_c)


@pytest.mark.parametrize(
    ("sample", "events", "message"),
    [("Ztautau", 10, "unknown sample 'Ztautau'"), ("qq", 0, "positive integer"), ("qq", -5, "positive integer")],
)
def test_bad_requests_are_clear_errors(tmp_path, sample, events, message):
    with pytest.raises(TaufmError, match=message):
        simulate_ee_shard(sample, 0, events, tmp_path / "out.root")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_directory_is_named(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(TaufmError, match="not_a_dir"):
        simulate_ee_shard("qq", 0, 5, blocker / "out.root")


def test_failure_mid_shard_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ee_module.simulate_response

    def fail_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(ee_module, "simulate_response", fail_on_second_batch)
    out = tmp_path / "qq_000.root"
    with pytest.raises(RuntimeError, match="simulated crash"):
        simulate_ee_shard("qq", 0, 20, out, batch_size=10)
    assert list(tmp_path.iterdir()) == []
