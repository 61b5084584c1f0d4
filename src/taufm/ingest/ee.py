"""Fuτure e+e- events -> labelled reco jets -> one Parquet shard per input file (SPEC §3-4).

Per chunk of events, all vectorised (no Python loop per event, jet or particle):

1. reco candidates: PDG code -> 5 classes (e, mu, photon, charged hadron 211, neutral hadron
   130), ``type == 0`` dropped; stable visible generator particles (status 1, no neutrinos);
2. FastJet generalised kt for e+e- (``ee_genkt_algorithm``, R = 0.4, p = -1) on each, separately;
3. generator taus (:func:`taufm.physics.tau.find_taus`): hadronic or not, decay mode, visible p4;
4. lepton cleaning: jets within Delta R of a prompt generator electron or muon are removed
   (:mod:`taufm.physics.leptons`; every final-state e/mu, or muons only, as options);
5. one-to-one matching gen tau -> gen jet (pT >= 20 GeV) and reco jet -> gen jet; a reco jet is
   signal when its gen jet holds a hadronic tau, background otherwise;
6. per-candidate features (SPEC §4), pT-ordered, padded to ``max_candidates`` with a mask.

Every event and jet is accounted for in the cutflow written to the shard's manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from taufm import remote
from taufm.config import config_hash, settings_from_mapping
from taufm.errors import TaufmError
from taufm.ingest.edm4hep import CollectionNames, EventChunk, iterate_events
from taufm.ingest.shards import CANDIDATE_COLUMNS, MASK_COLUMN, SPLITS, ShardWriter, assign_split, delta_phi, pad_candidates
from taufm.physics.matching import any_within, match_one_to_one
from taufm.physics.leptons import prompt_leptons
from taufm.physics.tau import find_taus
from taufm.progress import Progress

log = logging.getLogger(__name__)

# Lepton cleaning: the generator leptons whose jets are removed, as (flavours, prompt only).
LEPTON_CLEANING_MODES = {
    "prompt_electrons_and_muons": ((11, 13), True),  # the paper's intent (SPEC §3), default
    "all_electrons_and_muons": ((11, 13), False),  # every final-state e/mu, Dalitz e± included
    "muons_only": ((13,), False),  # the reference code
    "off": ((), False),
}


@dataclass(frozen=True)
class EEIngestSettings:
    """Settings of the e+e- ingestion (defaults: the paper; the reference's choices as options)."""

    jet_radius: float = 0.4
    jet_p: float = -1.0
    reco_jet_min_pt: float = 5.0  # GeV; tasks apply their own cuts on top (SPEC §5)
    tau_gen_jet_min_pt: float = 20.0
    tau_gen_jet_max_dr: float = 0.4
    reco_gen_jet_max_dr: float = 0.4  # reference: 0.3
    lepton_cleaning: str = "prompt_electrons_and_muons"  # reference: muons_only
    lepton_cleaning_dr: float = 0.4
    lepton_min_pt: float = 0.0
    max_candidates: int = 16
    signed_angles: bool = True  # reference: absolute values
    lifetime_sentinel: float = 0.0
    split_ratios: Mapping[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    chunk_size: int = 20_000
    collections: CollectionNames = field(default_factory=CollectionNames)

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> EEIngestSettings:
        """From ``taufm ingest-ee --settings``: checked against the schema, its defaults filled in."""
        settings = settings_from_mapping(cls, values, "ingest.future")
        settings = dataclasses.replace(settings, collections=CollectionNames.from_mapping(settings.collections))
        if settings.lepton_cleaning not in LEPTON_CLEANING_MODES:
            raise TaufmError(f"ingest.future.lepton_cleaning must be one of {', '.join(LEPTON_CLEANING_MODES)}, got {settings.lepton_cleaning!r}")
        return settings


class Cutflow:
    """Ordered counts of objects in and out of each cut, summed over chunks."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[int]] = {}

    def add(self, objects: str, cut: str, n_in: int, n_out: int) -> None:
        row = self._rows.setdefault((objects, cut), [0, 0])
        row[0] += int(n_in)
        row[1] += int(n_out)

    def rows(self) -> list[dict]:
        return [{"objects": o, "cut": c, "in": i, "out": n} for (o, c), (i, n) in self._rows.items()]


def _cluster(particles: ak.Array, settings: EEIngestSettings) -> tuple[ak.Array, ak.Array]:
    """Inclusive generalised-kt jets and their constituent indices, per event."""
    import fastjet

    jet_def = fastjet.JetDefinition(fastjet.ee_genkt_algorithm, settings.jet_radius, settings.jet_p)
    vectors = ak.zip({"px": particles.px, "py": particles.py, "pz": particles.pz, "E": particles.energy})
    sequence = fastjet.ClusterSequence(vectors, jet_def)
    return sequence.inclusive_jets(), sequence.constituent_index()


def _flat_kinematics(jets: ak.Array) -> dict[str, np.ndarray]:
    px, py, pz, e = (ak.to_numpy(ak.flatten(jets[k])).astype(np.float64) for k in ("px", "py", "pz", "E"))
    pt = np.hypot(px, py)
    return {
        "px": px,
        "py": py,
        "pz": pz,
        "energy": e,
        "pt": pt,
        "eta": np.arcsinh(pz / np.maximum(pt, 1e-12)),
        "phi": np.arctan2(py, px),
        "mass": np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)),
    }


def _finite_events(chunk: EventChunk) -> np.ndarray:
    finite = np.ones(len(chunk), dtype=bool)
    for collection in (chunk.gen, chunk.reco):
        for component in ("px", "py", "pz", "energy"):
            bad = ~np.isfinite(collection[component])
            finite &= ~ak.to_numpy(ak.any(bad, axis=1))
    return finite


def candidate_classes(pdg: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """SPEC §3: particle-flow PDG code -> 11, 13, 22, 211 (charged hadron) or 130 (neutral hadron)."""
    apdg = np.abs(pdg)
    return np.where(np.isin(apdg, (11, 13, 22)), apdg, np.where(charge != 0, 211, 130))


def process_chunk(chunk: EventChunk, sample: str, settings: EEIngestSettings, cutflow: Cutflow) -> dict[str, np.ndarray]:
    """Labelled reco jets with features for one chunk of events (one row per jet)."""
    n_read = len(chunk)
    finite = _finite_events(chunk)
    cutflow.add("events", "finite momenta (others skipped)", n_read, int(finite.sum()))
    gen, daughters, reco_all = chunk.gen[finite], chunk.gen_daughters[finite], chunk.reco[finite]
    event_number = chunk.event_number[finite]
    n_events = len(gen)

    # 1. Inputs to clustering.
    reco = reco_all[reco_all["type"] != 0]
    cutflow.add("reco candidates", "type != 0", int(ak.sum(ak.num(reco_all))), int(ak.sum(ak.num(reco))))
    abs_pdg = abs(gen.PDG)
    is_neutrino = (abs_pdg == 12) | (abs_pdg == 14) | (abs_pdg == 16)
    visible = (gen.generatorStatus == 1) & ~is_neutrino & (gen.energy > 0)
    gen_visible = gen[visible]

    # 2. Jets.
    reco_jets, reco_constituents = _cluster(reco, settings)
    gen_jets, _ = _cluster(gen_visible, settings)
    rj = _flat_kinematics(reco_jets)
    gj = _flat_kinematics(gen_jets)
    rj_event = np.repeat(np.arange(n_events), ak.to_numpy(ak.num(reco_jets)))
    gj_event = np.repeat(np.arange(n_events), ak.to_numpy(ak.num(gen_jets)))

    # 3. Generator taus.
    taus = find_taus(gen, daughters).taus
    tau_event = np.repeat(np.arange(n_events), ak.to_numpy(ak.num(taus)))
    flat_taus = ak.flatten(taus)
    hadronic = ak.to_numpy(flat_taus.hadronic)
    decay_mode = ak.to_numpy(flat_taus.decay_mode)
    n_charged = ak.to_numpy(flat_taus.n_charged)
    cutflow.add("gen taus", "hadronic", len(hadronic), int(hadronic.sum()))
    cutflow.add("gen taus", "hadronic, 2 charged hadrons (counted as 3-prong, as the reference)", int(hadronic.sum()), int((hadronic & (n_charged == 2)).sum()))
    vis = {k: ak.to_numpy(flat_taus[f"vis_{k}"]) for k in ("px", "py", "pz", "energy")}
    vis_pt = np.hypot(vis["px"], vis["py"])
    vis_eta = np.arcsinh(vis["pz"] / np.maximum(vis_pt, 1e-12))
    vis_phi = np.arctan2(vis["py"], vis["px"])
    vis_mass = np.sqrt(np.maximum(vis["energy"] ** 2 - vis["px"] ** 2 - vis["py"] ** 2 - vis["pz"] ** 2, 0.0))

    # 4. Lepton cleaning (generator electrons/muons, final state; prompt ones by default). The
    # other definitions are counted too, so the cutflow shows what each would remove.
    gen_flat = ak.flatten(gen)
    gen_event = np.repeat(np.arange(n_events), ak.to_numpy(ak.num(gen)))
    gpx, gpy, gpz = (ak.to_numpy(gen_flat[k]) for k in ("px", "py", "pz"))
    gpt = np.hypot(gpx, gpy)
    final_lepton = (ak.to_numpy(gen_flat.generatorStatus) == 1) & (gpt > max(settings.lepton_min_pt, 0.0)) & (gpt > 0)
    abs_gen_pdg = np.abs(ak.to_numpy(gen_flat.PDG))
    prompt = prompt_leptons(gen, daughters)
    reco_keep = rj["pt"] >= settings.reco_jet_min_pt
    cutflow.add("reco jets", f"pT >= {settings.reco_jet_min_pt} GeV", len(reco_keep), int(reco_keep.sum()))

    def near_leptons(mode: str, event: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        flavours, prompt_only = LEPTON_CLEANING_MODES[mode]
        is_lepton = final_lepton & np.isin(abs_gen_pdg, flavours) & (prompt if prompt_only else True)
        l_eta = np.arcsinh(gpz[is_lepton] / gpt[is_lepton])
        l_phi = np.arctan2(gpy[is_lepton], gpx[is_lepton])
        return any_within(event, eta, phi, gen_event[is_lepton], l_eta, l_phi, settings.lepton_cleaning_dr)

    cleaning = f"lepton cleaning ({settings.lepton_cleaning}, dR < {settings.lepton_cleaning_dr})"
    for mode in LEPTON_CLEANING_MODES:
        if mode != settings.lepton_cleaning:
            other = near_leptons(mode, rj_event, rj["eta"], rj["phi"])
            cutflow.add("reco jets, other lepton cleanings (not applied)", f"lepton cleaning ({mode}, dR < {settings.lepton_cleaning_dr})", int(reco_keep.sum()), int((reco_keep & ~other).sum()))
    near = near_leptons(settings.lepton_cleaning, rj_event, rj["eta"], rj["phi"])
    cutflow.add("reco jets", cleaning, int(reco_keep.sum()), int((reco_keep & ~near).sum()))
    reco_keep &= ~near
    gen_near = near_leptons(settings.lepton_cleaning, gj_event, gj["eta"], gj["phi"])
    cutflow.add("gen jets", cleaning, len(gen_near), int((~gen_near).sum()))
    gen_keep = ~gen_near

    # 5. Matching: hadronic tau -> gen jet (pT >= min) -> reco jet, one to one at each step.
    gen_for_tau = np.flatnonzero(gen_keep & (gj["pt"] >= settings.tau_gen_jet_min_pt))
    had = np.flatnonzero(hadronic)
    tau_to_gj = match_one_to_one(
        tau_event[had], vis_eta[had], vis_phi[had], gj_event[gen_for_tau], gj["eta"][gen_for_tau], gj["phi"][gen_for_tau], settings.tau_gen_jet_max_dr
    )
    cutflow.add("gen taus", f"hadronic tau matched to a gen jet (pT >= {settings.tau_gen_jet_min_pt} GeV, dR < {settings.tau_gen_jet_max_dr})", len(had), int((tau_to_gj >= 0).sum()))
    tau_of_gen_jet = np.full(len(gj["pt"]), -1, dtype=np.int64)
    tau_of_gen_jet[gen_for_tau[tau_to_gj[tau_to_gj >= 0]]] = had[tau_to_gj >= 0]

    kept_reco = np.flatnonzero(reco_keep)
    kept_gen = np.flatnonzero(gen_keep)
    reco_to_gen = match_one_to_one(
        rj_event[kept_reco], rj["eta"][kept_reco], rj["phi"][kept_reco], gj_event[kept_gen], gj["eta"][kept_gen], gj["phi"][kept_gen], settings.reco_gen_jet_max_dr
    )
    gen_of_reco = np.where(reco_to_gen >= 0, kept_gen[np.maximum(reco_to_gen, 0)], -1)
    tau_of_reco = np.where(gen_of_reco >= 0, tau_of_gen_jet[np.maximum(gen_of_reco, 0)], -1)
    is_signal = tau_of_reco >= 0
    matched_taus = int((tau_of_gen_jet >= 0).sum())
    cutflow.add("gen taus", f"tau's gen jet matched to a reco jet (dR < {settings.reco_gen_jet_max_dr})", matched_taus, int(is_signal.sum()))
    cutflow.add("reco jets", "written (signal + background)", len(kept_reco), len(kept_reco))

    # 6. Candidate features of the kept reco jets.
    n_const = ak.to_numpy(ak.flatten(ak.num(reco_constituents, axis=2)))
    reco_flat = ak.flatten(reco)
    reco_start = np.cumsum(ak.to_numpy(ak.num(reco))) - ak.to_numpy(ak.num(reco))
    local = ak.to_numpy(ak.flatten(reco_constituents, axis=None)).astype(np.int64)
    jet_of = np.repeat(np.arange(len(n_const)), n_const)
    cand = local + reco_start[rj_event[jet_of]]
    keep_cand = reco_keep[jet_of]
    cand, jet_of = cand[keep_cand], jet_of[keep_cand]
    # Renumber jets to the kept ones.
    new_jet = np.cumsum(reco_keep) - 1
    jet_of = new_jet[jet_of]

    cpx, cpy, cpz, ce = (ak.to_numpy(reco_flat[k])[cand] for k in ("px", "py", "pz", "energy"))
    ccharge = ak.to_numpy(reco_flat.charge)[cand].astype(np.float64)
    ctype = candidate_classes(ak.to_numpy(reco_flat["type"])[cand], ccharge)
    cpt = np.hypot(cpx, cpy)
    ceta = np.arcsinh(cpz / np.maximum(cpt, 1e-12))
    cphi = np.arctan2(cpy, cpx)
    deta = ceta - rj["eta"][kept_reco][jet_of]
    dphi = delta_phi(cphi, rj["phi"][kept_reco][jet_of])
    if not settings.signed_angles:
        deta, dphi = np.abs(deta), np.abs(dphi)
    has_track = np.isfinite(ak.to_numpy(reco_flat.d0)[cand])
    lifetime = {}
    for name in ("d0", "d0err", "dz", "dzerr"):
        values = ak.to_numpy(reco_flat[name])[cand]
        lifetime[name] = np.where(has_track, values, settings.lifetime_sentinel)
    features = {
        "pt": cpt,
        "mass": np.sqrt(np.maximum(ce**2 - cpt**2 - cpz**2, 0.0)),
        "deta": deta,
        "dphi": dphi,
        "charge": ccharge,
        "isElectron": ctype == 11,
        "isMuon": ctype == 13,
        "isPhoton": ctype == 22,
        "isChargedHadron": ctype == 211,
        "isNeutralHadron": ctype == 130,
        **lifetime,
    }
    counts = np.bincount(jet_of, minlength=len(kept_reco))
    per_jet = ak.unflatten(ak.zip({k: np.asarray(v, dtype=np.float64) for k, v in features.items()}), counts)
    padded, mask, n_cand = pad_candidates(per_jet, settings.max_candidates)
    cutflow.add("reco jets", f"more than {settings.max_candidates} candidates (truncated, kept)", len(n_cand), int((n_cand > settings.max_candidates).sum()))

    ev = rj_event[kept_reco]
    jet_rank = np.arange(len(rj_event)) - np.searchsorted(rj_event, rj_event)  # index within event, pT order of FastJet
    nan = np.float32(np.nan)

    def of_tau(values: np.ndarray, missing) -> np.ndarray:
        """Per written jet: the value of its matched tau, ``missing`` without one (also when the
        chunk holds no tau at all)."""
        padded_values = np.append(np.asarray(values, dtype=np.float64), np.nan)
        return np.where(is_signal, padded_values[np.where(is_signal, tau_of_reco, -1)], missing)

    def of_gen_jet(values: np.ndarray) -> np.ndarray:
        padded_values = np.append(np.asarray(values, dtype=np.float64), np.nan)
        return np.where(gen_of_reco >= 0, padded_values[gen_of_reco], nan)

    columns: dict[str, np.ndarray] = {
        "event": event_number[ev].astype(np.int64),
        "jet_index": jet_rank[kept_reco].astype(np.int16),
        **{f"jet_{k}": rj[k][kept_reco].astype(np.float32) for k in ("pt", "eta", "phi", "energy", "mass")},
        "n_cand": n_cand,
        "label": is_signal.astype(np.int8),
        "decay_mode": of_tau(decay_mode, -1).astype(np.int8),
        "gen_tau_vis_pt": of_tau(vis_pt, nan).astype(np.float32),
        "gen_tau_vis_eta": of_tau(vis_eta, nan).astype(np.float32),
        "gen_tau_vis_phi": of_tau(vis_phi, nan).astype(np.float32),
        "gen_tau_vis_energy": of_tau(vis["energy"], nan).astype(np.float32),
        "gen_tau_vis_mass": of_tau(vis_mass, nan).astype(np.float32),
        "gen_tau_charge": of_tau(ak.to_numpy(flat_taus.charge), 0.0).astype(np.float32),
        **{f"gen_jet_{k}": of_gen_jet(gj[k]).astype(np.float32) for k in ("pt", "eta", "phi", "energy")},
    }
    for name in CANDIDATE_COLUMNS:
        columns[name] = padded[name[len("cand_") :]]
    columns[MASK_COLUMN] = mask
    return columns


def ingest_ee_file(path: str | Path, output: str | Path, *, sample: str, settings: EEIngestSettings | None = None, config: Mapping | None = None) -> dict:
    """Ingest one EDM4hep file into one Parquet shard plus manifest; returns the manifest.

    Chunks of ``settings.chunk_size`` events are read, processed and written one at a time, so
    memory does not grow with the file. ``path`` may be a root:// URL (:mod:`taufm.remote`): it
    is streamed, and the manifest records its URL, size, modification time and checksum.
    """
    settings = settings or EEIngestSettings()
    path = remote.as_source(path)
    name = remote.file_name(path)
    remote_file = remote.stat(path, checksum=True) if remote.is_remote(path) else None
    cutflow = Cutflow()
    n_events = n_jets = n_signal = 0
    per_split = np.zeros(len(SPLITS), dtype=np.int64)
    per_decay_mode = np.zeros(6, dtype=np.int64)
    with ShardWriter(output) as writer, Progress(f"ingest {name}", None, unit="event") as progress:
        for layout, chunk in iterate_events(path, settings.chunk_size, settings.collections, identity=remote_file):
            columns = process_chunk(chunk, sample, settings, cutflow)
            n = len(columns["event"])
            progress.update(len(chunk), jets=n_jets + n)
            split = assign_split(sample, name, columns["event"], settings.split_ratios)
            writer.write({"sample": np.full(n, sample, dtype=object), "file": np.full(n, name, dtype=object), "split": split, **columns})
            n_events += len(chunk)
            n_jets += n
            n_signal += int(columns["label"].sum())
            per_split += np.bincount(split, minlength=len(SPLITS))
            per_decay_mode += np.bincount(columns["decay_mode"][columns["decay_mode"] >= 0], minlength=6)[:6]
        if n_events == 0:
            raise TaufmError(f"{path}: the tree 'events' holds no events")
        warnings = []
        if n_jets == 0:
            warnings.append(f"no jet passed the selection in {n_events} events: the shard is empty (see the cutflow)")
            log.warning("%s: %s", path, warnings[-1])
        resolved = {**dataclasses.asdict(settings), "split_ratios": dict(settings.split_ratios)}
        resolved.pop("chunk_size")  # how the file is read, not what is written
        writer.manifest = {
            "stage": "ingest_ee",
            "input": str(path),
            # a root:// input: what was read (a local input is tracked by Snakemake's mtime)
            **({"remote_input": remote_file.describe()} if remote_file else {}),
            "sample": sample,
            # What was read: the podio generation, the collections, whether the file had tracks
            # (without them the lifetime columns hold the sentinel).
            "layout": layout.describe(),
            "events": n_events,
            "jets": n_jets,
            **({"warnings": warnings} if warnings else {}),
            "signal_jets": n_signal,
            "jets_per_split": {name: int(per_split[i]) for i, name in enumerate(SPLITS)},
            "decay_modes": {str(dm): int(per_decay_mode[dm]) for dm in range(6)},
            "cutflow": cutflow.rows(),
            "settings": resolved,
            "settings_hash": config_hash(resolved),
            **({"config": dict(config)} if config is not None else {}),
        }
    log.info("wrote %s: %d events, %d jets (%d tau)", output, n_events, n_jets, n_signal)
    return dict(writer.manifest)
