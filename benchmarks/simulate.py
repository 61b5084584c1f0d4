"""Benchmark the embedded event generation: events/s, jets/s and peak memory per sample.

Each sample runs in a fresh process (one core, as a Snakemake job does), so peak memory is that
sample's alone. Prints a table and the command that reproduces it.

    python benchmarks/simulate.py                    # default sizes
    python benchmarks/simulate.py --events 500 --jets 200 --samples qq TTBar
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EE_SAMPLES = ("ZH_Htautau", "Z_Ztautau", "qq")
JETCLASS_PROCESSES = ("ZJetsToNuNu", "TTBar")


def run_one(sample: str, events: int, jets: int, workdir: Path, mpi: bool) -> dict:
    """Generate one shard in this process and report its speed and peak memory."""
    start = time.perf_counter()
    if sample in EE_SAMPLES:
        from taufm.sim.ee import simulate_ee_shard

        summary = simulate_ee_shard(sample, 0, events, workdir / f"{sample}_000.root", seed=1)
        n_events = summary["events"]
        n_jets = None
    else:
        from taufm.sim.jetclass import simulate_jetclass_shard

        summary = simulate_jetclass_shard(sample, 0, jets, workdir / f"{sample}_000.root", seed=1, multiparton_interactions=mpi)
        n_events = summary["events"]
        n_jets = summary["jets_written"]
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    size = (workdir / f"{sample}_000.root").stat().st_size
    return {
        "sample": sample,
        "events": n_events,
        "jets": n_jets,
        "seconds": seconds,
        "events_per_s": n_events / seconds,
        "jets_per_s": None if n_jets is None else n_jets / seconds,
        "peak_rss_mib": peak_mib,
        "file_kib_per_unit": size / 1024.0 / (n_jets if n_jets is not None else n_events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per e+e- sample")
    parser.add_argument("--jets", type=int, default=1000, help="jets per JetClass-like process")
    parser.add_argument("--samples", nargs="+", default=[*EE_SAMPLES, *JETCLASS_PROCESSES])
    parser.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=False, help="multi-parton interactions in pp (default config: off)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process
        print(json.dumps(run_one(args.one, args.events, args.jets, Path(args.workdir), args.mpi)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for sample in args.samples:
            cmd = [sys.executable, __file__, "--one", sample, "--events", str(args.events), "--jets", str(args.jets), "--workdir", workdir, "--mpi" if args.mpi else "--no-mpi"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))

    print(f"# taufm simulate benchmark on {platform.machine()} {platform.processor() or ''}, one core per sample, pp MPI {'on' if args.mpi else 'off'}")
    print(f"{'sample':<12} {'events':>7} {'jets':>6} {'seconds':>8} {'events/s':>9} {'jets/s':>7} {'peak MiB':>9} {'KiB/ev|jet':>10}")
    for r in rows:
        jets = "-" if r["jets"] is None else str(r["jets"])
        jets_s = "-" if r["jets_per_s"] is None else f"{r['jets_per_s']:.1f}"
        print(
            f"{r['sample']:<12} {r['events']:>7} {jets:>6} {r['seconds']:>8.1f} {r['events_per_s']:>9.1f} {jets_s:>7} "
            f"{r['peak_rss_mib']:>9.0f} {r['file_kib_per_unit']:>10.1f}"
        )
    print("# reproduce: python benchmarks/simulate.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
