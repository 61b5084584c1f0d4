"""Benchmark reading over XRootD: streaming rate over loopback against the local file, and memory.

One simulated ZH -> tau tau file (several chunks long; cached) is served by an ``xrootd`` started
here on a loopback port (tests/xrootd_server.py). Each measurement runs in a fresh process, on
the local path and on the root:// URL of the same file:

- *bytes*: the whole file read as bytes in 4 MiB blocks (the transfer alone), best of 3;
- *read*: the branches ingestion reads, chunk by chunk, with nothing done to them: MB/s of bytes
  fetched from the file (uproot's count; decompression included) and events/s, best of 3;
- *ingest*: ``ingest_ee_file`` as a job runs it: events/s and the process's peak RSS (the file
  holds many chunks, so a flat peak means memory does not grow with the file).

Loopback has no network latency: the remote figures are the cost of the XRootD protocol and
client, an upper bound of what a real server gives.

    python benchmarks/xrootd_ingest.py                         # 2000 events, chunks of 200
    python benchmarks/xrootd_ingest.py --events 5000 --chunk-size 500

Needs ``apt-get install xrootd-server`` and ``pip install -e ".[remote]"``.
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

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "ZH_Htautau"
READ_REPEATS = 3


def measure(mode: str, source: str, chunk_size: int) -> dict:
    """One measurement in this process (a child): ``read`` or ``ingest`` of ``source``."""
    from taufm import remote
    from taufm.ingest.edm4hep import open_events_tree, resolve_layout, collection_types
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file

    start = time.perf_counter()
    if mode == "bytes":
        import fsspec

        timings = []
        for _ in range(READ_REPEATS):
            start = time.perf_counter()
            with fsspec.open(source, "rb") as f:  # fsspec-xrootd for a URL, the local file otherwise
                fetched = sum(len(block) for block in iter(lambda: f.read(1 << 22), b""))
            timings.append(time.perf_counter() - start)
        result = {"events": 0, "bytes": fetched, "seconds": min(timings)}
    elif mode == "read":
        timings = []
        for _ in range(READ_REPEATS):  # the best of a few: the figure least disturbed by other load
            start = time.perf_counter()
            file, tree = open_events_tree(source)
            with file:
                layout = resolve_layout(tree, source, None, collection_types(file, source))
                wanted = set(layout.leaves())
                events = sum(len(a) for a in tree.iterate(filter_name=lambda n: n in wanted, step_size=chunk_size, library="ak"))
                fetched = file.file.source.num_requested_bytes
            timings.append(time.perf_counter() - start)
        result = {"events": events, "bytes": fetched, "seconds": min(timings)}
    else:
        with tempfile.TemporaryDirectory() as out:
            manifest = ingest_ee_file(remote.as_source(source), Path(out) / "shard.parquet", sample=SAMPLE, settings=EEIngestSettings(chunk_size=chunk_size))
        result = {"events": manifest["events"], "jets": manifest["jets"], "seconds": time.perf_counter() - start}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def child(mode: str, source: str, chunk_size: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, source, "--chunk-size", str(chunk_size)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} of {source} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events in the served file")
    parser.add_argument("--chunk-size", type=int, default=200, help="events read at a time")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "taufm-bench-xrootd"), help="where the simulated file is kept")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.chunk_size)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.xrootd_server import XRootDServer, exported_directory, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise SystemExit(reason)
    cache = Path(args.cache)
    local = cache / f"{SAMPLE}_{args.events}.root"
    if not local.exists():
        from taufm.sim.ee import simulate_ee_shard

        print(f"# simulating {args.events} {SAMPLE} events once into {local} ...", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        simulate_ee_shard(SAMPLE, 0, args.events, local, seed=1, batch_size=args.chunk_size)
    export = exported_directory()
    try:
        with XRootDServer(export, name="taufm-bench") as server:
            server.publish(local)
            url = server.url(local.name)
            size_mb = local.stat().st_size / 1e6
            print(f"file {local.name}: {args.events} events, {size_mb:.1f} MB, chunks of {args.chunk_size} events; server {server.server} (loopback)")
            rows = []
            for mode in ("bytes", "read", "ingest"):
                for where, source in (("local", str(local)), ("root://", url)):
                    rows.append((mode, where, args.chunk_size, child(mode, source, args.chunk_size)))
            # For comparison: the whole file as one chunk (what memory would be without chunking).
            rows.append(("ingest", "root://", args.events, child("ingest", url, args.events)))
    finally:
        shutil.rmtree(export, ignore_errors=True)

    print(f"{'step':7} {'input':8} {'chunk':>6} {'seconds':>8} {'MB/s':>8} {'events/s':>9} {'peak RSS MiB':>13}")
    for mode, where, chunk, r in rows:
        rate = f"{r['bytes'] / 1e6 / r['seconds']:8.1f}" if "bytes" in r else f"{'':8}"
        events = f"{r['events'] / r['seconds']:9.0f}" if r["events"] else f"{'':9}"
        chunk_text = "-" if mode == "bytes" else str(chunk)
        print(f"{mode:7} {where:8} {chunk_text:>6} {r['seconds']:8.2f} {rate} {events} {r['peak_rss_mib']:13.0f}")
    read = {where: r for mode, where, _, r in rows if mode == "read"}
    print(f"# read: {read['root://']['bytes'] / 1e6:.1f} MB of branches fetched; streaming/local rate {read['local']['seconds'] / read['root://']['seconds']:.2f}")
    print(f"# reproduce: python benchmarks/xrootd_ingest.py --events {args.events} --chunk-size {args.chunk_size}")


if __name__ == "__main__":
    main()
