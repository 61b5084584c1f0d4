"""Benchmark a pretraining step at the paper's backbone dimensions: tokens/s, achieved FLOP/s,
and that as a fraction of the machine's measured matmul FLOP/s (our efficiency figure).

The backbone is OmniJet-alpha's as the paper trains it: 3 GPT blocks, dimension 256, sequences
of 128 tokens, a 32000-code vocabulary (+ start and stop). FLOPs are counted for the matrix
multiplications only: per token, 2 x (weights of every Linear layer, the next-token head
included) + 4 x sequence length x dimension per block for attention (scores and weighted sum,
counted without the causal halving), times 3 for forward + backward. The reference matmul rate is
measured in the same process with square matrices of the same precision.

    python benchmarks/train_throughput.py                       # CPU; CUDA too when present
    python benchmarks/train_throughput.py --batch-size 32 --steps 5 --devices cpu
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from taufm.models.gpt import GPTBackbone, GPTConfig, NextTokenHead, next_token_loss_from_embeddings
from taufm.train.runtime import autocast

PAPER = {"vocab_size": 32002, "max_length": 128, "dim": 256, "n_heads": 8, "n_blocks": 3, "ffn_multiplier": 4}


def step_flops(config: GPTConfig, tokens: int) -> float:
    linear_weights = config.n_blocks * (3 * config.dim**2 + config.dim**2 + 2 * config.ffn_multiplier * config.dim**2) + config.dim * config.vocab_size
    per_token_forward = 2 * linear_weights + config.n_blocks * 4 * config.max_length * config.dim
    return 3.0 * per_token_forward * tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
        _sync(device)
    return 2.0 * size**3 * n / (time.perf_counter() - start)


def train_step_rate(device: torch.device, batch_size: int, steps: int, use_autocast: bool, compile_model: bool) -> tuple[float, float]:
    """(seconds per step, tokens per second) of full training steps on random full sequences."""
    config = GPTConfig(**PAPER)
    backbone, head = GPTBackbone(config).to(device), NextTokenHead(config).to(device)
    model = torch.compile(backbone) if compile_model else backbone
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-4)
    tokens = torch.randint(1, config.vocab_size, (batch_size, config.max_length), device=device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    context = autocast(device) if use_autocast else torch.autocast(device.type, enabled=False)

    def step() -> None:
        with context:
            loss_sum, count = next_token_loss_from_embeddings(head, model(tokens, mask), tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / count).backward()
        optimizer.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return seconds, batch_size * config.max_length / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cpu and/or cuda (skipped when absent)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 256 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    args = parser.parse_args()

    config = GPTConfig(**PAPER)
    print(f"# taufm training throughput: GPT {config.n_blocks} blocks, dim {config.dim}, seq {config.max_length}, vocab {config.vocab_size}")
    print(f"# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':<28} {'precision':<9} {'batch':>5} {'s/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'matmul TFLOP/s':>15} {'efficiency':>10}")
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("# cuda: not available here, skipped")
            continue
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
        batch = args.batch_size or (256 if device.type == "cuda" else 16)
        steps = args.steps or (20 if device.type == "cuda" else 3)
        precisions = [("fp32", False, torch.float32)] + ([("bf16", True, torch.bfloat16)] if device.type == "cuda" else [])
        for precision, use_autocast, dtype in precisions:
            seconds, tokens_per_s = train_step_rate(device, batch, steps, use_autocast, args.compile)
            achieved = step_flops(config, batch * config.max_length) / seconds
            peak = matmul_flops(device, dtype)
            print(f"{label[:28]:<28} {precision:<9} {batch:>5} {seconds:>8.3f} {tokens_per_s:>10.0f} {achieved / 1e12:>8.3f} {peak / 1e12:>15.3f} {achieved / peak:>10.1%}")
    print("# reproduce: python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
