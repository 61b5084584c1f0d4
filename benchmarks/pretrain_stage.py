"""Benchmark the whole pretraining stage (`taufm pretrain`): shard reading, batching, training
steps, validation and checkpoints, on synthetic token shards at the paper's scale.

`benchmarks/train_throughput.py` times bare training steps; this times the stage as a job runs
it, so the gap between the two is the cost of the data pipeline, validation and checkpointing.
It prints jets/s and real (unpadded) tokens/s of the training, the device the stage used as its
provenance record names it, and the peak GPU memory.

    python benchmarks/pretrain_stage.py                               # paper dims, 20k jets, 1 epoch
    python benchmarks/pretrain_stage.py --jets 4000 --dim 128 --vocab 512 --max-length 66   # CPU-sized
    python benchmarks/pretrain_stage.py --backbone all --jets 4000 --dim 128 --vocab 512 --max-length 66

``--backbone`` picks the backbone of ``pretrain.backbones`` to time (``all``: each in turn, on
the same shard): ``tokens-ntp`` (the paper's), ``continuous-ntp`` or ``continuous-mpm``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taufm.cli import main as taufm_main
from taufm.ingest.shards import write_shard
from taufm.provenance import record_path
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, TOKEN_FEATURE_NAMES

BACKBONES = {
    "tokens-ntp": {"inputs": "tokens", "objective": "ntp"},
    "continuous-ntp": {"inputs": "continuous", "objective": "ntp"},
    "continuous-mpm": {"inputs": "continuous", "objective": "mpm", "mask_fraction": 0.4, "target": "tokens"},
}


def write_synthetic_tokens(path: Path, n_jets: int, max_length: int, vocab: int, seed: int) -> int:
    """Random code sequences with JetClass-like lengths (start, codes, stop); returns real tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(0.55 * max_length, 0.2 * max_length, n_jets).astype(int), 4, max_length - 2)
    tokens = np.zeros((n_jets, max_length), dtype=np.int32)
    positions = np.arange(max_length)[None, :]
    codes = rng.integers(1, vocab + 1, (n_jets, max_length), dtype=np.int32)
    inside = (positions >= 1) & (positions <= lengths[:, None])
    tokens[inside] = codes[inside]
    tokens[np.arange(n_jets), lengths + 1] = vocab + 1
    mask = positions < (lengths + 2)[:, None]
    split = np.resize(np.array([0] * 8 + [1, 2], dtype=np.int8), n_jets)
    features = np.zeros((n_jets, max_length, len(TOKEN_FEATURE_NAMES)), dtype=np.float32)
    features[inside, :N_CANDIDATE_CHANNELS] = rng.normal(size=(int(inside.sum()), N_CANDIDATE_CHANNELS))
    manifest = {"token_ids": {"start": 0, "codes": [1, vocab], "stop": vocab + 1, "padding": 0, "vocabulary_size": vocab + 2}, "tokenizer": {"sha256": "synthetic"}}
    write_shard(path, {"split": split, "tokens": tokens, "token_mask": mask, "token_features": features.reshape(n_jets, -1)}, manifest)
    return int(mask[split == 0].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=20000)
    parser.add_argument("--vocab", type=int, default=32000, help="codebook size (paper: 32000)")
    parser.add_argument("--max-length", type=int, default=130, help="tokens per jet incl. start/stop (paper: 128 candidates)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--backbone", choices=[*BACKBONES, "all"], default="tokens-ntp")
    args = parser.parse_args()
    for name in BACKBONES if args.backbone == "all" else [args.backbone]:
        time_backbone(args, name)


def time_backbone(args: argparse.Namespace, name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="taufm-pretrain-bench-") as tmp:
        tmp = Path(tmp)
        train_tokens = write_synthetic_tokens(tmp / "tokens_000.parquet", args.jets, args.max_length, args.vocab, seed=0)
        settings = {
            "model": {"dim": args.dim, "n_heads": 8, "n_blocks": args.blocks, "ffn_multiplier": 4},
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "warmup_steps": 10,
            "checkpoint_every": 10**9,
            "device": args.device,
            "compile": args.compile,
            "backbone": {"name": name, **BACKBONES[name]},
        }
        if BACKBONES[name]["objective"] == "mpm":
            settings["model"]["positional"] = "learned"  # as config/config.yaml's continuous-mpm
        command = ["pretrain", "--settings", json.dumps(settings), "--output-dir", str(tmp / "out"), str(tmp / "tokens_000.parquet")]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if taufm_main(command) != 0:
            sys.exit("taufm pretrain failed")
        seconds = time.perf_counter() - start
        record = json.loads(record_path(tmp / "out", is_directory=True).read_text())
        history = (tmp / "out" / "history.csv").read_text().splitlines()

    train_jets = int(round(args.jets * 0.8)) * args.epochs
    print(f"# taufm pretrain stage, backbone {name}: GPT {args.blocks} blocks, dim {args.dim}, max length {args.max_length}, vocab {args.vocab + 2}, "
          f"batch {args.batch_size}, {args.jets} jets, {args.epochs} epoch(s), torch {torch.__version__}")
    print(f"device (provenance record): {record['device']}")
    print(f"wall time of the stage:     {seconds:.1f} s (incl. start-up, validation, checkpoints)")
    print(f"training jets/s:            {train_jets / seconds:,.0f}")
    print(f"real tokens/s:              {train_tokens * args.epochs / seconds:,.0f}")
    if torch.cuda.is_available():
        print(f"peak GPU memory:            {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"last epoch:                 {history[-1]}")
    print("# reproduce: python benchmarks/pretrain_stage.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
