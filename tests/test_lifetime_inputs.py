"""Lifetime-signed impact parameters and the ParT's input sets (finetune.part.inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taufm.config_checks import cross_setting_errors
from taufm.data import CANDIDATE_FEATURE_COLUMNS
from taufm.errors import TaufmError
from taufm.finetune.inputs import INPUT_SETS, LIFETIME_COLUMNS, part_inputs
from taufm.finetune.strategies import parse_strategy
from taufm.finetune.train import FinetuneSettings, build_model, model_inputs, part_settings, resolve_strategy
from taufm.ingest.shards import MASK_COLUMN
from taufm.physics.lifetime import signed_impact_parameters


def _tracks_from_vertex(n: int, flight_mm: float, seed: int = 0):
    """Tracks within ΔR ~ 0.2 of random jet axes, from a point ``flight_mm`` along the jet (negative:
    behind the primary vertex), with d0 and z0 as the detector simulation computes them (LCIO)."""
    rng = np.random.default_rng(seed)
    jet_eta, jet_phi = rng.uniform(-1.5, 1.5, n), rng.uniform(-np.pi, np.pi, n)
    deta, dphi = rng.normal(0, 0.1, n), rng.normal(0, 0.1, n)
    eta, phi = jet_eta + deta, jet_phi + dphi
    direction = np.stack([np.cos(jet_phi), np.sin(jet_phi), np.sinh(jet_eta)]) / np.cosh(jet_eta)
    vx, vy, vz = flight_mm * direction
    d0 = -vx * np.sin(phi) + vy * np.cos(phi)
    z0 = vz - (vx * np.cos(phi) + vy * np.sin(phi)) * np.sinh(eta)
    return d0, z0, deta, np.angle(np.exp(1j * dphi)), jet_eta


@pytest.mark.parametrize("flight_mm, sign", [(0.5, 1.0), (-0.5, -1.0)])
def test_tracks_from_a_point_along_the_jet_are_signed_positive_and_from_behind_negative(flight_mm, sign):
    d0, z0, deta, dphi, jet_eta = _tracks_from_vertex(2000, flight_mm)
    errors = np.full_like(d0, 0.005)
    values = signed_impact_parameters(d0, errors, z0, errors, deta, dphi, jet_eta)
    assert np.all(np.sign(values["signed_d0"]) == sign)
    assert np.all(np.sign(values["signed_dz"]) == sign)
    np.testing.assert_allclose(np.abs(values["signed_dz"]), np.abs(z0))
    np.testing.assert_allclose(np.abs(values["signed_d0"]), np.abs(d0))
    np.testing.assert_allclose(values["signed_d0_significance"], values["signed_d0"] / 0.005)


def test_candidates_without_a_track_get_zero_lifetime_values():
    values = signed_impact_parameters([0.3, 0.0, np.nan], [0.01, 0.0, 0.01], [0.2, 0.0, 0.1], [0.01, 0.0, 0.01], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], 0.5)
    for name, v in values.items():
        assert v[1] == 0 and v[2] == 0, name
        assert v[0] != 0, name


def _jets(n_jets: int = 6, n_cand: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.arange(n_cand)[None, :] < rng.integers(1, n_cand + 1, n_jets)[:, None]
    data = {c: rng.normal(size=(n_jets, n_cand)).astype(np.float32) for c in CANDIDATE_FEATURE_COLUMNS}
    data["cand_pt"] = rng.uniform(1, 20, (n_jets, n_cand)).astype(np.float32)
    data["cand_mass"] = np.abs(data["cand_mass"])
    for flag in ("cand_isElectron", "cand_isMuon", "cand_isPhoton", "cand_isChargedHadron", "cand_isNeutralHadron"):
        data[flag] = np.zeros((n_jets, n_cand), dtype=np.float32)
    data["cand_isChargedHadron"][:] = 1
    data["cand_d0"] = rng.normal(0, 0.05, (n_jets, n_cand)).astype(np.float32)
    data["cand_dz"] = rng.normal(0, 0.05, (n_jets, n_cand)).astype(np.float32)
    data["cand_d0err"] = np.full((n_jets, n_cand), 0.005, dtype=np.float32)
    data["cand_dzerr"] = np.full((n_jets, n_cand), 0.005, dtype=np.float32)
    data[MASK_COLUMN] = mask
    data["jet_eta"] = rng.uniform(-1, 1, n_jets).astype(np.float32)
    for c in [c for c in data if c.startswith("cand_")]:
        if c != MASK_COLUMN:
            data[c] = np.where(mask, data[c], 0).astype(np.float32)
    return data


def test_lifetime_inputs_change_the_model_inputs_only_when_asked():
    data = _jets()
    moved = {**data, **{c: data[c] * 3 + np.where(data[MASK_COLUMN], 0.1, 0) for c in LIFETIME_COLUMNS}}
    paper, mask = part_inputs(data, "paper")
    assert paper.shape[-1] == INPUT_SETS["paper"] == 10
    np.testing.assert_array_equal(part_inputs(moved, "paper")[0], paper)  # paper: d0, dz are not read

    with_lifetime, mask2 = part_inputs(data, "paper+lifetime")
    assert with_lifetime.shape[-1] == INPUT_SETS["paper+lifetime"] == 14
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(with_lifetime[..., :10], paper)  # the paper's channels first, unchanged
    assert np.all(with_lifetime[~mask] == 0), "padding stays zero"
    changed = part_inputs(moved, "paper+lifetime")[0]
    np.testing.assert_array_equal(changed[..., :10], paper)
    assert not np.allclose(changed[..., 10:][mask], with_lifetime[..., 10:][mask])


def test_the_part_input_set_sets_its_width_and_trains_end_to_end():
    data = _jets()
    settings = FinetuneSettings.from_mapping({"part": {"inputs": "paper+lifetime", "embed_dim": 8, "head": {"dim": 8, "n_heads": 2, "n_particle_blocks": 1, "n_class_blocks": 1}}})
    config, input_set = part_settings(settings)
    assert (config.n_features, input_set) == (14, "paper+lifetime")
    strategy = resolve_strategy("part", settings)  # finetune.part.inputs is its input set
    assert strategy.inputs == "paper+lifetime"
    model = build_model("tau_id", strategy, settings, None, seed=0)
    x, m = model_inputs(strategy, data)
    out = model(torch.from_numpy(x), torch.from_numpy(m))
    assert out.shape == (len(x), 1) and torch.isfinite(out).all()  # tau_id: one logit
    out.sum().backward()
    assert model.embedding[1].weight.grad[:, 10:].abs().sum() > 0, "the lifetime channels reach the network"


def test_bad_input_sets_are_named():
    with pytest.raises(TaufmError, match="unknown input set 'paper\\+d0'"):
        part_settings(FinetuneSettings(part={"inputs": "paper+d0"}))
    with pytest.raises(TaufmError, match="n_features is 10, but input set 'paper\\+lifetime' has 14"):
        part_settings(FinetuneSettings(part={"inputs": "paper+lifetime", "n_features": 10}))
    errors = cross_setting_errors({"finetune": {"part": {"inputs": "paper+lifetime", "n_features": 10}}})
    assert any("finetune.part: n_features 10 but input set 'paper+lifetime' has 14" in e for e in errors)


def test_the_embedded_generator_gives_tau_tracks_their_flight(ee_files, tmp_path):
    """Track impact parameters come from the generator vertices: the tracks of tau jets (cτ = 87 µm,
    boosted) lean to positive lifetime-signed significance, those of quark jets (mostly prompt,
    some b and c hadrons) much less, and neither sample has the excess on the negative side."""
    from taufm.data import read_shards
    from taufm.ingest.ee import ingest_ee_file

    tails = {}
    for sample in ("Z_Ztautau", "qq"):
        shard = tmp_path / f"{sample}.parquet"
        ingest_ee_file(ee_files[sample], shard, sample=sample)
        t = read_shards([shard], ["label", "jet_eta", *LIFETIME_COLUMNS, "cand_deta", "cand_dphi", MASK_COLUMN])
        jets = t["label"] == 1 if sample == "Z_Ztautau" else t["label"] == 0
        values = signed_impact_parameters(*(t[c][jets] for c in (*LIFETIME_COLUMNS, "cand_deta", "cand_dphi")), t["jet_eta"][jets][:, None])
        tracks = t[MASK_COLUMN][jets] & (t["cand_d0err"][jets] > 0)
        s = values["signed_d0_significance"][tracks]
        assert s.size > 300, sample
        tails[sample] = (np.mean(s > 3), np.mean(s < -3))
    (tau_above, tau_below), (quark_above, quark_below) = tails["Z_Ztautau"], tails["qq"]
    assert tau_above > 0.35 and tau_above > 2.5 * quark_above, tails
    assert tau_above > 4 * tau_below and quark_above > quark_below, tails
