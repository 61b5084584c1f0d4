"""Training the VQ-VAE tokenizer on JetClass(-like) training jets.

Deterministic for a seed on CPU: the order of batches comes from a generator seeded by (seed,
epoch) and every RNG state travels in the checkpoint, so a run killed after any epoch and
restarted with the same command ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from taufm.progress import Progress
from taufm.data import CANDIDATE_FEATURE_COLUMNS, candidate_arrays, read_shards
from taufm import paths
from taufm.config import reject_unknown_keys, settings_from_mapping
from taufm.errors import TaufmError
from taufm.ingest.shards import MASK_COLUMN
from taufm.io import atomic_output
from taufm.models.vqvae import VQVAE, VQVAEConfig, reconstruction_losses
from taufm.tokenizer.preprocessing import Preprocessing
from taufm.train.runtime import (
    ComputeMeter,
    History,
    adamw,
    autocast,
    cpu_copy,
    forward_flops_per_jet,
    load_checkpoint,
    load_state_strict,
    parameter_counts,
    resumable_state,
    rng_state,
    run_identity,
    save_checkpoint,
    seed_everything,
    select_device,
    set_rng_state,
    warmup_cosine,
)

log = logging.getLogger(__name__)

MODEL_FILE = paths.TOKENIZER_MODEL_FILE
LAST_CHECKPOINT = paths.LAST_CHECKPOINT_FILE
HISTORY_FILE = paths.TRAINING_HISTORY_FILE
SUMMARY_FILE = paths.TOKENIZER_SUMMARY_FILE
_MODEL_KEYS = {f.name for f in dataclasses.fields(VQVAEConfig)} - {"n_inputs", "n_continuous", "n_charge_classes", "n_pid_classes"}
_PREPROCESSING_KEYS = {f.name for f in dataclasses.fields(Preprocessing)}


@dataclass(frozen=True)
class TokenizerSettings:
    model: Mapping = field(default_factory=dict)
    preprocessing: Mapping = field(default_factory=dict)
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    max_candidates: int = 64  # candidates per jet seen in training (pT order)
    max_train_jets: int | None = 20_000
    max_val_jets: int | None = 4000
    seed: int = 1
    device: str = "auto"

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> TokenizerSettings:
        """From ``taufm train-tokenizer --settings``: checked against the schema, its defaults
        (the model's and the preprocessing's too) filled in."""
        settings = settings_from_mapping(cls, values, "tokenizer")
        for group, allowed in (("model", _MODEL_KEYS), ("preprocessing", _PREPROCESSING_KEYS)):
            reject_unknown_keys(getattr(settings, group), allowed, f"tokenizer.{group}")
        return settings

    def model_config(self, preprocessing: Preprocessing) -> VQVAEConfig:
        return VQVAEConfig(n_inputs=preprocessing.n_inputs, **self.model)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": dict(self.model), "preprocessing": dict(self.preprocessing)}


def load_jets(shards: Sequence[str | Path], split: str, max_candidates: int, max_jets: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate features and mask of one split, truncated to ``max_candidates``, optionally a
    seeded random subset of ``max_jets`` jets."""
    table = read_shards(shards, [*CANDIDATE_FEATURE_COLUMNS, MASK_COLUMN], split=split)
    features, mask = candidate_arrays(table)
    features, mask = features[:, :max_candidates], mask[:, :max_candidates]
    if max_jets is not None and len(features) > max_jets:
        keep = np.sort(np.random.default_rng(seed).permutation(len(features))[:max_jets])
        features, mask = features[keep], mask[keep]
    return features, mask


def batch_tensors(preprocessing: Preprocessing, features: np.ndarray, mask: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    arrays = preprocessing.model_inputs(features, mask)
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def mean_prediction_losses(train: dict[str, np.ndarray], val: dict[str, np.ndarray]) -> dict[str, float]:
    """Losses of the trivial tokenizer that predicts the training means and class frequencies."""
    tm, vm = train["mask"], val["mask"]
    mean = train["continuous"][tm].mean(axis=0)
    mse = float(((val["continuous"][vm] - mean) ** 2).sum(axis=-1).mean())
    out = {"continuous": mse}
    for name, classes in (("charge", 3), ("pid", 5)):
        freq = np.bincount(train[name][tm], minlength=classes) / tm.sum()
        out[name] = float(-np.log(np.maximum(freq[val[name][vm]], 1e-12)).mean())
    out["reconstruction"] = sum(out.values())
    return out


@torch.no_grad()
def evaluate(model: VQVAE, inputs: dict[str, torch.Tensor], batch_size: int, device: torch.device) -> dict[str, float]:
    model.eval()
    sums = {"continuous": 0.0, "charge": 0.0, "pid": 0.0, "vq": 0.0}
    n_total = 0
    counts = torch.zeros(model.config.codebook_size, dtype=torch.long)
    for start in range(0, len(inputs["mask"]), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        n = int(batch["mask"].sum())
        if n == 0:
            continue
        with autocast(device):
            out = model(batch["inputs"], batch["mask"])
        losses = reconstruction_losses(out, batch)
        for k in ("continuous", "charge", "pid"):
            sums[k] += float(losses[k]) * n
        sums["vq"] += float(out["vq_loss"]) * n
        counts += torch.bincount(out["codes"][batch["mask"]].cpu(), minlength=model.config.codebook_size)
        n_total += n
    metrics = {k: v / max(n_total, 1) for k, v in sums.items()}
    metrics["reconstruction"] = metrics["continuous"] + metrics["charge"] + metrics["pid"]
    metrics["loss"] = metrics["reconstruction"] + metrics["vq"]
    p = counts.double() / max(int(counts.sum()), 1)
    metrics["code_usage"] = float((counts > 0).double().mean())
    metrics["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return metrics


def train_tokenizer(shards: Sequence[str | Path], output_dir: str | Path, settings: TokenizerSettings | None = None, resume: bool = True) -> dict:
    """Train on the ``train`` split of ``shards``, validate on ``val``; returns the summary."""
    settings = settings or TokenizerSettings()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(settings.device)
    preprocessing = Preprocessing(**settings.preprocessing)
    config = settings.model_config(preprocessing)
    identity = run_identity("tokenizer", settings.to_dict(), shards)

    seed_everything(settings.seed)
    train_np = preprocessing.model_inputs(*load_jets(shards, "train", settings.max_candidates, settings.max_train_jets, settings.seed))
    val_np = preprocessing.model_inputs(*load_jets(shards, "val", settings.max_candidates, settings.max_val_jets, settings.seed + 1))
    # Jets left without candidates after the angular cuts carry nothing to learn from.
    train_np = {k: v[train_np["mask"].any(axis=1)] for k, v in train_np.items()}
    if len(train_np["mask"]) == 0:
        raise TaufmError("no training jets with candidates in: " + ", ".join(map(str, shards)))
    if not val_np["mask"].any():
        raise TaufmError("no validation jets with candidates in: " + ", ".join(map(str, shards)))
    baseline = mean_prediction_losses(train_np, val_np)
    train = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in train_np.items()}
    val = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in val_np.items()}

    model = VQVAE(config).to(device)
    optimizer = adamw([model], settings.learning_rate, settings.weight_decay)
    n_jets = len(train["mask"])
    steps_per_epoch = math.ceil(n_jets / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, min(100, total_steps // 10 + 1), 0.05))
    history = History(output_dir / HISTORY_FILE)
    start_epoch, best, best_payload = 0, {"reconstruction": math.inf}, None

    last = output_dir / LAST_CHECKPOINT
    state = resumable_state(last, identity) if resume else None
    if state is not None:
        load_state_strict(model, state["model"], last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best, best_payload = int(state["epoch"]) + 1, dict(state["best"]), state["best_payload"]
        history = History(output_dir / HISTORY_FILE, state["history"])
        log.info("resuming from %s after epoch %d", last, start_epoch - 1)

    log.info("tokenizer: %d training jets, %d validation jets, %d steps per epoch on %s", n_jets, len(val["mask"]), steps_per_epoch, device)
    meter = ComputeMeter(device)
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n_jets, generator=torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch))
        sums = {"continuous": 0.0, "charge": 0.0, "pid": 0.0, "vq": 0.0}
        replaced = 0
        progress = Progress(f"tokenizer, epoch {epoch + 1}/{settings.epochs}", steps_per_epoch)
        for start in range(0, n_jets, settings.batch_size):
            index = order[start : start + settings.batch_size].to(device)
            batch = {k: v[index] for k, v in train.items()}
            with autocast(device):
                out = model(batch["inputs"], batch["mask"])
            losses = reconstruction_losses(out, batch)
            loss = losses["continuous"] + losses["charge"] + losses["pid"] + out["vq_loss"].float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clip)
            optimizer.step()
            scheduler.step()
            for k in ("continuous", "charge", "pid"):
                sums[k] += float(losses[k].detach())
            sums["vq"] += float(out["vq_loss"].detach())
            replaced += int(out["replaced"])
            meter.add_jets(len(index))
            progress.update(loss=float(loss.detach()))
        progress.close()
        n_steps = math.ceil(n_jets / settings.batch_size)
        metrics = evaluate(model, val, settings.batch_size, device)
        row = {
            "epoch": epoch,
            **{f"train_{k}": v / n_steps for k, v in sums.items()},
            "train_loss": sum(sums.values()) / n_steps,
            **{f"val_{k}": v for k, v in metrics.items()},
            "replaced_codes": replaced,
            "learning_rate": scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        log.info("epoch %d: train %.4f, val %.4f, usage %.2f, perplexity %.1f", epoch, row["train_loss"], metrics["loss"], metrics["code_usage"], metrics["perplexity"])
        # The kept model is the one that reconstructs validation jets best.
        if metrics["reconstruction"] < best["reconstruction"]:
            best = {"epoch": epoch, **metrics}
            best_payload = tokenizer_payload(model, preprocessing, settings, best)
            save_checkpoint(output_dir / MODEL_FILE, best_payload)
        save_checkpoint(
            last,
            {
                "config": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "best": best,
                "best_payload": best_payload,
                "history": history.rows,
            },
        )
    # Every declared output, also when a resumed run had no epoch left to train (the workflow
    # deletes a job's outputs before rerunning it); the kept model is the best epoch's.
    history.write()
    if best_payload is None:
        raise TaufmError("no epoch reached a finite validation reconstruction loss; no tokenizer to keep")
    save_checkpoint(output_dir / MODEL_FILE, best_payload)
    summary = {
        "best_epoch": best.get("epoch"),
        "val_best": {k: v for k, v in best.items() if k != "epoch"},
        "val_mean_prediction": baseline,
        "training_jets": n_jets,
        "validation_jets": int(len(val["mask"])),
        "device": str(device),
        "settings": settings.to_dict(),
        **parameter_counts(model),
        # On a copy: a forward pass of the tokenizer itself could touch its codebook statistics.
        "flops_per_jet": forward_flops_per_jet(copy.deepcopy(model), val["inputs"][:32], val["mask"][:32]),
        **meter.summary(),
    }
    with atomic_output(output_dir / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def tokenizer_payload(model: VQVAE, preprocessing: Preprocessing, settings: TokenizerSettings, best: Mapping) -> dict:
    return {
        "config": {"model": model.config.to_dict(), "preprocessing": preprocessing.to_dict(), "codebook_size": model.config.codebook_size},
        "model": cpu_copy(model.state_dict()),
        "validation": {k: float(v) for k, v in best.items()},
    }


def load_tokenizer(path: str | Path, codebook_size: int | None = None) -> tuple[VQVAE, Preprocessing]:
    """The trained tokenizer (eval mode, CPU) and its preprocessing from ``tokenizer.pt``."""
    expect = {"codebook_size": codebook_size} if codebook_size is not None else None
    payload = load_checkpoint(path, expect=expect)
    try:
        config = VQVAEConfig(**payload["config"]["model"])
        preprocessing = Preprocessing(**payload["config"]["preprocessing"])
    except (KeyError, TypeError) as err:
        raise TaufmError(f"{path}: not a tokenizer checkpoint ({err})") from err
    model = VQVAE(config)
    load_state_strict(model, payload["model"], path)
    return model.eval(), preprocessing
