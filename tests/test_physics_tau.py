"""Tau decay modes (SPEC §3) on hand-made counts and on generated Z -> tau tau events."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from taufm.physics.tau import DECAY_MODE_NAMES, decay_mode, find_taus
from taufm.sim.ee import EE_SAMPLES, ee_beam_settings
from taufm.sim.pythia import generate_record, make_pythia


def test_decay_mode_classes_from_counts():
    n_charged = np.array([1, 1, 1, 1, 3, 3, 3, 2, 5, 1])
    n_neutral = np.array([0, 1, 2, 4, 0, 1, 2, 0, 0, 0])
    n_photons = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    expected = [0, 1, 2, 2, 3, 4, 4, 3, 5, 5]  # 2 prongs -> 3-prong classes (reference); photon -> rare
    assert decay_mode(n_charged, n_neutral, n_photons).tolist() == expected


@pytest.fixture(scope="module")
def ztautau_taus():
    pythia = make_pythia(ee_beam_settings(380.0) + EE_SAMPLES["Z_Ztautau"], seed=2024)
    record = generate_record(pythia, 800)
    return record, find_taus(record.particles, record.daughters)


def test_two_taus_per_event_with_opposite_charges(ztautau_taus):
    _, found = ztautau_taus
    assert ak.all(ak.num(found.taus) == 2)
    np.testing.assert_allclose(ak.to_numpy(ak.sum(found.taus.charge, axis=1)), 0.0)


def test_hadronic_fraction_matches_pdg(ztautau_taus):
    _, found = ztautau_taus
    hadronic = ak.to_numpy(ak.flatten(found.taus.hadronic))
    n = len(hadronic)
    expected = 0.648  # 1 - B(e) - B(mu) = 1 - 0.1782 - 0.1739 (PDG)
    assert abs(hadronic.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


# PDG branching fractions grouped into the six classes, normalised to hadronic decays (K0 and eta
# count as neutral hadrons); the tolerance adds 0.02 for what PDG-level grouping leaves out.
PDG_DECAY_MODE_FRACTIONS = {"1h0pi0": 0.178, "1h1pi0": 0.415, "1hNpi0": 0.168, "3h0pi0": 0.145, "3hNpi0": 0.071, "rare": 0.005}


def test_decay_mode_fractions_match_pdg(ztautau_taus):
    _, found = ztautau_taus
    taus = ak.flatten(found.taus)
    dm = ak.to_numpy(taus.decay_mode[taus.hadronic])
    n = len(dm)
    for code, name in enumerate(DECAY_MODE_NAMES):
        expected = PDG_DECAY_MODE_FRACTIONS[name]
        observed = np.mean(dm == code)
        tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 0.02
        assert abs(observed - expected) < tolerance, (name, observed, expected)
    assert np.all(ak.to_numpy(taus.decay_mode[~taus.hadronic]) == -1)


def test_visible_momentum_excludes_neutrinos_and_is_physical(ztautau_taus):
    record, found = ztautau_taus
    taus = ak.flatten(found.taus)
    vis_p = np.sqrt(taus.vis_px**2 + taus.vis_py**2 + taus.vis_pz**2)
    mass2 = ak.to_numpy(taus.vis_energy**2 - vis_p**2)
    had = ak.to_numpy(taus.hadronic)
    # Visible mass of a hadronic tau lies between m(pi) and m(tau).
    assert np.all(mass2[had] > 0.13**2 * 0.9)
    assert np.all(mass2[had] < 1.777**2 * 1.001)
    # Visible energy is below the tau energy (neutrinos carry some away).
    flat = ak.flatten(record.particles)
    start = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(record.particles)))[:-1]])
    tau_global = ak.to_numpy(ak.flatten(found.taus.index + start))
    assert np.all(ak.to_numpy(taus.vis_energy) < ak.to_numpy(flat.energy)[tau_global])


def test_products_are_final_or_counted_mesons(ztautau_taus):
    record, found = ztautau_taus
    pdg = ak.to_list(record.particles.PDG)
    status = ak.to_list(record.particles.generatorStatus)
    for event in range(50):
        for products in ak.to_list(found.products[event]):
            for i in products:
                assert status[event][i] == 1 or abs(pdg[event][i]) in (111, 221, 130, 310, 311)
