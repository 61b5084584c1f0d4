"""Benchmark fine-tuning grid cells on synthetic token shards: the old way (the frozen backbone
run every epoch, every epoch validated on the whole validation set) against the new one (its
outputs cached once per cell, each epoch judged on a validation subset, the kept model once on the
whole set), and a pack of small cells in one process against the same cells one job each.

Two cells at the paper's training size (1e4 jets) and validation size (0.54 M jets, the smallest
of the paper's validation sets; --val-jets scales it down for a CPU): ``fixed`` (frozen
throughout) and ``finetune`` (frozen for the first --unfreeze-epoch epochs). For each it prints
the wall time of the cell (as `run_finetune` takes it: data, training, validation, predictions),
training jets/s, the achieved FLOP/s (the summary's train + validation FLOP estimates over its
wall seconds), the speed-up, and whether the kept epoch is the same (with both kept models' loss
on the whole validation set). Then --pack-cells ``fixed`` cells of --pack-jets jets (seeds 0, 1,
...) run as separate `taufm finetune` processes and as one `taufm finetune-pack` process, which
must write bitwise the same run directories. The model is the paper's unless flags say otherwise
(backbone 3 GPT blocks of dim 256; head dim 256, 2 + 2 blocks; batch 4096; 100 epochs, unfrozen
after 50). CUDA when present.

    python benchmarks/finetune_grid.py                                  # paper scale (a GPU)
    python benchmarks/finetune_grid.py --val-jets 540000 --val-subset 50000 --test-jets 1000 --epochs 10 \\
        --unfreeze-epoch 5 --batch-size 1024 --dim 16 --heads 2 --head-dim 16 --vocab 64 --max-length 10 \\
        --pack-cells 3 --pack-jets 500 --threads 2      # the paper's training and validation sizes, a small
                                                        # model: CPU, 12 minutes on 2 cores
    python benchmarks/finetune_grid.py --val-jets 54000 --val-subset 5000 --test-jets 1000 --epochs 10 \\
        --unfreeze-epoch 5 --batch-size 256 --dim 32 --heads 4 --head-dim 32 --vocab 64 --max-length 18 \\
        --pack-cells 3 --pack-jets 500 --threads 2                      # CPU, 10 minutes on 2 cores

It also prints, for the model it ran, the FLOP ratio old / new at the paper's sizes (1e4 training
jets, 5.4e5 validation jets, subset 5e4, 100 epochs, unfrozen after 50), from the FLOPs per jet
the cells counted: what to expect where a GPU runs the paper's scale.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taufm.finetune.train import FinetuneSettings, PassCounts, flop_estimates, run_finetune
from taufm.ingest.shards import write_shard
from taufm.models.gpt import GPTBackbone, GPTConfig, NextTokenHead
from taufm.pretrain.train import backbone_payload
from taufm.train.runtime import save_checkpoint, select_device

TASK = "pt_regression"  # trained on Z_Ztautau, tested on Z_Ztautau and ZH_Htautau


def write_sample(path: Path, sample: str, n_train: int, n_val: int, n_test: int, max_length: int, vocab: int, seed: int) -> None:
    """Tau jets whose visible-pT fraction is a function of their codes (learnable), as a token shard."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    n_cand = rng.integers(2, max_length - 1, n)
    positions = np.arange(max_length)[None, :]
    tokens = np.zeros((n, max_length), dtype=np.int32)
    inside = (positions >= 1) & (positions <= n_cand[:, None])
    codes = rng.integers(1, vocab + 1, (n, max_length), dtype=np.int32)
    tokens[inside] = codes[inside]
    tokens[np.arange(n), n_cand + 1] = vocab + 1
    low = np.where(inside, tokens <= vocab // 2, False).sum(1) / n_cand
    jet_pt = rng.uniform(20, 100, n).astype(np.float32)
    fraction = np.exp(0.3 * (low - 0.5) + rng.normal(0, 0.02, n))
    columns = {
        "sample": np.full(n, sample, dtype=object),
        "event": np.arange(n, dtype=np.int64),
        "jet_index": np.zeros(n, dtype=np.int16),
        "split": np.repeat(np.array([0, 1, 2], dtype=np.int8), [n_train, n_val, n_test]),
        "label": np.ones(n, dtype=np.int8),
        "decay_mode": rng.integers(0, 6, n).astype(np.int8),
        "jet_pt": jet_pt,
        "jet_eta": rng.normal(0, 1, n).astype(np.float32),
        "jet_phi": rng.uniform(-3, 3, n).astype(np.float32),
        "jet_energy": jet_pt * 1.2,
        "gen_tau_vis_pt": (jet_pt * fraction).astype(np.float32),
        "gen_tau_charge": np.full(n, -1.0, dtype=np.float32),
        "tokens": tokens,
        "token_mask": positions < (n_cand + 2)[:, None],
    }
    manifest = {"token_ids": {"start": 0, "codes": [1, vocab], "stop": vocab + 1, "padding": 0, "vocabulary_size": vocab + 2}, "tokenizer": {"sha256": "synthetic"}}
    write_shard(path, columns, manifest)


def write_backbone(path: Path, args: argparse.Namespace) -> None:
    """A randomly initialised backbone in the pretraining stage's checkpoint format."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab + 2, max_length=args.max_length, dim=args.dim, n_heads=args.heads, n_blocks=args.blocks)
    vocabulary = {"tokenizer_sha256": "synthetic", "token_ids": {"start": 0, "codes": [1, args.vocab], "stop": args.vocab + 1, "padding": 0, "vocabulary_size": args.vocab + 2}}
    save_checkpoint(path, backbone_payload(GPTBackbone(config), NextTokenHead(config), vocabulary, {}))


def settings(args: argparse.Namespace, new: bool) -> dict:
    head = {"dim": args.head_dim, "n_heads": args.heads, "n_particle_blocks": 2, "n_class_blocks": 2}
    return {
        "epochs": args.epochs,
        "unfreeze_epoch": args.unfreeze_epoch,
        "batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "head": head,
        "device": args.device,
        "cache_frozen_backbone": new,
        "cache_max_mb": args.cache_max_mb,
        "val_subset_jets": args.val_subset if new else None,
    }


def projected_flop_ratio(summary: dict, strategy: str, train: int, val: int, subset: int, epochs: int, unfreeze: int) -> float:
    """Old / new FLOPs of a cell at other sizes, from this model's measured FLOPs per jet."""
    frozen_epochs = epochs if strategy == "fixed" else min(unfreeze, epochs)
    trained = epochs - frozen_epochs
    old = PassCounts(trained=train * trained, trained_frozen=train * frozen_epochs, validated=val * epochs)
    new = PassCounts(
        trained=train * trained,
        trained_cached=train * frozen_epochs,
        cached=train if frozen_epochs else 0,
        validated_cached=subset * frozen_epochs,
        cached_val=subset if frozen_epochs else 0,
        validated=subset * trained + val,
    )
    flops = [sum(flop_estimates(c, summary["flops_per_jet"], summary["backbone_flops_per_jet"]).values()) for c in (old, new)]
    return flops[0] / flops[1]


def run_cell(strategy: str, shards: dict, out: Path, backbone: Path, args: argparse.Namespace, new: bool) -> tuple[float, dict]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    summary = run_finetune(TASK, strategy, args.train_jets, 0, shards, out, FinetuneSettings.from_mapping(settings(args, new)), backbone)
    return time.perf_counter() - start, summary


def taufm(*words: str) -> float:
    """One `taufm` process, as a Snakemake job runs it; its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "taufm.cli", *words], check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_run(a: Path, b: Path) -> bool:
    wa, wb = (torch.load(p / "model.pt", weights_only=True)["model"] for p in (a, b))
    weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return weights and all((a / n).read_bytes() == (b / n).read_bytes() for n in ("history.csv", "config.json", "predictions.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-jets", type=int, default=10000, help="training jets of the two big cells (paper: 1e4)")
    parser.add_argument("--val-jets", type=int, default=540000, help="validation jets (paper: 0.54-1.68 M)")
    parser.add_argument("--val-subset", type=int, default=50000, help="finetune.val_subset_jets of the new path")
    parser.add_argument("--test-jets", type=int, default=2000, help="test jets per sample")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--unfreeze-epoch", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000, help="codebook size (paper: 32000)")
    parser.add_argument("--max-length", type=int, default=130, help="tokens per jet incl. start/stop (paper: 128 candidates)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=256)
    parser.add_argument("--cache-max-mb", type=float, default=32768)
    parser.add_argument("--pack-cells", type=int, default=4, help="small fixed cells in the pack (seeds 0, 1, ...)")
    parser.add_argument("--pack-jets", type=int, default=1000, help="training jets of each packed cell")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)

    with tempfile.TemporaryDirectory(prefix="taufm-finetune-bench-") as tmp:
        tmp = Path(tmp)
        shards = {"Z_Ztautau": [tmp / "Z_Ztautau_000.parquet"], "ZH_Htautau": [tmp / "ZH_Htautau_000.parquet"]}
        write_sample(shards["Z_Ztautau"][0], "Z_Ztautau", max(args.train_jets, args.pack_jets), args.val_jets, args.test_jets, args.max_length, args.vocab, seed=1)
        write_sample(shards["ZH_Htautau"][0], "ZH_Htautau", 0, 0, args.test_jets, args.max_length, args.vocab, seed=2)
        backbone = tmp / "backbone_best.pt"
        write_backbone(backbone, args)

        print(f"# taufm fine-tuning cells ({TASK}): backbone {args.blocks} GPT blocks dim {args.dim}, head dim {args.head_dim}, "
              f"{args.max_length} tokens, batch {args.batch_size}, {args.epochs} epochs (finetune unfrozen after {args.unfreeze_epoch}), "
              f"{args.train_jets} training jets, {args.val_jets} validation jets (subset {args.val_subset}), {device}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        # Warm-up (first-call costs of torch and the FLOP counter), not timed.
        warm = argparse.Namespace(**{**vars(args), "train_jets": min(args.train_jets, 256), "epochs": 1})
        run_cell("fixed", shards, tmp / "warm-up", backbone, warm, True)
        for strategy in ("fixed", "finetune"):
            results = {}
            for new in (False, True):
                name = "new" if new else "old"
                results[name] = run_cell(strategy, shards, tmp / strategy / name, backbone, args, new)
                seconds, summary = results[name]
                flops = summary["train_flops_estimate"] + summary["validation_flops_estimate"]
                print(f"{strategy:8s} {name}: cell {seconds:8.1f} s  train+validation {summary['wall_seconds']:8.1f} s  "
                      f"{args.train_jets * args.epochs / seconds:9,.0f} training jets/s  {flops / summary['wall_seconds'] / 1e9:8.1f} GFLOP/s  "
                      f"{flops / 1e12:8.2f} TFLOP run  best epoch {summary['best_epoch']:3d}  whole-set val loss {summary['best_val_loss']:.6f}")
            (old_s, old), (new_s, new) = results["old"], results["new"]
            same = "unchanged" if old["best_epoch"] == new["best_epoch"] else f"CHANGED ({old['best_epoch']} -> {new['best_epoch']})"
            ratio = (old["train_flops_estimate"] + old["validation_flops_estimate"]) / (new["train_flops_estimate"] + new["validation_flops_estimate"])
            print(f"{strategy:8s} speed-up {old_s / new_s:5.1f}x (cell), {old['wall_seconds'] / new['wall_seconds']:5.1f}x (train+validation), {ratio:5.1f}x fewer FLOPs; "
                  f"kept epoch {same}; whole-set val loss of the kept model {old['best_val_loss']:.6f} -> {new['best_val_loss']:.6f}")
            paper = projected_flop_ratio(new, strategy, 10000, 540000, 50000, 100, 50)
            print(f"{strategy:8s} this model at the paper's sizes (1e4 training jets, 5.4e5 validation jets, subset 5e4, 100 epochs, unfrozen after 50): "
                  f"{paper:5.1f}x fewer FLOPs")

        # A pack of small cells in one process vs one process each.
        common = ["--task", TASK, "--backbone", str(backbone), "--settings", json.dumps(settings(args, True))]
        if args.threads:
            common += ["--threads", str(args.threads)]
        words = [f"{s}={p}" for s, files in shards.items() for p in files]
        alone = sum(taufm("finetune", *common, "--strategy", "fixed", "--size", str(args.pack_jets), "--seed", str(seed), "--output-dir", str(tmp / "alone" / str(seed)), *words) for seed in range(args.pack_cells))
        cells = [w for seed in range(args.pack_cells) for w in ("--cell", "fixed", str(args.pack_jets), str(seed), str(tmp / "pack" / str(seed)))]
        packed = taufm("finetune-pack", *common, "--output-dir", str(tmp / "pack" / "job"), *cells, *words)
        identical = all(same_run(tmp / "alone" / str(seed), tmp / "pack" / str(seed)) for seed in range(args.pack_cells))
        print(f"pack of {args.pack_cells} fixed cells of {args.pack_jets} jets: {alone:.1f} s as {args.pack_cells} processes, {packed:.1f} s as one "
              f"({alone / packed:.2f}x); run directories bitwise identical: {identical}")
    print("# reproduce: python benchmarks/finetune_grid.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
