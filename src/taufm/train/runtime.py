"""Device, precision, seeds, checkpoints and history for every training stage.

Checkpoints are plain ``torch.save`` dictionaries of tensors, numbers, strings and lists, loaded
back with ``weights_only=True`` (no pickled code runs on load), written atomically. A checkpoint
carries the model and optimiser states, the epoch, the RNG states, the weights of the best epoch
so far and the run's identity (settings, input contents, code), so a run restarted with the same
command on the same inputs continues exactly where it stopped, and one on anything else starts
afresh.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import math
import random
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from taufm.config import config_hash
from taufm.errors import TaufmError
from taufm.io import atomic_output

log = logging.getLogger(__name__)


def select_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; or an explicit ``cpu`` / ``cuda`` / ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise TaufmError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TaufmError(f"device {spec!r} requested but CUDA is not available here")
    return device


def autocast(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (same code path, same outputs format)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, as weights_only-loadable objects."""
    numpy_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_has_gauss": int(numpy_state[3]),
        "numpy_cached_gauss": float(numpy_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def files_sha256(paths: Sequence[str | Path]) -> str:
    """SHA-256 of the contents of ``paths``, in their order (the names do not enter)."""
    digest = hashlib.sha256()
    for path in paths:
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def run_identity(stage: str, settings: Mapping, inputs: Sequence[str | Path]) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the settings, the inputs' contents and the
    source hash of the stage's code (:data:`taufm.provenance.STAGE_SOURCES`)."""
    from taufm.provenance import stage_source_hash

    return {"settings_hash": config_hash(settings), "inputs_hash": files_sha256(inputs), "code_hash": stage_source_hash(stage)}


_IDENTITY_PARTS = {"settings_hash": "other settings", "inputs_hash": "other input shards", "code_hash": "other taufm code"}


def adamw(modules: Sequence[torch.nn.Module], learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices of linear layers only: biases, norms,
    embeddings, codebooks and learned tokens are not pulled towards zero."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for owner in module.modules():
            for name, parameter in owner.named_parameters(recurse=False):
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                (decay if isinstance(owner, torch.nn.Linear) and name == "weight" else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def resumable_state(path: Path, identity: Mapping[str, str]) -> dict | None:
    """The last checkpoint of this very run (same settings, inputs and code), or None: none
    yet, or one of another run, which is then not resumed (a log line says why)."""
    if not path.exists():
        return None
    state = load_checkpoint(path)
    differs = [why for key, why in _IDENTITY_PARTS.items() if state["config"].get(key) != identity.get(key)]
    if differs:
        log.warning("%s was written with %s: starting afresh", path, " and ".join(differs))
        return None
    return state


def cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (one that later training steps do not change)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def save_checkpoint(path: str | Path, payload: Mapping) -> None:
    """``torch.save`` of ``payload`` to ``path``, atomically (never a half-written checkpoint)."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | Path, expect: Mapping | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True``; check ``expect`` items against its config.

    A missing or unreadable file, or a configuration that differs in an expected item (say the
    codebook size), is a :class:`TaufmError` naming the file and the item.
    """
    path = Path(path)
    if not path.exists():
        raise TaufmError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TaufmError(f"{path}: not a readable taufm checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "config" not in payload:
        raise TaufmError(f"{path}: not a taufm checkpoint (no config)")
    for key, value in (expect or {}).items():
        found = payload["config"].get(key, "<absent>")
        if found != value:
            raise TaufmError(f"{path}: checkpoint has {key} = {found!r}, this run needs {value!r}")
    return payload


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a clear error naming the file and the mismatches."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TaufmError(f"{path}: weights do not fit the model: {err}") from err


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``n_parameters`` (all, shared ones once) and ``n_trainable_parameters`` (requires_grad now)."""
    parameters = list(model.parameters())
    return {"n_parameters": sum(p.numel() for p in parameters), "n_trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad)}


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled-dot-product attention: the two batched products, logits and weighted sum
    (the formula torch registers for its GPU kernels; masking and causality are not discounted)."""
    batch, heads, n_queries, query_dim = query_shape
    n_keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * n_queries * n_keys * (query_dim + value_dim)


# Kernels FlopCounterMode has no formula for; without these, attention on CPU would count zero.
_EXTRA_FLOP_FORMULAS = {
    getattr(torch.ops.aten, name): _attention_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if hasattr(torch.ops.aten, name)
}


def forward_flops_per_jet(model: torch.nn.Module, *example_inputs: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``model`` per jet, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on ``example_inputs`` (a batch of real inputs;
    their first dimension is the batch), in eval mode.

    What is counted are the matrix products, convolutions and attention kernels (a multiply-add is
    2 FLOPs); elementwise operations, norms and indexing are not. Attention is counted over the
    padded length. The model's train/eval modes, module by module, are restored afterwards.
    """
    if not example_inputs or example_inputs[0].ndim == 0 or example_inputs[0].shape[0] < 1:
        shape = tuple(example_inputs[0].shape) if example_inputs else None
        raise TaufmError(f"forward_flops_per_jet needs a non-empty batch of example inputs, got shape {shape}")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        # Not under no_grad: there FlopCounterMode's module tracker fails on a view of a parameter
        # passed into a submodule (the head's class token). No backward pass runs, so only the
        # forward is counted.
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(*example_inputs)
    finally:
        for module, training in modes.items():
            module.training = training
    return counter.get_total_flops() / example_inputs[0].shape[0]


class ComputeMeter:
    """What a training run costs: device-seconds, jets per second and peak memory.

    Start it where the training loop starts; :meth:`add_jets` after each step (the jets of the
    step, on this process); :meth:`summary` at the end. ``devices`` is how many devices run the
    job together (the data-parallel world size): device-seconds are wall seconds times that.
    Peak memory is the CUDA allocator's peak on a GPU, else the process's peak resident memory
    (which also holds the data the job loaded).
    """

    def __init__(self, device: torch.device | str, devices: int = 1) -> None:
        self.device = torch.device(device)
        self.devices = devices
        self.jets = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.perf_counter()

    def add_jets(self, n: int) -> None:
        self.jets += int(n)

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.started
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_allocated"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            peak, kind = rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu_max_rss"
        return {
            "device_seconds": seconds * self.devices,
            "wall_seconds": seconds,
            "jets_trained": self.jets * self.devices,
            "jets_per_second": self.jets * self.devices / seconds if seconds > 0 else math.nan,
            "peak_memory_mb": peak,
            "peak_memory_kind": kind,
        }


class History:
    """Per-epoch training history in a CSV file, rewritten atomically after every epoch."""

    def __init__(self, path: str | Path, rows: Sequence[Mapping] = ()) -> None:
        self.path = Path(path)
        self.rows = [dict(r) for r in rows]

    def append(self, row: Mapping) -> None:
        self.rows.append(dict(row))
        self.write()

    def write(self) -> None:
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        with atomic_output(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
