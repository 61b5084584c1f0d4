"""A parametric particle-flow detector response, vectorised over whole batches of events.

Stable generator particles become reconstructed candidates the way a particle-flow algorithm
(Pandora at CLIC, Delphes' energy-flow at the LHC) reports them: tracks with a momentum
resolution and impact parameters, ECAL clusters for photons (nearby photons merge into one
cluster, as the photons of an energetic pi0 do), HCAL clusters for neutral hadrons, lepton
identification with an efficiency, confusion between charged and neutral hadrons and between
photons and neutral hadrons, acceptance and energy thresholds. Every number is a parameter (the
defaults and their sources are in ``config/config.yaml``); nothing loops over particles in Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import awkward as ak
import numpy as np

from taufm.arrays import expand_ranges
from taufm.config import reject_unknown_keys
from taufm.errors import TaufmError

PION_MASS = 0.13957039
ELECTRON_MASS = 0.000510999
MUON_MASS = 0.1056584
NEUTRINOS = (12, 14, 16)

# Candidate types written to files: the PDG code a particle-flow algorithm assigns.
TYPE_ELECTRON = 11
TYPE_MUON = 13
TYPE_PHOTON = 22
TYPE_CHARGED_HADRON = 211
TYPE_NEUTRAL_HADRON = 2112

TRACK_STATE_AT_IP = 1  # edm4hep::TrackState::AtIP
_GEV_PER_TESLA_METRE = 0.299792458  # pT [GeV] = 0.2998 * B [T] * R [m] for unit charge


@dataclass(frozen=True)
class DetectorParameters:
    """Response parameters; the defaults are a CLIC-like detector (sources in ``config/config.yaml``)."""

    tracker_min_theta_deg: float = 8.0
    calorimeter_min_theta_deg: float = 8.0
    tracking_min_pt: float = 0.1
    tracking_efficiency: float = 0.99
    tracking_efficiency_below_1gev: float = 0.95
    sigma_pt_over_pt2: float = 2.0e-5
    sigma_pt_multiple_scattering: float = 1.0e-3
    sigma_d0_mm: float = 0.005
    sigma_d0_multiple_scattering_mm_gev: float = 0.015
    sigma_z0_mm: float = 0.005
    sigma_z0_multiple_scattering_mm_gev: float = 0.015
    magnetic_field_tesla: float = 4.0
    ecal_stochastic: float = 0.15
    ecal_constant: float = 0.01
    hcal_stochastic: float = 0.50
    hcal_constant: float = 0.05
    photon_min_energy: float = 0.2
    neutral_hadron_min_energy: float = 0.5
    photon_merging_angle_rad: float = 0.01
    electron_id_efficiency: float = 0.95
    electron_id_min_p: float = 2.0
    muon_id_efficiency: float = 0.98
    muon_id_min_p: float = 3.0
    charged_hadron_as_neutral_probability: float = 0.02
    neutral_fragment_probability: float = 0.4
    neutral_fragment_max_fraction: float = 0.4
    neutral_fragment_angle_rad: float = 0.02
    neutral_hadron_as_photon_probability: float = 0.10
    photon_as_neutral_hadron_probability: float = 0.02

    @classmethod
    def from_mapping(cls, values: dict | None, where: str = "detector", base: DetectorParameters | None = None) -> DetectorParameters:
        """Build from a config mapping over ``base`` (default: the CLIC-like defaults).

        An unknown key or a bad value is an error naming it.
        """
        values = dict(values or {})
        reject_unknown_keys(values, (f.name for f in dataclasses.fields(cls)), where)
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise TaufmError(f"{where}.{key} must be a non-negative number, got {value!r}")
            if key.endswith(("probability", "efficiency", "below_1gev", "fraction")) and value > 1:
                raise TaufmError(f"{where}.{key} is a probability and must be in [0, 1], got {value!r}")
        return dataclasses.replace(base or cls(), **{k: float(v) for k, v in values.items()})


@dataclass(frozen=True)
class RecoEvents:
    """Detector output for a batch of events, jagged per event.

    ``candidates``: type, charge, mass, energy, px, py, pz, track (index into ``tracks`` or -1).
    ``tracks``: D0, Z0, phi, omega, tanLambda and their variances at the interaction point.
    ``links``: reco (candidate index), mc (generator particle index), weight (energy fraction).
    """

    candidates: ak.Array
    tracks: ak.Array
    links: ak.Array


def _gaussian_smear(rng: np.random.Generator, value: np.ndarray, relative_sigma: np.ndarray) -> np.ndarray:
    return value * (1.0 + relative_sigma * rng.standard_normal(len(value)))


def _calorimeter_sigma(energy: np.ndarray, stochastic: float, constant: float) -> np.ndarray:
    return np.hypot(stochastic / np.sqrt(np.maximum(energy, 1e-9)), constant)


def _group_by_event(n_events: int, event: np.ndarray, columns: dict[str, np.ndarray]) -> ak.Array:
    order = np.argsort(event, kind="stable")
    counts = np.bincount(event, minlength=n_events)
    return ak.unflatten(ak.zip({k: v[order] for k, v in columns.items()}, depth_limit=1), counts)


class _Pieces:
    """Accumulates candidates (with their truth links) from the sub-detectors in a fixed order."""

    def __init__(self) -> None:
        self.cand: list[dict[str, np.ndarray]] = []
        self.links: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, event, ctype, charge, mass, energy, direction, *, track=None, link_offsets=None, link_mc=None, link_weight=None, mc=None):
        n = len(event)
        px, py, pz = direction
        self.cand.append(
            {
                "event": event.astype(np.int64),
                "type": ctype.astype(np.int32),
                "charge": charge.astype(np.float32),
                "mass": mass.astype(np.float32),
                "energy": energy.astype(np.float32),
                "px": px.astype(np.float32),
                "py": py.astype(np.float32),
                "pz": pz.astype(np.float32),
                "track": (track if track is not None else np.full(n, -1)).astype(np.int64),
                "serial": np.arange(n),
                "piece": np.full(n, len(self.cand)),
            }
        )
        if mc is not None:  # one generator particle per candidate, weight 1
            link_offsets = np.arange(n + 1)
            link_mc, link_weight = mc, np.ones(n)
        self.links.append((event, link_offsets, link_mc, link_weight))


def simulate_response(particles: ak.Array, params: DetectorParameters, rng: np.random.Generator) -> RecoEvents:
    """Reconstructed candidates, tracks and truth links for generator ``particles``.

    ``particles`` is a :class:`taufm.sim.pythia.GenRecord` particle array (or any jagged array
    with its fields); only final-state (generatorStatus 1) particles are seen.
    """
    import fastjet

    n_events = len(particles)
    counts = ak.to_numpy(ak.num(particles))
    flat = ak.flatten(particles)
    event_all = np.repeat(np.arange(n_events), counts)
    local_all = np.arange(len(event_all)) - np.repeat(np.cumsum(counts) - counts, counts)
    pdg_all = ak.to_numpy(flat.PDG)
    visible = (ak.to_numpy(flat.generatorStatus) == 1) & ~np.isin(np.abs(pdg_all), NEUTRINOS) & (ak.to_numpy(flat.energy) > 0)

    sel = np.flatnonzero(visible)
    event, mc = event_all[sel], local_all[sel]
    pdg = pdg_all[sel]
    charge = ak.to_numpy(flat.charge)[sel].astype(np.float64)
    px, py, pz, energy = (ak.to_numpy(flat[k])[sel].astype(np.float64) for k in ("px", "py", "pz", "energy"))
    vx, vy, vz = (ak.to_numpy(flat[k])[sel].astype(np.float64) for k in ("vx", "vy", "vz"))
    if not (np.isfinite(px).all() and np.isfinite(py).all() and np.isfinite(pz).all() and np.isfinite(energy).all()):
        raise TaufmError("generator particles with non-finite momentum or energy reached the detector simulation")

    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    sin_theta = np.where(p > 0, pt / np.maximum(p, 1e-12), 0.0)
    abs_cos = np.where(p > 0, np.abs(pz) / np.maximum(p, 1e-12), 1.0)
    in_tracker = abs_cos < np.cos(np.radians(params.tracker_min_theta_deg))
    in_calo = abs_cos < np.cos(np.radians(params.calorimeter_min_theta_deg))
    apdg = np.abs(pdg)
    is_charged = charge != 0
    is_electron = apdg == 11
    is_muon = apdg == 13
    is_photon = apdg == 22
    is_neutral_hadron = ~is_charged & ~is_photon

    # --- Tracking -------------------------------------------------------------------------
    efficiency = np.where(pt >= 1.0, params.tracking_efficiency, params.tracking_efficiency_below_1gev)
    tracked = is_charged & in_tracker & (pt >= params.tracking_min_pt) & (rng.random(len(pt)) < efficiency)
    lost_association = tracked & ~is_electron & ~is_muon & (rng.random(len(pt)) < params.charged_hadron_as_neutral_probability)
    tracked &= ~lost_association

    t = np.flatnonzero(tracked)
    sin_t = sin_theta[t]
    ms = 1.0 / (p[t] * sin_t**1.5)
    # sigma(pT)/pT^2 = a (+) b / (p sin^1.5 theta), i.e. sigma(pT)/pT = a pT (+) b / sqrt(sin theta).
    sigma_pt = pt[t] ** 2 * np.hypot(params.sigma_pt_over_pt2, params.sigma_pt_multiple_scattering * ms)
    pt_reco = np.abs(pt[t] + sigma_pt * rng.standard_normal(len(t)))
    scale = pt_reco / pt[t]
    tpx, tpy, tpz = px[t] * scale, py[t] * scale, pz[t] * scale
    p_reco = p[t] * scale
    electron_id = is_electron[t] & (p_reco >= params.electron_id_min_p) & (rng.random(len(t)) < params.electron_id_efficiency)
    muon_id = is_muon[t] & (p_reco >= params.muon_id_min_p) & (rng.random(len(t)) < params.muon_id_efficiency)
    sign = np.sign(charge[t]).astype(np.int32)
    ctype = np.where(electron_id, -TYPE_ELECTRON * sign, np.where(muon_id, -TYPE_MUON * sign, TYPE_CHARGED_HADRON * sign))
    mass = np.where(electron_id, ELECTRON_MASS, np.where(muon_id, MUON_MASS, PION_MASS))
    tenergy = np.sqrt(p_reco**2 + mass**2)

    # Impact parameters: straight-line extrapolation of the true production point to the point
    # of closest approach to the z axis (curvature over a decay length is negligible), LCIO signs.
    phi = np.arctan2(py[t], px[t])
    d0_true = -vx[t] * np.sin(phi) + vy[t] * np.cos(phi)
    along = vx[t] * np.cos(phi) + vy[t] * np.sin(phi)
    tan_lambda = pz[t] / pt[t]
    z0_true = vz[t] - along * tan_lambda
    sigma_d0 = np.hypot(params.sigma_d0_mm, params.sigma_d0_multiple_scattering_mm_gev * ms)
    sigma_z0 = np.hypot(params.sigma_z0_mm, params.sigma_z0_multiple_scattering_mm_gev * ms)
    d0 = d0_true + sigma_d0 * rng.standard_normal(len(t))
    z0 = z0_true + sigma_z0 * rng.standard_normal(len(t))
    omega = charge[t] * _GEV_PER_TESLA_METRE * params.magnetic_field_tesla / (pt_reco * 1000.0)  # 1/mm
    sigma_omega = np.abs(omega) * sigma_pt / pt[t]
    track_event = event[t]
    track_local = np.arange(len(t)) - np.searchsorted(track_event, track_event)  # tracks sorted by event
    tracks = _group_by_event(
        n_events,
        track_event,
        {
            "location": np.full(len(t), TRACK_STATE_AT_IP, dtype=np.int32),
            "D0": d0.astype(np.float32),
            "Z0": z0.astype(np.float32),
            "phi": phi.astype(np.float32),
            "omega": omega.astype(np.float32),
            "tanLambda": tan_lambda.astype(np.float32),
            "var_D0": (sigma_d0**2).astype(np.float32),
            "var_Z0": (sigma_z0**2).astype(np.float32),
            "var_phi": ((1e-3 * ms) ** 2 + 1e-10).astype(np.float32),
            "var_omega": (sigma_omega**2).astype(np.float32),
            "var_tanLambda": ((1e-3 * ms) ** 2 + 1e-10).astype(np.float32),
        },
    )
    pieces = _Pieces()
    pieces.add(track_event, ctype, charge[t], mass, tenergy, (tpx, tpy, tpz), track=track_local, mc=mc[t])

    # --- Calorimeters -----------------------------------------------------------------------
    # Electromagnetic showers: photons and electrons without a track. Nearby photons merge
    # into one cluster (FastJet e+e- Cambridge/Aachen with R = merging angle).
    em = np.flatnonzero(in_calo & (is_photon | (is_electron & ~tracked)))
    if len(em):
        em_counts = np.bincount(event[em], minlength=n_events)
        em_events = ak.unflatten(ak.zip({"px": px[em], "py": py[em], "pz": pz[em], "E": energy[em]}), em_counts)
        jet_def = fastjet.JetDefinition(fastjet.ee_genkt_algorithm, params.photon_merging_angle_rad, 0.0)
        sequence = fastjet.ClusterSequence(em_events, jet_def)
        clusters = sequence.inclusive_jets()
        constituents = sequence.constituent_index()
        c_counts = ak.to_numpy(ak.num(clusters))
        cflat = ak.flatten(clusters)
        c_event = np.repeat(np.arange(n_events), c_counts)
        c_true_e = ak.to_numpy(cflat.E)
        c_dir = np.stack([ak.to_numpy(cflat[k]) for k in ("px", "py", "pz")])
        # Truth links: every photon in a cluster, weighted by its share of the cluster energy.
        em_start = np.cumsum(em_counts) - em_counts
        member = ak.flatten(constituents, axis=2)  # per event: constituent indices of all clusters
        n_members = ak.to_numpy(ak.flatten(ak.num(constituents, axis=2)))
        member_global = ak.to_numpy(ak.flatten(member + em_start))
        member_mc = mc[em][member_global]
        member_weight = energy[em][member_global] / np.repeat(c_true_e, n_members)
        link_offsets = np.concatenate([[0], np.cumsum(n_members)])

        e_reco = _gaussian_smear(rng, c_true_e, _calorimeter_sigma(c_true_e, params.ecal_stochastic, params.ecal_constant))
        as_hadron = rng.random(len(c_true_e)) < params.photon_as_neutral_hadron_probability
        keep = e_reco >= np.where(as_hadron, params.neutral_hadron_min_energy, params.photon_min_energy)
        unit = c_dir / np.linalg.norm(c_dir, axis=0)
        ctype = np.where(as_hadron, TYPE_NEUTRAL_HADRON, TYPE_PHOTON)
        k = np.flatnonzero(keep)
        _, kept_links = expand_ranges(link_offsets[k], link_offsets[k + 1])
        kept_offsets = np.concatenate([[0], np.cumsum(n_members[k])])
        pieces.add(
            c_event[k],
            ctype[k],
            np.zeros(len(k)),
            np.zeros(len(k)),
            e_reco[k],
            tuple(unit[:, k] * e_reco[k]),
            link_offsets=kept_offsets,
            link_mc=member_mc[kept_links],
            link_weight=member_weight[kept_links],
        )

    # Shower fragments: part of a tracked charged hadron's calorimeter shower is not associated
    # with its track and becomes an extra neutral hadron nearby (energy double counted), the
    # dominant particle-flow confusion in jets.
    hadron_tracks = np.flatnonzero(~electron_id & ~muon_id & ~is_electron[t] & ~is_muon[t])
    fragment = hadron_tracks[rng.random(len(hadron_tracks)) < params.neutral_fragment_probability]
    f_energy = energy[t][fragment] * rng.uniform(0.0, params.neutral_fragment_max_fraction, len(fragment))
    f_energy = _gaussian_smear(rng, f_energy, _calorimeter_sigma(f_energy, params.hcal_stochastic, params.hcal_constant))
    f_theta = np.arccos(np.clip(pz[t][fragment] / p[t][fragment], -1, 1)) + params.neutral_fragment_angle_rad * rng.standard_normal(len(fragment))
    f_phi = phi[fragment] + params.neutral_fragment_angle_rad * rng.standard_normal(len(fragment))
    keep = f_energy >= params.neutral_hadron_min_energy
    fragment, f_energy, f_theta, f_phi = fragment[keep], f_energy[keep], f_theta[keep], f_phi[keep]
    pieces.add(
        track_event[fragment],
        np.full(len(fragment), TYPE_NEUTRAL_HADRON),
        np.zeros(len(fragment)),
        np.zeros(len(fragment)),
        f_energy,
        (f_energy * np.sin(f_theta) * np.cos(f_phi), f_energy * np.sin(f_theta) * np.sin(f_phi), f_energy * np.cos(f_theta)),
        mc=mc[t][fragment],
    )

    # Hadronic showers: neutral hadrons and charged particles without a (associated) track.
    had = np.flatnonzero(in_calo & ((is_neutral_hadron) | (is_charged & ~tracked & ~is_electron & ~is_muon)))
    e_reco = _gaussian_smear(rng, energy[had], _calorimeter_sigma(energy[had], params.hcal_stochastic, params.hcal_constant))
    as_photon = rng.random(len(had)) < params.neutral_hadron_as_photon_probability
    keep = e_reco >= np.where(as_photon, params.photon_min_energy, params.neutral_hadron_min_energy)
    h = had[keep]
    unit = np.stack([px[h], py[h], pz[h]]) / p[h]
    pieces.add(
        event[h],
        np.where(as_photon[keep], TYPE_PHOTON, TYPE_NEUTRAL_HADRON),
        np.zeros(len(h)),
        np.zeros(len(h)),
        e_reco[keep],
        tuple(unit * e_reco[keep]),
        mc=mc[h],
    )
    return _assemble(n_events, pieces, tracks)


def _assemble(n_events: int, pieces: _Pieces, tracks: ak.Array) -> RecoEvents:
    """Order candidates per event (tracks, then ECAL, then HCAL) and renumber their truth links."""
    cols = {k: np.concatenate([c[k] for c in pieces.cand]) for k in pieces.cand[0]}
    order = np.lexsort((cols["serial"], cols["piece"], cols["event"]))
    event = cols["event"][order]
    counts = np.bincount(event, minlength=n_events)
    starts = np.cumsum(counts) - counts
    local = np.arange(len(event)) - starts[event]
    candidates = ak.unflatten(
        ak.zip({k: cols[k][order] for k in ("type", "charge", "mass", "energy", "px", "py", "pz", "track")}, depth_limit=1), counts
    )

    # Links: expand each piece's per-candidate link ranges, then map candidate -> local index.
    position = np.empty(len(order), dtype=np.int64)
    position[order] = local
    link_reco, link_mc, link_weight, link_event = [], [], [], []
    base = 0
    for (ev, offsets, mcs, weights), cand in zip(pieces.links, pieces.cand):
        n_links = np.diff(offsets)
        owner = np.repeat(np.arange(len(cand["event"])), n_links)
        link_reco.append(position[base + owner])
        link_event.append(ev[owner])
        link_mc.append(mcs)
        link_weight.append(weights)
        base += len(cand["event"])
    link_event = np.concatenate(link_event).astype(np.int64)
    links = _group_by_event(
        n_events,
        link_event,
        {
            "reco": np.concatenate(link_reco).astype(np.int32),
            "mc": np.concatenate(link_mc).astype(np.int32),
            "weight": np.concatenate(link_weight).astype(np.float32),
        },
    )
    return RecoEvents(candidates=candidates, tracks=tracks, links=links)
