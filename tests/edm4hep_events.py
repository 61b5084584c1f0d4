"""Hand-built e+e- events with known answers, written with the generator's EDM4hep writer.

Each event is a list of generator particles (with parents) and reconstructed candidates; the
builders turn them into the arrays :class:`taufm.sim.edm4hep.EDM4hepWriter` writes, so the tests
of the ingestion read the same layout as real files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import awkward as ak
import numpy as np

from taufm.sim.detector import RecoEvents
from taufm.sim.edm4hep import EDM4hepWriter
from taufm.sim.pythia import GenRecord

MASS = {11: 0.000511, 12: 0.0, 13: 0.10566, 14: 0.0, 15: 1.77686, 16: 0.0, 22: 0.0, 111: 0.13498, 211: 0.13957, 213: 0.77526, 1: 0.33, 2: 0.33}
CHARGE = {11: -1.0, 13: -1.0, 15: -1.0, 211: 1.0, 213: 1.0, 1: -1 / 3, 2: 2 / 3}


def p4(pt: float, eta: float, phi: float, mass: float = 0.0) -> tuple[float, float, float, float]:
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return px, py, pz, float(np.sqrt(px**2 + py**2 + pz**2 + mass**2))


@dataclass
class Event:
    """Generator particles (pdg, status, p4, parents) and reco candidates of one event."""

    gen: list[dict] = field(default_factory=list)
    reco: list[dict] = field(default_factory=list)

    def add_gen(self, pdg: int, status: int, momentum, parents: tuple[int, ...] = ()) -> int:
        px, py, pz, e = momentum
        self.gen.append({"PDG": pdg, "generatorStatus": status, "px": px, "py": py, "pz": pz, "energy": e, "parents": list(parents)})
        return len(self.gen) - 1

    def add_gen_sum(self, pdg: int, status: int, children: list[int], parents: tuple[int, ...] = ()) -> int:
        """A particle whose momentum is the sum of (not yet linked) children, which it then parents."""
        px, py, pz, e = (sum(self.gen[c][k] for c in children) for k in ("px", "py", "pz", "energy"))
        index = self.add_gen(pdg, status, (px, py, pz, e), parents)
        for c in children:
            self.gen[c]["parents"].append(index)
        return index

    def add_reco(self, pdg: int, momentum, charge: float = 0.0, d0: float = 0.0, z0: float = 0.0) -> None:
        px, py, pz, e = momentum
        self.reco.append({"type": pdg, "charge": charge, "px": px, "py": py, "pz": pz, "energy": e, "d0": d0, "z0": z0})

    def reco_from_gen(self, index: int) -> None:
        """A perfectly measured candidate from a stable generator particle."""
        g = self.gen[index]
        pdg = g["PDG"]
        charge = float(np.sign(pdg)) * CHARGE.get(abs(pdg), 0.0)
        self.add_reco(pdg, (g["px"], g["py"], g["pz"], g["energy"]), charge=charge, d0=0.01 if charge else 0.0)


def assert_same_rows(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> None:
    """Column-by-column equality of two shards read with pyarrow (NaN equals NaN)."""
    assert set(a) == set(b)
    for name in a:
        if name not in ignore:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def _charge(pdg: int) -> float:
    return float(np.sign(pdg)) * CHARGE.get(abs(pdg), 0.0)


def write_events(path, events: list[Event], generation: str = "podio-0.16", with_tracks: bool = True) -> None:
    """Write ``events`` as an EDM4hep-layout file (event numbers 0..n-1) of a podio ``generation``."""
    gen_rows, parents, daughters, cands, tracks, links = [], [], [], [], [], []
    for event in events:
        n = len(event.gen)
        kids = [[] for _ in range(n)]
        for i, g in enumerate(event.gen):
            for parent in g["parents"]:
                kids[parent].append(i)
        gen_rows.append(
            [
                {
                    "PDG": g["PDG"],
                    "generatorStatus": g["generatorStatus"],
                    "charge": _charge(g["PDG"]),
                    "mass": MASS.get(abs(g["PDG"]), 0.0),
                    "time": 0.0,
                    **{k: float(g[k]) for k in ("px", "py", "pz", "energy")},
                    **{k: 0.0 for k in ("vx", "vy", "vz", "ex", "ey", "ez")},
                }
                for g in event.gen
            ]
        )
        parents.append([sorted(g["parents"]) for g in event.gen])
        daughters.append(kids)
        event_cands, event_tracks = [], []
        for r in event.reco:
            has_track = r["charge"] != 0
            event_cands.append(
                {
                    "type": r["type"],
                    "charge": r["charge"],
                    "mass": MASS.get(abs(r["type"]), 0.0),
                    "energy": r["energy"],
                    "px": r["px"],
                    "py": r["py"],
                    "pz": r["pz"],
                    "track": len(event_tracks) if has_track else -1,
                }
            )
            if has_track:
                event_tracks.append(
                    {
                        "location": 1,
                        "D0": r["d0"],
                        "Z0": r["z0"],
                        "phi": float(np.arctan2(r["py"], r["px"])),
                        "omega": 1e-4 * r["charge"],
                        "tanLambda": r["pz"] / np.hypot(r["px"], r["py"]),
                        "var_D0": 1e-4,
                        "var_Z0": 4e-4,
                        "var_phi": 1e-6,
                        "var_omega": 1e-12,
                        "var_tanLambda": 1e-6,
                    }
                )
        cands.append(event_cands)
        tracks.append(event_tracks)
        links.append([{"reco": i, "mc": 0, "weight": 1.0} for i in range(len(event_cands))])
    record = GenRecord(particles=ak.Array(gen_rows), parents=_int_lists(parents), daughters=_int_lists(daughters))
    cand_array = ak.Array(cands)
    cand_array = ak.zip(
        {
            "type": ak.values_astype(cand_array["type"], np.int32),
            **{k: ak.values_astype(cand_array[k], np.float32) for k in ("charge", "mass", "energy", "px", "py", "pz")},
            "track": ak.values_astype(cand_array.track, np.int64),
        }
    )
    track_array = ak.Array(tracks)
    track_array = ak.zip({k: ak.values_astype(track_array[k], np.int32 if k == "location" else np.float32) for k in ak.fields(track_array)})
    link_array = ak.Array(links)
    reco = RecoEvents(candidates=cand_array, tracks=track_array, links=link_array)
    with EDM4hepWriter(path, generation=generation, tracks=with_tracks) as writer:
        writer.write(record, reco, np.arange(len(events)))


def _int_lists(nested: list) -> ak.Array:
    return ak.values_astype(ak.Array(nested), np.int64) if any(any(x) for e in nested for x in e) else ak.Array(nested)


# --- The events of the ingestion tests ------------------------------------------------------------


def tau_to_pi_nu(eta=0.3, phi=0.5) -> Event:
    """tau- -> pi- nu: decay mode 0, visible pT 30 GeV."""
    e = Event()
    pi = e.add_gen(-211, 1, p4(30.0, eta, phi, MASS[211]))
    nu = e.add_gen(16, 1, p4(10.0, eta, phi))
    e.add_gen_sum(15, 2, [pi, nu])
    e.reco_from_gen(pi)
    return e


def tau_to_rho_nu(eta=-0.5, phi=2.0) -> Event:
    """tau- -> rho- nu, rho- -> pi- pi0, pi0 -> gamma gamma: decay mode 1."""
    e = Event()
    pi = e.add_gen(-211, 1, p4(20.0, eta, phi, MASS[211]))
    g1 = e.add_gen(22, 1, p4(8.0, eta + 0.02, phi + 0.01))
    g2 = e.add_gen(22, 1, p4(6.0, eta - 0.01, phi + 0.02))
    pi0 = e.add_gen_sum(111, 2, [g1, g2])
    rho = e.add_gen_sum(-213, 2, [pi, pi0])
    nu = e.add_gen(16, 1, p4(5.0, eta, phi))
    e.add_gen_sum(15, 2, [rho, nu])
    for i in (pi, g1, g2):
        e.reco_from_gen(i)
    return e


def tau_to_three_pi_nu(eta=0.8, phi=-1.0, with_pi0=False) -> Event:
    """tau- -> pi- pi- pi+ (pi0) nu: decay mode 3 (4 with the pi0)."""
    e = Event()
    prongs = [
        e.add_gen(-211, 1, p4(15.0, eta, phi, MASS[211])),
        e.add_gen(-211, 1, p4(10.0, eta + 0.03, phi - 0.02, MASS[211])),
        e.add_gen(211, 1, p4(8.0, eta - 0.02, phi + 0.03, MASS[211])),
    ]
    products = list(prongs)
    if with_pi0:
        g1 = e.add_gen(22, 1, p4(5.0, eta + 0.05, phi))
        g2 = e.add_gen(22, 1, p4(4.0, eta + 0.05, phi + 0.01))
        products.append(e.add_gen_sum(111, 2, [g1, g2]))
        prongs += [g1, g2]
    products.append(e.add_gen(16, 1, p4(6.0, eta, phi)))
    e.add_gen_sum(15, 2, products)
    for i in prongs:
        e.reco_from_gen(i)
    return e


def leptonic_tau(eta=0.0, phi=-2.0) -> Event:
    """tau- -> e- nu nu: not hadronic; its jet sits on a generator electron and is cleaned away."""
    e = Event()
    el = e.add_gen(11, 1, p4(25.0, eta, phi, MASS[11]))
    n1 = e.add_gen(16, 1, p4(5.0, eta, phi))
    n2 = e.add_gen(-12, 1, p4(5.0, eta, phi))
    e.add_gen_sum(15, 2, [el, n1, n2])
    e.reco_from_gen(el)
    return e


def qq_event() -> Event:
    """e+e- -> q qbar: two back-to-back pion jets, background only."""
    e = Event()
    jets = []
    for sign, phi in ((1, 0.2), (-1, 0.2 + np.pi)):
        pions = [e.add_gen(211 * s, 1, p4(pt, 0.1 * sign, phi + dphi, MASS[211])) for s, pt, dphi in ((1, 25.0, 0.0), (-1, 12.0, 0.05), (1, 6.0, -0.04))]
        jets.append(pions)
    q = e.add_gen_sum(1, 23, jets[0])
    qbar = e.add_gen_sum(-1, 23, jets[1])
    e.gen[q]["parents"], e.gen[qbar]["parents"] = [], []
    for pions in jets:
        for i in pions:
            e.reco_from_gen(i)
    return e


def tau_near_electron() -> Event:
    """A hadronic tau jet with an unrelated generator electron at Delta R = 0.2: removed."""
    e = tau_to_pi_nu(eta=0.0, phi=1.0)
    e.add_gen(-11, 1, p4(5.0, 0.2, 1.0, MASS[11]))
    return e


def two_taus_one_jet() -> Event:
    """Two hadronic taus 0.1 apart: one gen jet, so only one tau is matched (one-to-one)."""
    e = Event()
    for eta, pt in ((0.0, 30.0), (0.1, 20.0)):
        pi = e.add_gen(-211, 1, p4(pt, eta, 0.0, MASS[211]))
        nu = e.add_gen(16, 1, p4(5.0, eta, 0.0))
        e.add_gen_sum(15, 2, [pi, nu])
        e.reco_from_gen(pi)
    return e


def tau_copy_chain(eta=0.2, phi=-0.7) -> Event:
    """tau- -> tau- gamma (an intermediate copy radiating), the last copy -> pi- nu; every
    non-final particle has status 2, as some generators write it: one tau, decay mode 0,
    visible pT 30 GeV (the pion's), not a tau counted as a charged hadron."""
    e = Event()
    pi = e.add_gen(-211, 1, p4(30.0, eta, phi, MASS[211]))
    nu = e.add_gen(16, 1, p4(8.0, eta, phi))
    last = e.add_gen_sum(15, 2, [pi, nu])
    photon = e.add_gen(22, 1, p4(3.0, eta + 1.5, phi))
    e.add_gen_sum(15, 2, [last, photon])
    e.reco_from_gen(pi)
    e.reco_from_gen(photon)
    return e


def tau_with_dalitz_pi0(eta=-0.3, phi=1.2) -> Event:
    """tau- -> pi- pi0 nu with pi0 -> gamma e+ e- (Dalitz): decay mode 1; the e± inside the tau
    jet are not prompt, so the default lepton cleaning keeps the jet."""
    e = Event()
    pi = e.add_gen(-211, 1, p4(20.0, eta, phi, MASS[211]))
    photon = e.add_gen(22, 1, p4(6.0, eta + 0.02, phi - 0.01))
    positron = e.add_gen(-11, 1, p4(2.0, eta - 0.02, phi + 0.01, MASS[11]))
    electron = e.add_gen(11, 1, p4(1.5, eta + 0.01, phi + 0.02, MASS[11]))
    pi0 = e.add_gen_sum(111, 2, [photon, positron, electron])
    nu = e.add_gen(16, 1, p4(5.0, eta, phi))
    e.add_gen_sum(15, 2, [pi, pi0, nu])
    for i in (pi, photon, positron, electron):
        e.reco_from_gen(i)
    return e


def tau_to_omega_pi_nu(eta=0.6, phi=2.6) -> Event:
    """tau- -> omega pi- nu with omega -> pi0 gamma: decay mode 1 (1h± 1h0); the photon comes
    from the omega, not from the tau, so the decay is not "rare"."""
    e = Event()
    pi = e.add_gen(-211, 1, p4(15.0, eta, phi, MASS[211]))
    g1 = e.add_gen(22, 1, p4(5.0, eta + 0.02, phi))
    g2 = e.add_gen(22, 1, p4(4.0, eta, phi + 0.02))
    pi0 = e.add_gen_sum(111, 2, [g1, g2])
    omega_photon = e.add_gen(22, 1, p4(2.0, eta - 0.02, phi - 0.01))
    omega = e.add_gen_sum(223, 2, [pi0, omega_photon])
    nu = e.add_gen(16, 1, p4(5.0, eta, phi))
    e.add_gen_sum(15, 2, [pi, omega, nu])
    for i in (pi, g1, g2, omega_photon):
        e.reco_from_gen(i)
    return e


def z_to_ee_near_a_quark_jet() -> Event:
    """Z -> e+ e- with the electron at Delta R 0.2 of a pion jet: a prompt electron, so the
    jet is removed by every cleaning that looks at electrons."""
    e = Event()
    pions = [e.add_gen(211, 1, p4(25.0, 1.0, 0.0, MASS[211])), e.add_gen(-211, 1, p4(10.0, 1.05, 0.03, MASS[211]))]
    q = e.add_gen_sum(1, 23, pions)
    electron = e.add_gen(11, 1, p4(40.0, 1.2, 0.0, MASS[11]))
    positron = e.add_gen(-11, 1, p4(40.0, -1.2, np.pi, MASS[11]))
    e.add_gen_sum(23, 22, [electron, positron])
    e.gen[q]["parents"] = []
    for i in pions:
        e.reco_from_gen(i)
    return e


KNOWN_EVENTS = [
    tau_to_pi_nu,
    tau_to_rho_nu,
    tau_to_three_pi_nu,
    lambda: tau_to_three_pi_nu(with_pi0=True),
    leptonic_tau,
    qq_event,
    tau_near_electron,
    two_taus_one_jet,
]


def rewrite_events(source, target, drop: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> None:
    """Copy the leaves of an EDM4hep-layout file to ``target`` as flat branches, leaving out the
    leaves in ``drop`` and renaming collections by leaf prefix (``{"MCParticles": "X"}`` turns
    ``MCParticles.PDG`` into ``X.PDG``): files a writer of ours would never make."""
    import uproot

    rename = rename or {}

    def renamed(leaf: str) -> str:
        for old, new in rename.items():
            for sep in (".", "#", "_"):
                if leaf.startswith(old + sep):
                    return new + leaf[len(old) :]
            if leaf.startswith(f"_{old}_"):
                return f"_{new}_" + leaf[len(old) + 2 :]
        return leaf

    with uproot.open(source) as f:
        tree = f["events"]
        leaves = [k for k in tree.keys() if not k.startswith("n") and k not in drop]
        arrays = tree.arrays(filter_name=lambda name: name in set(leaves))
    out = {renamed(k): arrays[k] for k in leaves}
    with uproot.recreate(target) as f:
        f.mktree("events", {k: v.type for k, v in out.items()})
        f["events"].extend(out)
