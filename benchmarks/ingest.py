"""Benchmark e+e- ingestion: events/s on one core and peak memory for 1, 4 and 16 input files.

One simulated Z -> tau tau shard is generated once (cached), copied to 16 file names, and
ingested file after file in a fresh process per file count, as one Snakemake job per file would
do back to back. Peak memory must not grow with the number of files.

    python benchmarks/ingest.py                       # 4000-event files
    python benchmarks/ingest.py --events 20000 --chunk-size 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE_COUNTS = (1, 4, 16)


def run(files: list[Path], outdir: Path, chunk_size: int) -> dict:
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file

    settings = EEIngestSettings(chunk_size=chunk_size)
    events = 0
    start = time.perf_counter()
    for i, path in enumerate(files):
        events += ingest_ee_file(path, outdir / f"shard_{i:03d}.parquet", sample="Z_Ztautau", settings=settings)["events"]
    seconds = time.perf_counter() - start
    return {"files": len(files), "events": events, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per input file")
    parser.add_argument("--chunk-size", type=int, default=20000, help="events read at a time")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "taufm-bench-ingest"), help="where the input shard is kept")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        outdir = Path(tempfile.mkdtemp())
        try:
            print(json.dumps(run([Path(p) for p in args.child], outdir, args.chunk_size)))
        finally:
            shutil.rmtree(outdir, ignore_errors=True)
        return

    cache = Path(args.cache)
    source = cache / f"Z_Ztautau_{args.events}.root"
    if not source.exists():
        from taufm.sim.ee import simulate_ee_shard

        print(f"# generating {args.events} Z -> tau tau events once into {source} ...", flush=True)
        simulate_ee_shard("Z_Ztautau", 0, args.events, source, seed=1)
    copies = []
    for i in range(max(FILE_COUNTS)):
        copy = cache / "copies" / f"Z_Ztautau_{i:03d}.root"
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists() or copy.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, copy)
        copies.append(copy)

    print(f"# taufm ingest benchmark: Z -> tau tau files of {args.events} events, chunk size {args.chunk_size}, one core")
    print(f"{'files':>5} {'events':>8} {'seconds':>8} {'events/s':>9} {'peak MiB':>9}")
    for n in FILE_COUNTS:
        cmd = [sys.executable, __file__, "--chunk-size", str(args.chunk_size), "--child", *map(str, copies[:n])]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{result['files']:>5} {result['events']:>8} {result['seconds']:>8.2f} {result['events'] / result['seconds']:>9.0f} {result['peak_rss_mib']:>9.0f}")
    print("# reproduce: python benchmarks/ingest.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
