"""e+e- ingestion on hand-built events with known answers, both podio namings, and bad input."""

from __future__ import annotations

import json

import awkward as ak

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from taufm.errors import TaufmError
from taufm.ingest.ee import EEIngestSettings, ingest_ee_file
from taufm.ingest.shards import CANDIDATE_COLUMNS, MASK_COLUMN
from taufm.physics.tau import DM_1H0PI0, DM_1H1PI0, DM_3H0PI0, DM_3HNPI0

from .edm4hep_events import (
    KNOWN_EVENTS,
    assert_same_rows,
    rewrite_events,
    tau_copy_chain,
    tau_to_omega_pi_nu,
    tau_to_pi_nu,
    tau_to_rho_nu,
    tau_with_dalitz_pi0,
    write_events,
    z_to_ee_near_a_quark_jet,
)

SMALL_CHUNKS = EEIngestSettings(chunk_size=3)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """The hand-built events in one file, ingested; rows grouped by event number."""
    d = tmp_path_factory.mktemp("known")
    write_events(d / "known.root", [make() for make in KNOWN_EVENTS])
    manifest = ingest_ee_file(d / "known.root", d / "known.parquet", sample="test", settings=SMALL_CHUNKS)
    table = pq.read_table(d / "known.parquet").to_pydict()
    rows: dict[int, list[dict]] = {}
    for i, event in enumerate(table["event"]):
        rows.setdefault(event, []).append({k: v[i] for k, v in table.items()})
    return rows, manifest, d


def _only(rows, event):
    assert len(rows.get(event, [])) == 1, rows.get(event)
    return rows[event][0]


def test_one_prong_tau(known):
    row = _only(known[0], 0)
    assert row["label"] == 1 and row["decay_mode"] == DM_1H0PI0
    assert row["gen_tau_vis_pt"] == pytest.approx(30.0, rel=1e-5)
    assert row["gen_tau_charge"] == -1.0
    assert row["n_cand"] == 1 and row[MASK_COLUMN] == [True] + [False] * 15
    assert row["cand_pt"][0] == pytest.approx(30.0, rel=1e-5) and row["cand_isChargedHadron"][0] == 1.0
    assert row["cand_charge"][0] == -1.0 and row["cand_d0"][0] == pytest.approx(0.01)
    assert row["cand_d0err"][0] == pytest.approx(0.01) and row["cand_dzerr"][0] == pytest.approx(0.02)


def test_rho_through_an_intermediate_resonance(known):
    row = _only(known[0], 1)
    assert row["label"] == 1 and row["decay_mode"] == DM_1H1PI0
    # Visible pT: pi- (20) + two photons, nearly collinear -> ~34 GeV, equal to the jet here.
    assert row["gen_tau_vis_pt"] == pytest.approx(row["jet_pt"], rel=1e-4)
    assert row["n_cand"] == 3
    assert row["cand_pt"][:3] == sorted(row["cand_pt"][:3], reverse=True), "candidates in decreasing pT"
    assert sum(row["cand_isPhoton"]) == 2 and sum(row["cand_isChargedHadron"]) == 1
    # Neutral candidates carry the lifetime sentinel.
    photons = [i for i in range(3) if row["cand_isPhoton"][i]]
    assert all(row["cand_d0"][i] == 0.0 and row["cand_d0err"][i] == 0.0 for i in photons)


def test_three_prong_taus(known):
    assert _only(known[0], 2)["decay_mode"] == DM_3H0PI0
    row = _only(known[0], 3)
    assert row["decay_mode"] == DM_3HNPI0 and row["n_cand"] == 5
    assert sum(row["cand_charge"]) == -1.0


def test_leptonic_tau_is_not_hadronic_and_its_jet_is_cleaned(known):
    rows, manifest, _ = known
    assert 4 not in rows
    hadronic = next(r for r in manifest["cutflow"] if r["cut"] == "hadronic")
    assert hadronic["in"] == 8 and hadronic["out"] == 7  # 8 taus, one of them leptonic


def test_qq_event_gives_background_jets_only(known):
    rows = known[0][5]
    assert len(rows) == 2
    assert all(r["label"] == 0 and r["decay_mode"] == -1 and np.isnan(r["gen_tau_vis_pt"]) for r in rows)
    assert all(not np.isnan(r["gen_jet_pt"]) for r in rows)


def test_jet_near_a_generator_electron_is_removed(known):
    assert 6 not in known[0]


def test_two_taus_competing_for_one_jet_match_one_to_one(known):
    row = _only(known[0], 7)
    assert row["label"] == 1
    assert row["gen_tau_vis_pt"] == pytest.approx(30.0, rel=1e-5), "the tau nearest to the jet axis wins"
    matched = next(r for r in known[1]["cutflow"] if r["cut"].startswith("hadronic tau matched"))
    # Taus of events 0-3, 6, 7 (x2) are hadronic; event 6's gen jet is cleaned; one of event 7's loses.
    assert matched["in"] == 7 and matched["out"] == 5


def test_cutflow_accounts_for_every_event_and_jet(known):
    rows, manifest, _ = known
    flow = manifest["cutflow"]
    events = next(r for r in flow if r["objects"] == "events")
    assert events["in"] == manifest["events"] == len(KNOWN_EVENTS)
    reco = [r for r in flow if r["objects"] == "reco jets" and not r["cut"].startswith("more than")]
    for before, after in zip(reco, reco[1:]):
        assert before["out"] == after["in"], (before, after)
    assert reco[-1]["out"] == manifest["jets"] == sum(len(v) for v in rows.values())
    assert manifest["signal_jets"] == sum(r["label"] for v in rows.values() for r in v)
    assert sum(manifest["jets_per_split"].values()) == manifest["jets"]


@pytest.mark.parametrize("generation", ["podio-0.17", "podio-1.3"])
def test_every_podio_generation_gives_the_same_shard(tmp_path, generation):
    events = [make() for make in KNOWN_EVENTS]
    tables = {}
    for name in ("podio-0.16", generation):
        root = tmp_path / name / "events.root"
        write_events(root, events, generation=name)
        manifest = ingest_ee_file(root, tmp_path / name / "events.parquet", sample="test")
        assert manifest["layout"]["generation"] == name
        tables[name] = pq.read_table(tmp_path / name / "events.parquet").to_pydict()
    with uproot.open(tmp_path / generation / "events.root") as f:
        pdg = "PandoraPFOs.PDG" if generation == "podio-1.3" else "PandoraPFOs.type"
        assert "_MCParticles_daughters.index" in f["events"] and pdg in f["events"]
    assert_same_rows(tables["podio-0.16"], tables[generation])


def test_chunking_does_not_change_the_shard(tmp_path, known):
    _, _, d = known
    ingest_ee_file(d / "known.root", tmp_path / "one_chunk.parquet", sample="test", settings=EEIngestSettings(chunk_size=1000))
    assert_same_rows(pq.read_table(tmp_path / "one_chunk.parquet").to_pydict(), pq.read_table(d / "known.parquet").to_pydict())


def test_signed_and_absolute_angles(tmp_path):
    write_events(tmp_path / "rho.root", [tau_to_rho_nu()])
    signed = ingest_ee_file(tmp_path / "rho.root", tmp_path / "s.parquet", sample="t")
    absolute = ingest_ee_file(tmp_path / "rho.root", tmp_path / "a.parquet", sample="t", settings=EEIngestSettings(signed_angles=False))
    s = pq.read_table(tmp_path / "s.parquet").to_pydict()
    a = pq.read_table(tmp_path / "a.parquet").to_pydict()
    assert signed["settings"]["signed_angles"] and not absolute["settings"]["signed_angles"]
    assert min(s["cand_deta"][0][:3]) < 0 < max(s["cand_deta"][0][:3])
    assert a["cand_deta"][0][:3] == pytest.approx(np.abs(s["cand_deta"][0][:3]))


def test_truncation_to_max_candidates(tmp_path):
    write_events(tmp_path / "rho.root", [tau_to_rho_nu()])
    ingest_ee_file(tmp_path / "rho.root", tmp_path / "t.parquet", sample="t", settings=EEIngestSettings(max_candidates=2))
    row = pq.read_table(tmp_path / "t.parquet").to_pylist()[0]
    assert row["n_cand"] == 3 and len(row["cand_pt"]) == 2 and row[MASK_COLUMN] == [True, True]
    assert set(CANDIDATE_COLUMNS) <= set(row)


def test_simulated_ztautau_taus_are_found_and_matched(ee_files, tmp_path):
    manifest = ingest_ee_file(ee_files["Z_Ztautau"], tmp_path / "z.parquet", sample="Z_Ztautau")
    table = pq.read_table(tmp_path / "z.parquet", columns=["label", "decay_mode", "jet_pt", "gen_tau_vis_pt"]).to_pydict()
    label = np.array(table["label"])
    response = np.array(table["jet_pt"])[label == 1] / np.array(table["gen_tau_vis_pt"])[label == 1]
    assert manifest["signal_jets"] > 0.6 * manifest["events"]
    assert 0.85 < np.median(response) < 1.1
    dm = np.array(table["decay_mode"])[label == 1]
    assert 0.3 < np.mean(dm == DM_1H1PI0) < 0.5


# --- Bad input ------------------------------------------------------------------------------------


def _no_output(tmp_path):
    return not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.json"))


def test_missing_file(tmp_path):
    with pytest.raises(TaufmError, match="nowhere.root: no such file"):
        ingest_ee_file(tmp_path / "nowhere.root", tmp_path / "out.parquet", sample="t")
    assert _no_output(tmp_path)


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "garbage.root").write_bytes(b"this is not a ROOT file" * 100)
    with pytest.raises(TaufmError, match="garbage.root"):
        ingest_ee_file(tmp_path / "garbage.root", tmp_path / "out.parquet", sample="t")
    write_events(tmp_path / "good.root", [tau_to_pi_nu() for _ in range(50)])
    data = (tmp_path / "good.root").read_bytes()
    (tmp_path / "truncated.root").write_bytes(data[: len(data) // 2])
    with pytest.raises(TaufmError, match="truncated.root"):
        ingest_ee_file(tmp_path / "truncated.root", tmp_path / "out.parquet", sample="t")
    assert _no_output(tmp_path)


@pytest.mark.parametrize("leaf", ["MCParticles.generatorStatus", "MergedRecoParticles.charge", "MergedRecoParticles.tracks_begin", "SiTracks_Refitted_1.Z0"])
def test_file_missing_a_branch(tmp_path, leaf):
    write_events(tmp_path / "good.root", [tau_to_pi_nu()])
    rewrite_events(tmp_path / "good.root", tmp_path / "broken.root", drop=(leaf,))
    with pytest.raises(TaufmError, match=f"broken.root: missing branch.*{leaf}"):
        ingest_ee_file(tmp_path / "broken.root", tmp_path / "out.parquet", sample="t")
    assert _no_output(tmp_path)


def test_file_without_events_tree_or_events(tmp_path):
    with uproot.recreate(tmp_path / "other.root") as f:
        f.mktree("tree", {"x": np.float32})
    with pytest.raises(TaufmError, match="no tree 'events'"):
        ingest_ee_file(tmp_path / "other.root", tmp_path / "out.parquet", sample="t")
    write_events(tmp_path / "one.root", [tau_to_pi_nu()])
    with uproot.open(tmp_path / "one.root") as f:
        arrays = f["events"].arrays()
    with uproot.recreate(tmp_path / "empty.root") as f:
        f.mktree("events", {k: arrays[k].type for k in arrays.fields if not k.startswith("n")})
    with pytest.raises(TaufmError, match="empty.root"):
        ingest_ee_file(tmp_path / "empty.root", tmp_path / "out.parquet", sample="t")
    assert _no_output(tmp_path)


def test_nan_momenta_are_counted_skips_not_crashes(tmp_path):
    bad = tau_to_pi_nu()
    bad.reco[0]["px"] = float("nan")
    write_events(tmp_path / "nan.root", [tau_to_pi_nu(), bad, tau_to_rho_nu()])
    manifest = ingest_ee_file(tmp_path / "nan.root", tmp_path / "out.parquet", sample="t")
    events = next(r for r in manifest["cutflow"] if r["objects"] == "events")
    assert events == {"objects": "events", "cut": "finite momenta (others skipped)", "in": 3, "out": 2}
    assert manifest["jets"] == 2
    assert json.loads((tmp_path / "out.parquet.json").read_text())["events"] == 3


def test_unknown_setting_is_named():
    with pytest.raises(TaufmError, match="jet_radus"):
        EEIngestSettings.from_mapping({"jet_radus": 0.5})
    with pytest.raises(TaufmError, match="lepton_cleaning"):
        EEIngestSettings.from_mapping({"lepton_cleaning": "electrons"})


def test_split_is_stable_when_a_file_grows(tmp_path):
    events = [tau_to_pi_nu(eta=0.1 * i) for i in range(40)]
    write_events(tmp_path / "run.root", events[:20])
    ingest_ee_file(tmp_path / "run.root", tmp_path / "small.parquet", sample="t")
    write_events(tmp_path / "run.root", events)
    ingest_ee_file(tmp_path / "run.root", tmp_path / "large.parquet", sample="t")
    small = pq.read_table(tmp_path / "small.parquet", columns=["event", "split"]).to_pydict()
    large = pq.read_table(tmp_path / "large.parquet", columns=["event", "split"]).to_pydict()
    assert dict(zip(small["event"], small["split"])).items() <= dict(zip(large["event"], large["split"])).items()


# --- Labels: tau copies, and which generator leptons clean jets -----------------------------------


def _ingest(tmp_path, events, **settings) -> tuple[dict, dict]:
    write_events(tmp_path / "events.root", events)
    name = "_".join(f"{k}-{v}" for k, v in settings.items()) or "default"
    out = tmp_path / f"{name}.parquet"
    manifest = ingest_ee_file(tmp_path / "events.root", out, sample="test", settings=EEIngestSettings(**settings))
    return pq.read_table(out).to_pydict(), manifest


def test_a_tau_copy_chain_is_one_tau_decaying_at_its_last_copy(tmp_path):
    table, manifest = _ingest(tmp_path, [tau_copy_chain()])
    hadronic = next(r for r in manifest["cutflow"] if r["objects"] == "gen taus" and r["cut"] == "hadronic")
    assert hadronic == {"objects": "gen taus", "cut": "hadronic", "in": 1, "out": 1}, "one tau, not the copy as well"
    signal = [i for i, label in enumerate(table["label"]) if label == 1]
    assert len(signal) == 1
    assert table["decay_mode"][signal[0]] == DM_1H0PI0, "the daughter tau is no charged hadron"
    assert table["gen_tau_vis_pt"][signal[0]] == pytest.approx(30.0, rel=1e-5), "visible pT of the last copy only"


def test_a_photon_from_a_resonance_does_not_make_a_decay_rare(tmp_path):
    table, _ = _ingest(tmp_path, [tau_to_omega_pi_nu()])
    assert table["label"] == [1] and table["decay_mode"] == [DM_1H1PI0]
    assert table["gen_tau_vis_pt"][0] == pytest.approx(26.0, rel=1e-3), "the omega's photon is visible"


def test_dalitz_electrons_inside_a_tau_jet_do_not_clean_it(tmp_path):
    table, manifest = _ingest(tmp_path, [tau_with_dalitz_pi0()])
    assert table["label"] == [1] and table["decay_mode"] == [DM_1H1PI0]
    other = {r["cut"]: r for r in manifest["cutflow"] if r["objects"].startswith("reco jets, other lepton cleanings")}
    assert other["lepton cleaning (all_electrons_and_muons, dR < 0.4)"]["out"] == 0, "counted: the old definition removes it"
    assert other["lepton cleaning (muons_only, dR < 0.4)"]["out"] == 1
    table_all, _ = _ingest(tmp_path, [tau_with_dalitz_pi0()], lepton_cleaning="all_electrons_and_muons")
    assert table_all["label"] == []


def test_a_prompt_electron_cleans_the_jet_it_sits_in(tmp_path):
    for mode, jets in (("prompt_electrons_and_muons", 0), ("all_electrons_and_muons", 0), ("muons_only", 1), ("off", 1)):
        table, _ = _ingest(tmp_path, [z_to_ee_near_a_quark_jet()], lepton_cleaning=mode)
        assert len(table["label"]) == jets, mode


@pytest.mark.parametrize("bad, message", [(-2, "negative index -2"), (40, "index 40 past the 3 elements it points into")])
def test_daughter_index_out_of_range_is_an_error_naming_the_event(tmp_path, bad, message):
    write_events(tmp_path / "good.root", [tau_to_rho_nu(), tau_to_pi_nu()])
    with uproot.open(tmp_path / "good.root") as f:
        leaves = [k for k in f["events"].keys() if not k.startswith("n")]
        arrays = f["events"].arrays(filter_name=lambda name: name in set(leaves))
    out = {k: arrays[k] for k in leaves}
    daughters = out["MCParticles#1.index"].tolist()
    daughters[1][0] = bad  # event 1: the tau's first daughter
    out["MCParticles#1.index"] = ak.values_astype(ak.Array(daughters), np.int32)
    with uproot.recreate(tmp_path / "bad.root") as f:
        f.mktree("events", {k: v.type for k, v in out.items()})
        f["events"].extend(out)
    with pytest.raises(TaufmError, match=rf"bad.root: MCParticles#1.index: {message} \(event 1\)"):
        ingest_ee_file(tmp_path / "bad.root", tmp_path / "out.parquet", sample="t")
    assert _no_output(tmp_path)
