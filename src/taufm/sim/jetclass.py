"""JetClass-like pretraining jets: pp collisions at 13 TeV, Pythia 8, a Delphes-CMS-like response.

Two of the ten JetClass processes are generated, the two the paper pretrains on:

- ``ZJetsToNuNu``: Z(->nu nu) + jet; every jet passing the cuts is a q/g jet (``label_QCD``).
- ``TTBar``: top pairs with both W -> q q'; a jet is a ``label_Tbqq`` jet only if the quark from
  the top decay and both quarks of the W of the same top lie within Delta R < R of the jet axis
  (last copies in the generator record, i.e. after the parton shower); other jets are not written.

Candidates from :func:`taufm.sim.detector.simulate_response` are clustered with anti-kt (R = 0.8),
jets with 500 < pT < 1000 GeV and |eta| < 2 are kept, and each jet is one entry of tree ``tree``
in the layout of the JetClass files (H. Qu et al., arXiv:2202.03772). Constituents are ordered by
decreasing pT.

Branch types follow the public JetClass example file (``tree.show()`` in the ParT repository's
``notebooks/JetClass101.ipynb``): ``part_*`` kinematics, charge and impact parameters are
``float32``; the ``part_is*`` flags are ``int32``; ``jet_*`` (``jet_nparticles`` included) are
``float32``. That example file mixes label types (float32, bool or int32 from label to label);
we write every ``label_*`` as ``bool``. uproot writes jagged branches with a counter, so the tree
also holds one counter branch ``npart`` shared by all ``part_*`` branches (the real files store
``std::vector<float>`` without a counter). Units: GeV, mm (impact parameters). Neutral candidates
have ``part_d0val = part_d0err = part_dzval = part_dzerr = 0``, as in JetClass (Delphes gives
towers no track parameters).

High-level jet variables, as Delphes computes them for its fat jets: ``jet_sdmass`` is the
soft-drop mass (beta = 0, z_cut = 0.1, R0 = R, Cambridge/Aachen reclustering); ``jet_tau1..4``
are N-subjettiness values with beta = 1, exclusive-kt axes and the normalised measure
(tau_N = sum_i pT_i min_k dR_ik / sum_i pT_i R0), all computed by FastJet over whole batches of
jets at once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from taufm.progress import Progress
from taufm.arrays import expand_ranges
from taufm.errors import TaufmError
from taufm.io import atomic_output, deterministic_uuid_function, reproducible_root_timestamps
from taufm.sim.detector import (
    TYPE_CHARGED_HADRON,
    TYPE_ELECTRON,
    TYPE_MUON,
    TYPE_NEUTRAL_HADRON,
    TYPE_PHOTON,
    DetectorParameters,
    RecoEvents,
    simulate_response,
)
from taufm.sim.pythia import GenRecord, generate_record, make_pythia
from taufm.sim.seeding import numpy_rng, pythia_seed

log = logging.getLogger(__name__)

TREE_NAME = "tree"
PARTICLE_COUNTER = "npart"
# The ten one-hot labels, in JetClass order.
LABELS = (
    "label_QCD",
    "label_Hbb",
    "label_Hcc",
    "label_Hgg",
    "label_H4q",
    "label_Hqql",
    "label_Zqq",
    "label_Wqq",
    "label_Tbqq",
    "label_Tbl",
)
PARTICLE_FLOAT_FIELDS = (
    "px",
    "py",
    "pz",
    "energy",
    "deta",
    "dphi",
    "d0val",
    "d0err",
    "dzval",
    "dzerr",
    "charge",
)
PARTICLE_FLAG_FIELDS = ("isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")
JET_FIELDS = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_energy",
    "jet_nparticles",
    "jet_sdmass",
    "jet_tau1",
    "jet_tau2",
    "jet_tau3",
    "jet_tau4",
)
PARTICLE_DTYPES = {f"part_{f}": np.dtype(np.float32) for f in PARTICLE_FLOAT_FIELDS} | {
    f"part_{f}": np.dtype(np.int32) for f in PARTICLE_FLAG_FIELDS
}
BRANCH_DTYPES: dict[str, np.dtype] = (
    PARTICLE_DTYPES | {k: np.dtype(np.bool_) for k in LABELS} | {k: np.dtype(np.float32) for k in JET_FIELDS}
)

_N_SUBJETTINESS = (1, 2, 3, 4)
# Reclustering radius for soft drop and the exclusive-kt axes: larger than any distance inside a
# jet, so that no constituent is merged with the beam (FastJet contrib uses its largest R there).
_RECLUSTER_R = 10.0
_FLUSH_JETS = 10_000  # jets buffered before a write: few, large baskets
# Settings that select (almost) nothing are an error after this many events in a row without a
# selected jet, instead of a loop that never ends.
_MAX_EVENTS_WITHOUT_JET = 5_000


@dataclass(frozen=True)
class JetClassProcess:
    """One JetClass process: its label, Pythia settings and default pTHatMin.

    ``pthat_min_over_jet_pt_min`` sets the default ``PhaseSpace:pTHatMin`` relative to the jet
    pT cut: 0.8, i.e. 400 GeV for 500 GeV jets. Measured against samples generated with
    pTHatMin = 250 GeV (4000 events each, generator-level jets in the JetClass window): for
    ZJetsToNuNu a 400 GeV cut keeps 95% of the jets (9% fewer at 500-550 GeV, 5% at 550-600 GeV,
    none lost above 600 GeV) and raises the jets per event from 0.05 to 0.37; for TTBar it keeps
    91% of the jets around a top (11% fewer at 500-550 GeV, 7-8% above) and gives 0.42 Tbqq jets
    per event against about 0.1. 450 GeV would lose 19% (Z+jet) and 22% (top) at 500-550 GeV.
    """

    label: str
    settings: tuple[str, ...]
    pthat_min_over_jet_pt_min: float
    requires_top_match: bool


# Pythia 8 manual, "Electroweak Processes" (WeakBosonAndParton), "Top Processes" and "Particle
# Decays": Z only (WeakZ0:gmZmode = 2, no gamma*), decaying to neutrinos; W from top hadronic.
JETCLASS_PROCESSES: dict[str, JetClassProcess] = {
    "ZJetsToNuNu": JetClassProcess(
        label="label_QCD",
        settings=(
            "WeakBosonAndParton:qqbar2gmZg = on",
            "WeakBosonAndParton:qg2gmZq = on",
            "WeakZ0:gmZmode = 2",
            "23:onMode = off",
            "23:onIfAny = 12 14 16",
        ),
        pthat_min_over_jet_pt_min=0.8,
        requires_top_match=False,
    ),
    "TTBar": JetClassProcess(
        label="label_Tbqq",
        settings=(
            "Top:gg2ttbar = on",
            "Top:qqbar2ttbar = on",
            "24:onMode = off",
            "24:onIfAny = 1 2 3 4 5",
        ),
        pthat_min_over_jet_pt_min=0.8,
        requires_top_match=True,
    ),
}


def _theta_deg_at_eta(eta: float) -> float:
    """Polar angle (degrees) of pseudorapidity ``eta``: detector.py takes acceptances as angles."""
    return math.degrees(2.0 * math.atan(math.exp(-eta)))


# A Delphes-CMS-like response. Numbers from Delphes' cards/delphes_card_CMS.tcl (current master)
# unless stated; where the card's formula has a shape detector.py cannot express, the value for
# the barrel, where most jet constituents are, is taken and the difference stated.
DELPHES_CMS_LIKE = DetectorParameters(
    # Tracking efficiencies are defined for |eta| <= 2.5 only; calorimeter towers used for
    # particle flow here up to |eta| = 3 (the card's HF towers, 3 < |eta| < 5, are left out:
    # jets with |eta| < 2 and R = 0.8 do not reach them).
    tracker_min_theta_deg=_theta_deg_at_eta(2.5),
    calorimeter_min_theta_deg=_theta_deg_at_eta(3.0),
    # ChargedHadronTrackingEfficiency: zero below pT = 0.1 GeV; |eta| <= 1.5: 0.70 for
    # 0.1 < pT <= 1 GeV, 0.95 above (endcap 0.60 / 0.85 not expressible).
    tracking_min_pt=0.1,
    tracking_efficiency=0.95,
    tracking_efficiency_below_1gev=0.70,
    # ChargedHadronMomentumSmearing (based on arXiv:1405.6569): sigma(pT)/pT = c (+) a*pT with
    # (c, a) = (1%, 1.5e-4), (1.5%, 2.5e-4), (2.5%, 5.5e-4) /GeV for |eta| < 0.5, < 1.5, < 2.5.
    # The 0.5 < |eta| < 1.5 row: a = 2.5e-4 /GeV; c goes into the multiple-scattering term.
    sigma_pt_over_pt2=2.5e-4,
    sigma_pt_multiple_scattering=0.015,
    # The card has no impact-parameter smearing (JetClass added a CMS-like one). CMS tracker
    # performance (arXiv:1405.6569, impact-parameter resolution vs pT): d0 about 10 um at high
    # pT and about 100 um at 1 GeV; dz about 30 um at high pT and about 150 um at 1 GeV.
    sigma_d0_mm=0.010,
    sigma_d0_multiple_scattering_mm_gev=0.100,
    sigma_z0_mm=0.030,
    sigma_z0_multiple_scattering_mm_gev=0.150,
    # ParticlePropagator: Bz = 3.8 T.
    magnetic_field_tesla=3.8,
    # ECal ResolutionFormula, |eta| <= 1.5 (arXiv:1306.2016, 1502.02701):
    # sigma(E) = sqrt((0.008 E)^2 + 0.11^2 E + 0.40^2) -> 11%/sqrt(E) (+) 0.8% (the 0.40 GeV noise
    # term and the (1 + 0.64 eta^2) eta dependence are not expressible).
    ecal_stochastic=0.11,
    ecal_constant=0.008,
    # HCal ResolutionFormula, |eta| <= 3: sigma(E) = sqrt((0.050 E)^2 + 1.50^2 E)
    # -> 150%/sqrt(E) (+) 5%.
    hcal_stochastic=1.50,
    hcal_constant=0.05,
    # ECal / HCal EnergyMin: 0.5 GeV and 1.0 GeV per tower.
    photon_min_energy=0.5,
    neutral_hadron_min_energy=1.0,
    # ECal towers of 0.0174 x 0.0174 (1 degree) in (eta, phi): photons closer than about one
    # tower share a cluster.
    photon_merging_angle_rad=0.0174,
    # Delphes' particle-flow tracks keep the generated particle's identity: every tracked
    # electron or muon is an electron or muon candidate (the card's lepton efficiencies apply to
    # its isolated-lepton collections, not to the particle-flow candidates JetClass is built from).
    electron_id_efficiency=1.0,
    electron_id_min_p=0.0,
    muon_id_efficiency=1.0,
    muon_id_min_p=0.0,
    # Delphes assigns ECAL deposits to photons and HCAL deposits to neutral hadrons and has no
    # further confusion; an untracked charged hadron (tracking inefficiency) becomes a neutral
    # hadron, which simulate_response already does.
    charged_hadron_as_neutral_probability=0.0,
    neutral_hadron_as_photon_probability=0.0,
    photon_as_neutral_hadron_probability=0.0,
    neutral_fragment_probability=0.0,
)


def pp_settings(sqrt_s: float, multiparton_interactions: bool, pthat_min: float) -> list[str]:
    """pp beams with ISR, FSR and (optionally) MPI; long-lived hadrons left to the detector.

    Particles with c*tau > 10 mm (K0S, Lambda, charged pions and kaons, ...) stay undecayed, as in
    the generator input to Delphes' CMS card (which gives K0S and Lambda calorimeter fractions).
    """
    return [
        "Beams:idA = 2212",
        "Beams:idB = 2212",
        f"Beams:eCM = {sqrt_s}",
        f"PhaseSpace:pTHatMin = {pthat_min}",
        "PartonLevel:ISR = on",
        "PartonLevel:FSR = on",
        f"PartonLevel:MPI = {'on' if multiparton_interactions else 'off'}",
        "ParticleDecays:limitTau0 = on",
        "ParticleDecays:tau0Max = 10.0",
    ]


def _check_request(
    process: str,
    shard: int,
    n_jets: int,
    jet_radius: float,
    jet_pt_min: float,
    jet_pt_max: float,
    jet_abs_eta_max: float,
    batch_size: int,
    sqrt_s: float,
) -> None:
    if process not in JETCLASS_PROCESSES:
        raise TaufmError(f"unknown JetClass process {process!r}; known processes: {', '.join(JETCLASS_PROCESSES)}")
    for name, value in (("number of jets", n_jets), ("batch size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise TaufmError(f"the {name} must be a positive integer, got {value!r}")
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or shard < 0:
        raise TaufmError(f"the shard index must be a non-negative integer, got {shard!r}")
    for name, value in (("jet radius", jet_radius), ("sqrt(s)", sqrt_s), ("|eta| cut", jet_abs_eta_max)):
        if not (np.isfinite(value) and value > 0):
            raise TaufmError(f"the {name} must be a positive number, got {value!r}")
    if not (0 <= jet_pt_min < jet_pt_max):
        raise TaufmError(f"the jet pT window must satisfy 0 <= min < max, got ({jet_pt_min!r}, {jet_pt_max!r})")


# --- Generator truth: the partons of hadronic top decays ----------------------------------------


@dataclass(frozen=True)
class TopPartons:
    """Per complete top decay: its event and the (eta, phi) of its three quarks (b, q, q')."""

    event: np.ndarray  # (n_tops,)
    eta: np.ndarray  # (n_tops, 3)
    phi: np.ndarray  # (n_tops, 3)


def _flat_relations(record: GenRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global (parent, child) index pairs of the daughter lists, and each event's first index."""
    counts = ak.to_numpy(ak.num(record.particles))
    start = np.cumsum(counts) - counts
    per_particle = ak.to_numpy(ak.flatten(ak.num(record.daughters, axis=2)))
    parent = np.repeat(np.arange(len(per_particle)), per_particle)
    event_of = np.repeat(np.arange(len(counts)), counts)
    child = ak.to_numpy(ak.flatten(record.daughters, axis=None)).astype(np.int64) + start[event_of[parent]]
    return parent, child, start


def _last_copies(successor: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Follow ``successor`` (the same particle's next copy, or -1) from ``index`` to its end."""
    index = index.copy()
    for _ in range(len(successor) + 1):
        nxt = successor[index]
        moving = nxt >= 0
        if not moving.any():
            return index
        index[moving] = nxt[moving]
    raise TaufmError("cycle in the generator record's daughter relations")


def top_decay_partons(record: GenRecord) -> TopPartons:
    """The three quarks of every hadronically decaying top, from the daughter relations.

    A top's last copy (no daughter with its PDG id) decays to W and a quark; the W's last copy to
    two quarks. Each quark is followed to its last copy, the parton that enters hadronisation.
    Tops whose decay is not t -> W q, W -> q q' (none with the TTBar settings) are left out.
    """
    flat = ak.flatten(record.particles)
    pdg = ak.to_numpy(flat.PDG).astype(np.int64)
    parent, child, start = _flat_relations(record)
    event_of = np.repeat(np.arange(len(start)), ak.to_numpy(ak.num(record.particles)))

    same = pdg[parent] == pdg[child]
    successor = np.full(len(pdg), -1, dtype=np.int64)
    np.maximum.at(successor, parent[same], child[same])  # a unique, order-independent choice
    is_quark = (np.abs(pdg) >= 1) & (np.abs(pdg) <= 5)

    tops = np.flatnonzero((np.abs(pdg) == 6) & (successor < 0))
    top_number = np.full(len(pdg), -1, dtype=np.int64)
    top_number[tops] = np.arange(len(tops))

    from_top = top_number[parent] >= 0
    w_of_top = np.full(len(tops), -1, dtype=np.int64)
    q_of_top = np.full(len(tops), -1, dtype=np.int64)
    is_w = from_top & (np.abs(pdg[child]) == 24)
    w_of_top[top_number[parent[is_w]]] = child[is_w]
    is_q = from_top & is_quark[child]
    q_of_top[top_number[parent[is_q]]] = child[is_q]

    has_w = w_of_top >= 0
    w_last = np.full(len(tops), -1, dtype=np.int64)
    w_last[has_w] = _last_copies(successor, w_of_top[has_w])
    top_of_w = np.full(len(pdg), -1, dtype=np.int64)
    top_of_w[w_last[has_w]] = np.flatnonzero(has_w)
    from_w = (top_of_w[parent] >= 0) & is_quark[child]
    w_owner, w_quark = top_of_w[parent[from_w]], child[from_w]
    order = np.lexsort((w_quark, w_owner))
    w_owner, w_quark = w_owner[order], w_quark[order]
    n_w_quarks = np.bincount(w_owner, minlength=len(tops))

    complete = (q_of_top >= 0) & (n_w_quarks == 2)
    first_w_quark = np.cumsum(n_w_quarks) - n_w_quarks
    quarks = np.stack(
        [
            q_of_top[complete],
            w_quark[first_w_quark[complete]],
            w_quark[first_w_quark[complete] + 1],
        ],
        axis=1,
    )
    quarks = _last_copies(successor, quarks.reshape(-1)).reshape(-1, 3)
    px, py, pz = (ak.to_numpy(flat[k]).astype(np.float64)[quarks] for k in ("px", "py", "pz"))
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    return TopPartons(event=event_of[tops[complete]], eta=eta, phi=np.arctan2(py, px))


def _delta_phi(a, b):
    return (a - b + np.pi) % (2.0 * np.pi) - np.pi


def jets_matched_to_tops(
    jet_event: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray, tops: TopPartons, radius: float
) -> np.ndarray:
    """True for each jet that holds all three quarks of one top within Delta R < ``radius``."""
    matched = np.zeros(len(jet_event), dtype=bool)
    if len(tops.event) == 0 or len(jet_event) == 0:
        return matched
    n_events = int(max(jet_event.max(), tops.event.max())) + 1
    top_counts = np.bincount(tops.event, minlength=n_events)  # tops are in event order
    top_start = np.cumsum(top_counts) - top_counts
    jet, top = expand_ranges(top_start[jet_event], top_start[jet_event] + top_counts[jet_event])
    deta = tops.eta[top] - jet_eta[jet][:, None]
    dphi = _delta_phi(tops.phi[top], jet_phi[jet][:, None])
    inside = np.all(deta**2 + dphi**2 < radius**2, axis=1)
    matched[jet[inside]] = True
    return matched


# --- Jets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jets:
    """Selected jets of a batch, flat: event, four-momentum and constituent candidate indices.

    ``constituents`` is jagged per jet, global indices into the flattened candidates of the batch,
    ordered by decreasing candidate pT.
    """

    event: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    energy: np.ndarray
    constituents: ak.Array

    @property
    def pt(self) -> np.ndarray:
        return np.hypot(self.px, self.py)

    @property
    def eta(self) -> np.ndarray:
        return np.arcsinh(self.pz / np.maximum(self.pt, 1e-12))

    @property
    def phi(self) -> np.ndarray:
        return np.arctan2(self.py, self.px)

    def __len__(self) -> int:
        return len(self.event)


def cluster_jets(candidates: ak.Array, radius: float, pt_min: float, pt_max: float, abs_eta_max: float) -> Jets:
    """Anti-kt jets of each event's candidates within the pT window and |eta| cut.

    Jets are ordered by event, then by decreasing pT.
    """
    import fastjet

    counts = ak.to_numpy(ak.num(candidates))
    start = np.cumsum(counts) - counts
    fields = {"px": "px", "py": "py", "pz": "pz", "E": "energy"}
    events = ak.zip({k: ak.values_astype(candidates[f], np.float64) for k, f in fields.items()})
    sequence = fastjet.ClusterSequence(events, fastjet.JetDefinition(fastjet.antikt_algorithm, radius))
    jets = sequence.inclusive_jets(pt_min)
    index = sequence.constituent_index(pt_min)
    n_jets = ak.to_numpy(ak.num(jets))
    flat = ak.flatten(jets)
    px, py, pz, energy = (ak.to_numpy(flat[k]) for k in ("px", "py", "pz", "E"))
    event = np.repeat(np.arange(len(counts)), n_jets)
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    keep = np.flatnonzero((pt > pt_min) & (pt < pt_max) & (np.abs(eta) < abs_eta_max))
    keep = keep[np.lexsort((-pt[keep], event[keep]))]

    per_jet = ak.flatten(index, axis=1)[keep]
    n_const = ak.to_numpy(ak.num(per_jet))
    local = ak.to_numpy(ak.flatten(per_jet)).astype(np.int64)
    jet_of = np.repeat(np.arange(len(keep)), n_const)
    global_index = local + start[event[keep]][jet_of]
    cand_pt = np.hypot(ak.to_numpy(ak.flatten(candidates.px)), ak.to_numpy(ak.flatten(candidates.py)))
    order = np.lexsort((global_index, -cand_pt[global_index], jet_of))
    return Jets(
        event=event[keep],
        px=px[keep],
        py=py[keep],
        pz=pz[keep],
        energy=energy[keep],
        constituents=ak.unflatten(global_index[order], n_const),
    )


def _recluster(constituents: ak.Array, algorithm):
    import fastjet

    return fastjet.ClusterSequence(constituents, fastjet.JetDefinition(algorithm, _RECLUSTER_R))


def soft_drop_mass(constituents: ak.Array, radius: float, beta: float = 0.0, z_cut: float = 0.1) -> np.ndarray:
    """Soft-drop groomed mass of each jet (``constituents``: jagged px, py, pz, E per jet)."""
    import fastjet

    groomed = _recluster(constituents, fastjet.cambridge_algorithm).exclusive_jets_softdrop_grooming(
        njets=1, beta=beta, symmetry_cut=z_cut, R0=radius
    )
    return ak.to_numpy(groomed.msoftdrop).astype(np.float64)


def n_subjettiness(constituents: ak.Array, radius: float, orders: tuple[int, ...] = _N_SUBJETTINESS) -> np.ndarray:
    """tau_N (beta = 1, exclusive-kt axes, normalised measure with R0 = ``radius``), shape (jets, N)."""
    import fastjet

    taus = _recluster(constituents, fastjet.kt_algorithm).njettiness(
        measure_definition="NormalizedMeasure", axes_definition="KT_Axes", njets=list(orders), beta=1.0, R0=radius
    )
    return ak.to_numpy(taus).astype(np.float64).reshape(len(constituents), len(orders))


# --- JetClass branches -----------------------------------------------------------------------------


def _candidate_track_parameters(reco: RecoEvents) -> tuple[np.ndarray, ...]:
    """Flat per candidate: d0, sigma(d0), dz, sigma(dz) of its track (zeros for neutrals)."""
    cand = reco.candidates
    track = ak.to_numpy(ak.flatten(cand.track)).astype(np.int64)
    n_cand = ak.to_numpy(ak.num(cand))
    n_tracks = ak.to_numpy(ak.num(reco.tracks))
    track_start = np.repeat(np.cumsum(n_tracks) - n_tracks, n_cand)
    has = track >= 0
    where = track_start[has] + track[has]
    out = []
    for field, is_variance in (("D0", False), ("var_D0", True), ("Z0", False), ("var_Z0", True)):
        values = ak.to_numpy(ak.flatten(reco.tracks[field])).astype(np.float64)[where]
        column = np.zeros(len(track))
        column[has] = np.sqrt(values) if is_variance else values
        out.append(column)
    return tuple(out)


def jet_branches(reco: RecoEvents, jets: Jets, radius: float, label: str) -> dict[str, np.ndarray | ak.Array]:
    """JetClass branches for ``jets`` (built from ``reco``), all labelled ``label``."""
    cand = ak.flatten(reco.candidates)
    index = ak.to_numpy(ak.flatten(jets.constituents))
    n_const = ak.to_numpy(ak.num(jets.constituents))
    px, py, pz, energy = (ak.to_numpy(cand[k]).astype(np.float64)[index] for k in ("px", "py", "pz", "energy"))
    ctype = np.abs(ak.to_numpy(cand["type"]))[index]
    charge = ak.to_numpy(cand.charge)[index]
    d0, d0err, dz, dzerr = (column[index] for column in _candidate_track_parameters(reco))

    jet_of = np.repeat(np.arange(len(jets)), n_const)
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    phi = np.arctan2(py, px)
    jet_eta, jet_phi = jets.eta, jets.phi

    particle = {
        "px": px,
        "py": py,
        "pz": pz,
        "energy": energy,
        # As JetClass writes it: signed along the jet's eta direction (its makeNtuples.C).
        "deta": np.where(jet_eta[jet_of] > 0, 1.0, -1.0) * (eta - jet_eta[jet_of]),
        "dphi": _delta_phi(phi, jet_phi[jet_of]),
        "d0val": d0,
        "d0err": d0err,
        "dzval": dz,
        "dzerr": dzerr,
        "charge": charge,
        "isChargedHadron": ctype == TYPE_CHARGED_HADRON,
        "isNeutralHadron": (ctype == TYPE_NEUTRAL_HADRON) | (ctype == 130),
        "isPhoton": ctype == TYPE_PHOTON,
        "isElectron": ctype == TYPE_ELECTRON,
        "isMuon": ctype == TYPE_MUON,
    }
    part = ak.unflatten(ak.zip({k: v.astype(PARTICLE_DTYPES[f"part_{k}"]) for k, v in particle.items()}), n_const)

    constituents = ak.unflatten(ak.zip({"px": px, "py": py, "pz": pz, "E": energy}), n_const)
    taus = n_subjettiness(constituents, radius)
    jet_values = {
        "jet_pt": jets.pt,
        "jet_eta": jet_eta,
        "jet_phi": jet_phi,
        "jet_energy": jets.energy,
        "jet_nparticles": n_const,
        "jet_sdmass": soft_drop_mass(constituents, radius),
        **{f"jet_tau{n}": taus[:, i] for i, n in enumerate(_N_SUBJETTINESS)},
    }
    branches: dict[str, np.ndarray | ak.Array] = {"part": part}
    branches |= {k: np.full(len(jets), k == label, dtype=np.bool_) for k in LABELS}
    branches |= {k: np.asarray(v, dtype=np.float32) for k, v in jet_values.items()}
    return branches


def _concatenate(chunks: list[dict]) -> dict:
    if len(chunks) == 1:
        return chunks[0]
    join = {"part": ak.concatenate}
    return {k: join.get(k, np.concatenate)([c[k] for c in chunks]) for k in chunks[0]}


class _JetClassWriter:
    """Buffers jet branches and writes them to tree ``tree`` in a few large baskets."""

    def __init__(self, file) -> None:
        self._file = file
        self._tree = None
        self._buffer: list[dict] = []
        self._buffered = 0

    def add(self, branches: dict) -> None:
        self._buffer.append(branches)
        self._buffered += len(branches["jet_pt"])
        if self._buffered >= _FLUSH_JETS:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = _concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._tree is None:
            self._tree = self._file.mktree(
                TREE_NAME,
                {k: (v.type if k == "part" else v.dtype) for k, v in data.items()},
                counter_name=lambda counted: f"n{counted}",
                field_name=lambda outer, inner: f"{outer}_{inner}",
            )
        self._tree.extend(data)


def simulate_jetclass_shard(
    process: str,
    shard: int,
    n_jets: int,
    output: str | Path,
    *,
    seed: int = 0,
    sqrt_s: float = 13000.0,
    detector: DetectorParameters | None = None,
    pthat_min: float | None = None,
    multiparton_interactions: bool = True,
    jet_radius: float = 0.8,
    jet_pt_min: float = 500.0,
    jet_pt_max: float = 1000.0,
    jet_abs_eta_max: float = 2.0,
    batch_size: int = 200,
    progress: bool = False,
) -> dict:
    """Generate one shard of ``n_jets`` JetClass-like jets of ``process`` and write it to ``output``.

    Events are generated in batches of ``batch_size`` until ``n_jets`` jets are selected; the
    first ``n_jets`` (in event order, then by decreasing pT) are written, so the file is fully
    determined by (process, shard, seed, settings). Returns a summary for logs and benchmarks.
    """
    _check_request(process, shard, n_jets, jet_radius, jet_pt_min, jet_pt_max, jet_abs_eta_max, batch_size, sqrt_s)
    spec = JETCLASS_PROCESSES[process]
    detector = detector or DELPHES_CMS_LIKE
    if pthat_min is None:
        pthat_min = spec.pthat_min_over_jet_pt_min * jet_pt_min
    if not (np.isfinite(pthat_min) and pthat_min >= 0):
        raise TaufmError(f"pthat_min must be a non-negative number, got {pthat_min!r}")

    output = Path(output)
    summary = {
        "process": process,
        "label": spec.label,
        "shard": shard,
        "seed": seed,
        "pthat_min": float(pthat_min),
        "events": 0,
        "jets_in_window": 0,
        "jets_not_top_matched": 0,
        "jets_selected": 0,
        "jets_written": 0,
    }
    with atomic_output(output) as tmp, reproducible_root_timestamps():
        settings = pp_settings(sqrt_s, multiparton_interactions, pthat_min) + list(spec.settings)
        pythia = make_pythia(settings, pythia_seed(process, shard, seed))
        rng = numpy_rng(process, shard, seed, "detector")
        with uproot.recreate(tmp, uuid_function=deterministic_uuid_function(output.name)) as file, Progress(
            f"simulate {process}[{shard}]", n_jets, unit="jet", bar=True if progress else None
        ) as bar:
            writer = _JetClassWriter(file)
            events_without_jet = 0
            while summary["jets_written"] < n_jets:
                record = generate_record(pythia, batch_size)
                reco = simulate_response(record.particles, detector, rng)
                summary["events"] += batch_size
                jets = cluster_jets(reco.candidates, jet_radius, jet_pt_min, jet_pt_max, jet_abs_eta_max)
                summary["jets_in_window"] += len(jets)
                if spec.requires_top_match and len(jets):
                    matched = jets_matched_to_tops(jets.event, jets.eta, jets.phi, top_decay_partons(record), jet_radius)
                    summary["jets_not_top_matched"] += int((~matched).sum())
                    jets = _select(jets, matched)
                summary["jets_selected"] += len(jets)
                if len(jets) == 0:
                    events_without_jet += batch_size
                    if events_without_jet >= _MAX_EVENTS_WITHOUT_JET:
                        raise TaufmError(
                            f"{process}: no jet passed the selection in {events_without_jet} events (pT in "
                            f"({jet_pt_min}, {jet_pt_max}) GeV, |eta| < {jet_abs_eta_max}, pTHatMin {pthat_min} GeV)"
                        )
                    continue
                events_without_jet = 0
                take = min(len(jets), n_jets - summary["jets_written"])
                writer.add(jet_branches(reco, _select(jets, np.arange(take)), jet_radius, spec.label))
                summary["jets_written"] += take
                bar.update(take)
            writer.flush()
    log.info("wrote %s: %s", output, summary)
    return summary


def _select(jets: Jets, mask: np.ndarray) -> Jets:
    return Jets(
        event=jets.event[mask],
        px=jets.px[mask],
        py=jets.py[mask],
        pz=jets.pz[mask],
        energy=jets.energy[mask],
        constituents=jets.constituents[mask],
    )
