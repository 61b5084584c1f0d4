"""The parametric detector response on hand-made particles with known truth."""

from __future__ import annotations

import dataclasses

import awkward as ak
import numpy as np
import pytest

from taufm.errors import TaufmError
from taufm.sim.detector import (
    TYPE_CHARGED_HADRON,
    TYPE_NEUTRAL_HADRON,
    TYPE_PHOTON,
    DetectorParameters,
    simulate_response,
)

CHARGE = {22: 0.0, 2112: 0.0, 130: 0.0, 211: 1.0, -211: -1.0, 13: -1.0, -13: 1.0, 11: -1.0, 12: 0.0}
MASS = {22: 0.0, 2112: 0.9396, 130: 0.4976, 211: 0.1396, -211: 0.1396, 13: 0.1057, -13: 0.1057, 11: 0.000511, 12: 0.0}


def particle(pdg, energy, theta=np.pi / 2, phi=0.0, vertex=(0.0, 0.0, 0.0), status=1):
    m = MASS[pdg]
    p = np.sqrt(max(energy**2 - m**2, 0.0))
    return {
        "PDG": pdg,
        "generatorStatus": status,
        "charge": CHARGE[pdg],
        "px": p * np.sin(theta) * np.cos(phi),
        "py": p * np.sin(theta) * np.sin(phi),
        "pz": p * np.cos(theta),
        "energy": energy,
        "vx": vertex[0],
        "vy": vertex[1],
        "vz": vertex[2],
    }


def events(*per_event):
    return ak.Array([list(e) for e in per_event])


IDEAL = DetectorParameters(
    sigma_pt_over_pt2=0.0,
    sigma_pt_multiple_scattering=0.0,
    sigma_d0_mm=0.0,
    sigma_d0_multiple_scattering_mm_gev=0.0,
    sigma_z0_mm=0.0,
    sigma_z0_multiple_scattering_mm_gev=0.0,
    ecal_stochastic=0.0,
    ecal_constant=0.0,
    hcal_stochastic=0.0,
    hcal_constant=0.0,
    tracking_efficiency=1.0,
    tracking_efficiency_below_1gev=1.0,
    electron_id_efficiency=1.0,
    muon_id_efficiency=1.0,
    charged_hadron_as_neutral_probability=0.0,
    neutral_hadron_as_photon_probability=0.0,
    photon_as_neutral_hadron_probability=0.0,
    neutral_fragment_probability=0.0,
)


def run(evts, params=IDEAL, seed=1):
    return simulate_response(evts, params, np.random.default_rng(seed))


def test_photon_energy_resolution_matches_ecal_parametrisation():
    params = DetectorParameters(photon_as_neutral_hadron_probability=0.0)
    out = run(events(*[[particle(22, 10.0)]] * 4000), params)
    e = ak.to_numpy(ak.flatten(out.candidates.energy))
    expected = np.hypot(0.15 / np.sqrt(10.0), 0.01)
    assert np.mean(e) == pytest.approx(10.0, rel=0.01)
    assert np.std(e) / np.mean(e) == pytest.approx(expected, rel=0.1)


def test_neutral_hadron_energy_resolution_matches_hcal_parametrisation():
    params = DetectorParameters(neutral_hadron_as_photon_probability=0.0)
    out = run(events(*[[particle(2112, 20.0)]] * 4000), params)
    cands = ak.flatten(out.candidates)
    assert set(ak.to_numpy(cands["type"]).tolist()) == {TYPE_NEUTRAL_HADRON}
    e = ak.to_numpy(cands.energy)
    assert np.std(e) / 20.0 == pytest.approx(np.hypot(0.5 / np.sqrt(20.0), 0.05), rel=0.1)


def test_track_momentum_resolution_matches_tracker_parametrisation():
    params = dataclasses.replace(IDEAL, sigma_pt_over_pt2=2e-5, sigma_pt_multiple_scattering=1e-3)
    out = run(events(*[[particle(211, 100.0)]] * 4000), params)
    c = ak.flatten(out.candidates)
    pt = np.hypot(ak.to_numpy(c.px), ak.to_numpy(c.py))
    true_pt = np.sqrt(100.0**2 - MASS[211] ** 2)
    expected = np.hypot(2e-5 * true_pt, 1e-3)  # sigma(pT)/pT^2 = a (+) b / (p sin^1.5 theta) at theta = 90 deg
    assert np.std(pt / true_pt) == pytest.approx(expected, rel=0.1)
    assert set(ak.to_numpy(c["type"]).tolist()) == {TYPE_CHARGED_HADRON}


def test_acceptance_threshold_and_neutrinos():
    out = run(
        events(
            [particle(22, 10.0, theta=np.radians(5.0))],  # outside the calorimeter
            [particle(22, 0.1)],  # below the photon threshold
            [particle(12, 50.0)],  # invisible
            [particle(22, 5.0, status=2)],  # not a final-state particle
            [particle(22, 5.0)],
        )
    )
    assert ak.num(out.candidates).tolist() == [0, 0, 0, 0, 1]


def test_close_photons_merge_into_one_cluster_and_far_ones_do_not():
    close = [particle(22, 3.0, phi=0.0), particle(22, 2.0, phi=0.004)]
    far = [particle(22, 3.0, phi=0.0), particle(22, 2.0, phi=0.1)]
    out = run(events(close, far))
    assert ak.num(out.candidates).tolist() == [1, 2]
    assert out.candidates.energy[0][0] == pytest.approx(5.0, rel=1e-6)
    links = out.links[0]
    assert sorted(ak.to_list(links.mc)) == [0, 1]
    assert ak.sum(links.weight) == pytest.approx(1.0)
    assert sorted(ak.to_list(links.weight)) == pytest.approx([0.4, 0.6])


def test_impact_parameters_follow_the_true_production_vertex():
    # A pi+ from (1, 0, 2) mm flying along +y: d0 = -x sin(phi) + y cos(phi) = -1 mm, z0 = 2 mm.
    out = run(events([particle(211, 10.0, phi=np.pi / 2, vertex=(1.0, 0.0, 2.0)), particle(22, 5.0, phi=1.0)]))
    cands = out.candidates[0]
    assert cands.track.tolist() == [0, -1]
    track = out.tracks[0][0]
    assert track.D0 == pytest.approx(-1.0, abs=1e-6)
    assert track.Z0 == pytest.approx(2.0, abs=1e-6)
    assert np.sign(track.omega) == np.sign(cands.charge[0]) == 1


def test_impact_parameter_resolution_is_applied():
    out = run(events(*[[particle(211, 50.0)]] * 3000), DetectorParameters(charged_hadron_as_neutral_probability=0.0))
    d0 = ak.to_numpy(ak.flatten(out.tracks.D0))
    ms = 1.0 / 50.0
    assert np.std(d0) == pytest.approx(np.hypot(0.005, 0.015 * ms), rel=0.1)


def test_lepton_identification_efficiency():
    params = dataclasses.replace(IDEAL, muon_id_efficiency=0.8)
    out = run(events(*[[particle(13, 20.0)]] * 4000), params)
    types = ak.to_numpy(ak.flatten(out.candidates["type"]))
    assert np.mean(types == 13) == pytest.approx(0.8, abs=0.03)
    assert set(types.tolist()) == {13, -TYPE_CHARGED_HADRON}  # mu- not identified -> pi-


def test_charged_hadron_confusion_turns_tracks_into_neutral_hadrons():
    params = dataclasses.replace(IDEAL, charged_hadron_as_neutral_probability=1.0)
    out = run(events(*[[particle(-211, 10.0)]] * 10), params)
    c = ak.flatten(out.candidates)
    assert set(ak.to_numpy(c["type"]).tolist()) == {TYPE_NEUTRAL_HADRON}
    assert ak.all(c.track == -1) and ak.all(c.charge == 0)
    assert ak.sum(ak.num(out.tracks)) == 0


def test_neutral_hadron_as_photon_confusion():
    params = dataclasses.replace(IDEAL, neutral_hadron_as_photon_probability=0.3)
    types = ak.to_numpy(ak.flatten(run(events(*[[particle(130, 10.0)]] * 4000), params).candidates["type"]))
    assert np.mean(types == TYPE_PHOTON) == pytest.approx(0.3, abs=0.03)


def test_same_seed_same_output_and_empty_events():
    evts = events([particle(211, 10.0), particle(22, 3.0)], [], [particle(2112, 8.0)])
    a, b = run(evts, DetectorParameters(), seed=5), run(evts, DetectorParameters(), seed=5)
    assert ak.to_list(a.candidates) == ak.to_list(b.candidates)
    assert ak.num(a.candidates)[1] == 0


def test_non_finite_momenta_are_rejected():
    bad = particle(22, 10.0)
    bad["px"] = float("nan")
    with pytest.raises(TaufmError, match="non-finite"):
        run(events([bad]))


def test_parameters_from_mapping_name_the_bad_key():
    with pytest.raises(TaufmError, match="ecal_stohastic"):
        DetectorParameters.from_mapping({"ecal_stohastic": 0.1}, where="detector.future")
    with pytest.raises(TaufmError, match="detector.future.tracking_efficiency"):
        DetectorParameters.from_mapping({"tracking_efficiency": 1.5}, where="detector.future")
    with pytest.raises(TaufmError, match="hcal_constant"):
        DetectorParameters.from_mapping({"hcal_constant": "high"})
    base = DetectorParameters(ecal_constant=0.5)
    assert DetectorParameters.from_mapping({"hcal_constant": 0.1}, base=base).ecal_constant == 0.5


def test_charged_hadron_showers_leave_neutral_fragments():
    params = dataclasses.replace(IDEAL, neutral_fragment_probability=1.0, neutral_fragment_max_fraction=0.4, neutral_hadron_min_energy=0.0)
    out = run(events(*[[particle(211, 20.0, phi=0.3)]] * 500), params)
    assert ak.all(ak.num(out.candidates) == 2)
    fragment = out.candidates[:, 1]
    assert ak.all(fragment["type"] == TYPE_NEUTRAL_HADRON) and ak.all(fragment.track == -1)
    fraction = ak.to_numpy(fragment.energy) / 20.0
    assert fraction.max() <= 0.4 + 1e-6 and 0.15 < fraction.mean() < 0.25  # uniform in [0, 0.4]
    phi = np.arctan2(ak.to_numpy(fragment.py), ak.to_numpy(fragment.px))
    assert np.std(phi - 0.3) == pytest.approx(0.02, rel=0.2)
    assert ak.all(out.links.mc == 0), "the fragment is linked to the pion that made it"
    # Leptons never fragment.
    assert ak.all(ak.num(run(events(*[[particle(13, 20.0)]] * 50), params).candidates) == 1)
