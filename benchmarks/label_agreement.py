"""Check taufm's generator-level tau labels against an independent oracle, and measure how the
lepton-cleaning definition changes the tau-jet yield per decay mode.

Part 1. Events are generated one at a time (``pythia.nextBatch(1)``) with the settings of
``taufm.sim.ee``; the concatenated batches go through ``taufm.sim.pythia.record_from_batch``
(the code path of ``generate_record``, and checked to give the same record as
``generate_record`` for the same seed) into :func:`taufm.physics.tau.find_taus`. For every
event, the oracle is computed from Pythia's own event record while it still holds that event
(``pythia.event``), with Pythia's particle methods only (no taufm code): each tau is followed to
its bottom copy (``iBotCopyId``), its decay products are collected recursively (descending into
decayed intermediate resonances, stopping at final-state particles and at pi0, eta, K0S, K0L,
K0), and the SPEC §3 decay mode and visible four-momentum are computed. The same comparison is
repeated on (b) a copy of the records in which every non-final particle has generatorStatus 2
(as some generators write it, so intermediate tau copies look decayed) and (c) the generator
record as read back from the simulated EDM4hep shard (what the ingestion labels).

Part 2. The same events (same seeds) are simulated into shards with
``taufm.sim.ee.simulate_ee_shard`` and ingested once per lepton-cleaning mode; the tau-jet
(label 1) yield per decay mode is counted from the Parquet shards.

    python benchmarks/label_agreement.py                        # 2000 Z->tautau + 1000 ZH events
    python benchmarks/label_agreement.py --z-events 5000 --zh-events 3000 --z-sqrt-s 91.2
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

# The oracle's own constants (deliberately not imported from taufm.physics.tau).
NEUTRINO_IDS = (12, 14, 16)
LEPTON_IDS = (11, 13)
STOP_IDS = (111, 221, 310, 130, 311)  # pi0, eta, K0S, K0L, K0: one neutral hadron each
DM_NAMES = ("1h0h0", "1h1h0", "1hNh0", "3h0h0", "3hNh0", "rare")
CLEANING_MODES = ("prompt_electrons_and_muons", "all_electrons_and_muons", "muons_only", "off")
NEW_DEFAULT, FORMER_DEFAULT = CLEANING_MODES[0], CLEANING_MODES[1]
PT_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------
# The oracle, from Pythia's event record.


@dataclass
class OracleTau:
    event: int
    index: int  # in the GenRecord (Pythia's index minus one: the system entry 0 is dropped)
    charge: float
    hadronic: bool
    decay_mode: int  # -1 for leptonic
    n_charged: int
    n_neutral: int
    n_photons_direct: int
    n_photons_all: int
    vis: tuple[float, float, float, float]
    n_copies: int  # entries of this tau in the record, top copy to bottom copy
    listing: str = field(repr=False, default="")


def _line(ev, i: int, depth: int) -> str:
    """One particle, with indices as in the GenRecord (Pythia's minus one)."""
    q = ev[i]
    mothers = ",".join(str(m - 1) for m in q.motherList()) or "-"
    daughters = ",".join(str(d - 1) for d in q.daughterList()) or "-"
    return (
        f"{'  ' * depth}[{i - 1:3d}] {q.id():6d} {q.name():<12} Pythia status {q.status():4d}  "
        f"mothers {mothers:<7} daughters {daughters:<14} p = ({q.px():9.4f}, {q.py():9.4f}, {q.pz():9.4f}; {q.e():9.4f})"
    )


def oracle_decay_mode(n_charged: int, n_neutral: int, n_photons_direct: int) -> int:
    if n_photons_direct > 0:
        return 5
    if n_charged == 1:
        return 0 if n_neutral == 0 else (1 if n_neutral == 1 else 2)
    if n_charged in (2, 3):  # 2 prongs go to the 3-prong classes, as the reference does
        return 3 if n_neutral == 0 else 4
    return 5


def oracle_taus(ev, event: int) -> list[OracleTau]:
    """All decayed taus of the current Pythia event (indices as in the GenRecord, i.e. minus 1)."""
    bottoms: dict[int, int] = {}
    for i in range(1, ev.size()):
        q = ev[i]
        if q.idAbs() == 15:
            bottom = q.iBotCopyId()
            bottoms[bottom] = bottoms.get(bottom, 0) + 1
    out = []
    for bottom, n_copies in sorted(bottoms.items()):
        tau = ev[bottom]
        if tau.isFinal():
            continue
        lines = [_line(ev, j, 0) for j in _copy_chain(ev, bottom)]
        products: list[int] = []
        seen: set[int] = set()

        def collect(i: int, depth: int) -> None:
            for d in ev[i].daughterList():
                if d in seen:
                    continue
                seen.add(d)
                q = ev[d]
                lines.append(_line(ev, d, depth))
                if q.isFinal() or q.idAbs() in STOP_IDS or len(q.daughterList()) == 0:
                    products.append(d)
                else:
                    collect(d, depth + 1)

        collect(bottom, 1)
        direct = [ev[d] for d in tau.daughterList()]
        n_ch = n_h0 = n_gamma = 0
        vis = [0.0, 0.0, 0.0, 0.0]
        for d in products:
            q = ev[d]
            if q.isHadron():
                if q.chargeType() != 0:
                    n_ch += 1
                else:
                    n_h0 += 1
            elif q.id() == 22:
                n_gamma += 1
            if q.idAbs() not in NEUTRINO_IDS:
                vis[0] += q.px()
                vis[1] += q.py()
                vis[2] += q.pz()
                vis[3] += q.e()
        leptonic = any(q.idAbs() in LEPTON_IDS for q in direct)
        hadronic = (not leptonic) and n_ch > 0
        n_gamma_direct = sum(q.id() == 22 for q in direct)
        dm = oracle_decay_mode(n_ch, n_h0, n_gamma_direct) if hadronic else -1
        out.append(OracleTau(event, bottom - 1, tau.charge(), hadronic, dm, n_ch, n_h0, n_gamma_direct, n_gamma, tuple(vis), n_copies, "\n".join(lines)))
    return out


def _copy_chain(ev, bottom: int) -> list[int]:
    """Indices from the top copy of a tau down to ``bottom``, following same-id daughters."""
    chain = [ev[bottom].iTopCopyId()]
    while chain[-1] != bottom and len(chain) < 100:
        nxt = [d for d in ev[chain[-1]].daughterList() if ev[d].id() == ev[bottom].id()]
        if not nxt:
            break
        chain.append(nxt[0])
    return chain


def generate_with_oracle(sample: str, sqrt_s: float, n_events: int, seed: int):
    """The GenRecord of ``n_events`` (taufm's conversion) and the oracle taus of the same events."""
    from taufm.sim.ee import EE_SAMPLES, ee_beam_settings
    from taufm.sim.pythia import make_pythia, record_from_batch
    from taufm.sim.seeding import pythia_seed

    settings = ee_beam_settings(sqrt_s) + EE_SAMPLES[sample]
    pythia = make_pythia(settings, pythia_seed(sample, 0, seed))  # shard 0 of simulate_ee_shard
    batches, taus = [], []
    while len(batches) < n_events:
        batch = pythia.nextBatch(1)
        if len(batch) != 1:
            continue
        batches.append(batch)
        taus.extend(oracle_taus(pythia.event, len(batches) - 1))
    record = record_from_batch(ak.concatenate(batches), pythia.particleData.charge)
    return settings, pythia_seed(sample, 0, seed), record, taus


def check_same_as_generate_record(settings: list[str], seed: int, record, n_check: int) -> bool:
    """The per-event path gives the record ``generate_record`` makes for the same seed."""
    from taufm.sim.pythia import generate_record, make_pythia

    if n_check <= 0:
        return True
    reference = generate_record(make_pythia(settings, seed), n_check)
    return all(ak.array_equal(getattr(reference, f), getattr(record, f)[:n_check]) for f in ("particles", "parents", "daughters"))


# --------------------------------------------------------------------------------------------
# Comparison.


def taufm_table(particles: ak.Array, daughters: ak.Array) -> dict[tuple[int, int], dict]:
    from taufm.physics.tau import find_taus

    taus = find_taus(particles, daughters).taus
    event = np.repeat(np.arange(len(taus)), ak.to_numpy(ak.num(taus)))
    flat = ak.flatten(taus)
    cols = {k: ak.to_numpy(flat[k]) for k in ak.fields(flat)}
    return {(int(event[i]), int(cols["index"][i])): {k: v[i] for k, v in cols.items()} for i in range(len(event))}


@dataclass
class Comparison:
    n_oracle: int
    n_taufm: int
    n_matched: int
    charge_mismatch: int
    hadronic_agree: int
    had_both: int
    dm_agree: int
    confusion: np.ndarray
    pt_ok: int
    pt_max_dev: float
    pt_ok_had: int
    n_had_matched: int
    counts_agree: int
    dm_fractions_oracle: np.ndarray
    dm_fractions_taufm: np.ndarray
    disagreements: list
    photon_rule: int


def compare(oracle: list[OracleTau], table: dict) -> Comparison:
    confusion = np.zeros((6, 6), dtype=np.int64)
    photon_rule = matched = charge_mismatch = hadronic_agree = had_both = dm_agree = pt_ok = pt_ok_had = n_had = counts_agree = 0
    max_dev = 0.0
    dm_oracle, dm_taufm = np.zeros(6, dtype=np.int64), np.zeros(6, dtype=np.int64)
    bad = []
    for t in oracle:
        if t.hadronic:
            dm_oracle[t.decay_mode] += 1
    for row in table.values():
        if row["hadronic"]:
            dm_taufm[int(row["decay_mode"])] += 1
    for t in oracle:
        row = table.get((t.event, t.index))
        if row is None:
            bad.append((t, None, "not found by taufm"))
            continue
        matched += 1
        charge_mismatch += int(abs(float(row["charge"]) - t.charge) > 1e-6)
        same_type = bool(row["hadronic"]) == t.hadronic
        hadronic_agree += same_type
        pt_o = math.hypot(t.vis[0], t.vis[1])
        pt_t = math.hypot(float(row["vis_px"]), float(row["vis_py"]))
        dev = abs(pt_t / pt_o - 1.0) if pt_o > 0 else abs(pt_t)
        max_dev = max(max_dev, dev)
        pt_ok += dev < PT_TOLERANCE
        reasons = [] if same_type else [f"hadronic: oracle {t.hadronic}, taufm {bool(row['hadronic'])}"]
        if t.hadronic:
            n_had += 1
            pt_ok_had += dev < PT_TOLERANCE
        if t.hadronic and row["hadronic"]:
            had_both += 1
            confusion[t.decay_mode, int(row["decay_mode"])] += 1
            dm_agree += t.decay_mode == int(row["decay_mode"])
            same_counts = (t.n_charged, t.n_neutral) == (int(row["n_charged"]), int(row["n_neutral"]))
            counts_agree += same_counts
            if t.decay_mode != int(row["decay_mode"]):
                reasons.append(f"decay mode: oracle {DM_NAMES[t.decay_mode]}, taufm {DM_NAMES[int(row['decay_mode'])]}")
                # Would the oracle agree if any photon among the products (not only a direct one) made a tau "rare"?
                photon_rule += oracle_decay_mode(t.n_charged, t.n_neutral, t.n_photons_all) == int(row["decay_mode"])
            if not same_counts:
                reasons.append(f"counts (h+-, h0): oracle ({t.n_charged}, {t.n_neutral}), taufm ({int(row['n_charged'])}, {int(row['n_neutral'])})")
        if dev >= PT_TOLERANCE:
            reasons.append(f"visible pT: oracle {pt_o:.5f}, taufm {pt_t:.5f} GeV")
        if reasons:
            bad.append((t, row, "; ".join(reasons)))
    oracle_keys = {(t.event, t.index) for t in oracle}
    for key, row in table.items():
        if key not in oracle_keys:
            bad.append((None, row, f"taufm tau at event {key[0]}, index {key[1]} is not an oracle tau"))

    def frac(c):
        return c / max(c.sum(), 1)

    return Comparison(
        len(oracle), len(table), matched, charge_mismatch, hadronic_agree, had_both, dm_agree, confusion,
        pt_ok, max_dev, pt_ok_had, n_had, counts_agree, frac(dm_oracle), frac(dm_taufm), bad, photon_rule,
    )


def pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.3f}% ({a}/{b})" if b else "n/a"


def print_comparison(title: str, c: Comparison, examples: int, confusion: bool = True) -> None:
    print(f"\n## {title}")
    print(f"taus: oracle {c.n_oracle}, taufm {c.n_taufm}, matched by index {c.n_matched} (charge mismatches {c.charge_mismatch})")
    print(f"hadronic/leptonic agree: {pct(c.hadronic_agree, c.n_matched)}")
    print(f"decay mode agree (hadronic in both): {pct(c.dm_agree, c.had_both)};  (n h+-, n h0) agree: {pct(c.counts_agree, c.had_both)}")
    if c.dm_agree < c.had_both:
        print(f"  decay-mode disagreements that vanish if any photon among the products (not only one directly from the tau) makes a tau 'rare': {c.photon_rule} of {c.had_both - c.dm_agree}")
    print(f"visible pT |taufm/oracle - 1| < {PT_TOLERANCE:g}: all taus {pct(c.pt_ok, c.n_matched)}, hadronic {pct(c.pt_ok_had, c.n_had_matched)}; max rel. deviation {c.pt_max_dev:.2e}")
    print("decay-mode fractions (hadronic taus)  " + "  ".join(f"{n:>6}" for n in DM_NAMES))
    print("  oracle                              " + "  ".join(f"{x:6.4f}" for x in c.dm_fractions_oracle))
    print("  taufm                               " + "  ".join(f"{x:6.4f}" for x in c.dm_fractions_taufm))
    if confusion:
        print("confusion matrix (rows: oracle, columns: taufm)")
        print("        " + " ".join(f"{n:>6}" for n in DM_NAMES))
        for i, n in enumerate(DM_NAMES):
            print(f"{n:>7} " + " ".join(f"{v:6d}" for v in c.confusion[i]))
    print(f"disagreeing taus: {len(c.disagreements)}")
    for t, row, why in c.disagreements[:examples]:
        where = f"event {t.event}, tau index {t.index}" if t is not None else ""
        print(f"  - {where}: {why}")
        if t is not None:
            extra = f"photons among products {t.n_photons_all}, direct photons {t.n_photons_direct}"
            if row is not None:
                extra += f"; taufm n_photons {int(row['n_photons'])}"
            print(f"    ({extra}); record (GenRecord index, PDG, name, Pythia status, mothers, daughters, p):")
            print("\n".join("      " + line for line in t.listing.splitlines()))


# --------------------------------------------------------------------------------------------
# Part 2: lepton cleaning.


def yields(shard: Path) -> dict:
    import pyarrow.parquet as pq

    t = pq.read_table(shard, columns=["event", "jet_index", "label", "decay_mode", "jet_pt"]).to_pydict()
    ev, ji, lab, dm, pt = (np.asarray(t[k]) for k in ("event", "jet_index", "label", "decay_mode", "jet_pt"))
    tau = lab == 1
    return {
        "keys": {cut: {(int(e), int(j), int(d)) for e, j, d in zip(ev[tau & m], ji[tau & m], dm[tau & m])} for cut, m in (("all", np.ones_like(tau)), ("pt20", pt > 20.0))},
        "jets": {"all": len(lab), "pt20": int((pt > 20.0).sum())},
    }


def per_dm(keys: set) -> np.ndarray:
    c = np.zeros(6, dtype=np.int64)
    for _, _, d in keys:
        c[d] += 1
    return c


def change(new: set, old: set, dm: int | None) -> str:
    """Relative change of the tau-jet count new vs old, with a Poisson error on the jets that
    change between the two (the rest is common to both, so it does not fluctuate)."""
    if dm is not None:
        new = {k for k in new if k[2] == dm}
        old = {k for k in old if k[2] == dm}
    n_old = len(old)
    gained, lost = len(new - old), len(old - new)
    if n_old == 0:
        return "n/a"
    r = 100.0 * (len(new) - n_old) / n_old
    if gained + lost == 0:
        return f"{r:+.2f} (<{100.0 * 1.14 / n_old:.2f} at 68% CL; +0 -0)"
    return f"{r:+.2f} ± {100.0 * math.sqrt(gained + lost) / n_old:.2f} (+{gained} -{lost})"


def part2(samples: list[tuple[str, int, float]], seed: int, workdir: Path) -> dict:
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file
    from taufm.sim.ee import simulate_ee_shard

    results = {}
    for sample, n_events, sqrt_s in samples:
        root = workdir / f"{sample}_000.root"
        simulate_ee_shard(sample, 0, n_events, root, seed=seed, sqrt_s=sqrt_s)
        results[sample] = {"root": root}
        for mode in CLEANING_MODES:
            shard = workdir / f"{sample}_{mode}.parquet"
            manifest = ingest_ee_file(root, shard, sample=sample, settings=EEIngestSettings(lepton_cleaning=mode))
            removed = next(r for r in manifest["cutflow"] if r["objects"] == "reco jets" and r["cut"].startswith("lepton cleaning"))
            results[sample][mode] = {**yields(shard), "cleaned": removed["in"] - removed["out"]}
    return results


def print_part2(results: dict) -> None:
    for sample, res in results.items():
        print(f"\n## Part 2: {sample}: tau jets (label 1) per decay mode for each lepton cleaning")
        for cut, title in (("all", "all written reco jets (pT >= 5 GeV)"), ("pt20", "reco jet pT > 20 GeV")):
            print(f"{title}:")
            print(f"  {'lepton_cleaning':<27} {'reco jets':>9} {'cleaned':>7} " + " ".join(f"{n:>6}" for n in DM_NAMES) + f" {'total':>6}")
            for mode in CLEANING_MODES:
                c = per_dm(res[mode]["keys"][cut])
                cleaned = str(res[mode]["cleaned"]) if cut == "all" else "-"
                print(f"  {mode:<27} {res[mode]['jets'][cut]:>9} {cleaned:>7} " + " ".join(f"{v:6d}" for v in c) + f" {c.sum():6d}")
            new, old = res[NEW_DEFAULT]["keys"][cut], res[FORMER_DEFAULT]["keys"][cut]
            print(f"  change {NEW_DEFAULT} vs {FORMER_DEFAULT}, % (Poisson error on the jets that change; +gained -lost):")
            for d in range(6):
                print(f"    {DM_NAMES[d]:<6} {change(new, old, d)}")
            print(f"    {'total':<6} {change(new, old, None)}")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--z-events", type=int, default=2000, help="Z/gamma* -> tau tau events")
    parser.add_argument("--zh-events", type=int, default=1000, help="ZH, H -> tau tau events (0: skip)")
    parser.add_argument("--z-sqrt-s", type=float, default=380.0, help="sqrt(s) of the Z -> tau tau sample in GeV (e.g. 91.2); ZH stays at 380")
    parser.add_argument("--seed", type=int, default=1, help="base seed (shard 0 of simulate_ee_shard with this seed)")
    parser.add_argument("--check-events", type=int, default=200, help="events compared with generate_record for the same seed")
    parser.add_argument("--examples", type=int, default=3, help="disagreeing taus printed with their record")
    parser.add_argument("--no-part2", action="store_true", help="skip the lepton-cleaning part")
    args = parser.parse_args()

    started = time.perf_counter()
    samples = [("Z_Ztautau", args.z_events, args.z_sqrt_s)] + ([("ZH_Htautau", args.zh_events, 380.0)] if args.zh_events > 0 else [])
    print("# taufm generator-level tau labels vs an oracle from Pythia's event record (pythia8mc), and lepton cleaning")

    with tempfile.TemporaryDirectory(prefix="taufm-labels-") as tmp:
        workdir = Path(tmp)
        results = None if args.no_part2 else part2(samples, args.seed, workdir)
        for sample, n_events, sqrt_s in samples:
            t0 = time.perf_counter()
            settings, pythia_seed, record, oracle = generate_with_oracle(sample, sqrt_s, n_events, args.seed)
            same = check_same_as_generate_record(settings, pythia_seed, record, min(args.check_events, n_events))
            print(f"\n# ===== Part 1: {sample}, sqrt(s) = {sqrt_s:g} GeV, {n_events} events, Pythia seed {pythia_seed} ({time.perf_counter() - t0:.1f} s)")
            n_check = min(args.check_events, n_events)
            print(f"per-event record == generate_record for the same seed (first {n_check} events): {same}" if n_check > 0 else "per-event record vs generate_record: check skipped (--check-events 0)")
            if not same:
                print("WARNING: the per-event records differ from generate_record's: the comparison below may not reflect production")
            copies = [t.n_copies for t in oracle]
            n_with = sum(c > 1 for c in copies)
            print(f"oracle taus with copies in the record (tau -> tau gamma, recoil): {n_with} of {len(oracle)} ({100.0 * n_with / max(len(oracle), 1):.1f}%), up to {max(copies, default=0)} entries per tau")
            print(f"oracle hadronic taus whose products hold photons not directly from the tau (e.g. omega -> pi0 gamma): {sum(t.hadronic and t.n_photons_all > t.n_photons_direct for t in oracle)}")

            c = compare(oracle, taufm_table(record.particles, record.daughters))
            print_comparison(f"{sample}: taufm on the generator record (statuses as taufm writes them)", c, args.examples)

            status = record.particles.generatorStatus
            modified = ak.with_field(record.particles, ak.where(status == 1, status, 2 * ak.ones_like(status)), "generatorStatus")
            apdg = abs(modified.PDG)
            naive = int(ak.sum((apdg == 15) & (modified.generatorStatus == 2)))
            naive_orig = int(ak.sum((apdg == 15) & (status == 2)))
            print(f"\nstatus-based selection |PDG| 15 & generatorStatus 2: {naive_orig} taus on taufm's record, {naive} with all non-final statuses 2 (oracle: {len(oracle)})")
            c2 = compare(oracle, taufm_table(modified, record.daughters))
            print_comparison(f"{sample}: every non-final particle generatorStatus 2", c2, args.examples, confusion=False)

            if results is not None and n_events == len(record):
                from taufm.ingest.edm4hep import iterate_events

                gens, dts = [], []
                for _, chunk in iterate_events(results[sample]["root"], chunk_size=n_events):
                    gens.append(chunk.gen)
                    dts.append(chunk.gen_daughters)
                gen, dau = ak.concatenate(gens), ak.concatenate(dts)
                same_pdg = len(gen) == len(record) and ak.all(ak.num(gen) == ak.num(record.particles)) and ak.all(ak.flatten(gen.PDG) == ak.flatten(record.particles.PDG))
                print(f"\nsimulated shard holds the same events (PDG lists identical): {bool(same_pdg)}")
                if same_pdg:
                    c3 = compare(oracle, taufm_table(gen, dau))
                    print_comparison(f"{sample}: taufm on the record read back from the EDM4hep shard (as ingested)", c3, args.examples, confusion=False)
        if results is not None:
            print_part2(results)

    print(f"\n# total {time.perf_counter() - started:.0f} s")
    flags = f"--z-events {args.z_events} --zh-events {args.zh_events} --z-sqrt-s {args.z_sqrt_s:g} --seed {args.seed} --check-events {args.check_events} --examples {args.examples}"
    print("reproduce: python benchmarks/label_agreement.py " + flags + (" --no-part2" if args.no_part2 else ""))


if __name__ == "__main__":
    main()
