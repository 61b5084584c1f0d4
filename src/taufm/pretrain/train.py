"""Pretraining of a backbone: resumable, GPU-aware, DistributedDataParallel-ready.

Each backbone of ``pretrain.backbones`` is an input kind and an objective (``settings.backbone``):

- ``tokens-ntp`` style (``inputs: tokens, objective: ntp``): the paper's next-token prediction
  on VQ-VAE tokens, causal attention;
- ``inputs: continuous``: the same blocks read the candidates' preprocessed features (the token
  shards' ``token_features``) and, with ``ntp``, predict the next candidate's token (the
  tokenizer is then only the target);
- ``objective: mpm``: masked particle modelling. In every jet each candidate is hidden with
  probability ``mask_fraction`` (its input replaced by a learned vector; the start and stop
  positions never are), attention is bidirectional, and the loss is the cross entropy of the
  hidden candidates' tokens (``target: tokens``) or the mean squared error of their features
  (``target: features``). The hidden positions are drawn from (seed, step), so a resumed run and
  every validation pass draw the same ones.

One script for every scale: ``taufm pretrain`` runs it in one process; ``torchrun
--nproc_per_node N -m taufm.cli pretrain ...`` runs it data-parallel (NCCL on GPUs, gloo on CPU),
each process taking its rows of the same global batches. The loss is the mean cross entropy over
all real next-token predictions of the global batch, so the updates do not depend on the number
of processes. Checkpoints every ``checkpoint_every`` steps and at each epoch's end hold model,
optimiser, scheduler, RNG states and position; the same command restarts from the last one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from taufm import paths
from taufm.config import reject_unknown_keys, settings_from_mapping
from taufm.errors import TaufmError
from taufm.io import atomic_output
from taufm.models.gpt import GPTBackbone, GPTConfig, NextTokenHead, next_token_loss_from_embeddings
from taufm.pretrain.data import TokenBatches, token_vocabulary
from taufm.progress import Progress
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, START_TOKEN
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

BACKBONE_FILE = paths.BACKBONE_FILE
BEST_BACKBONE_FILE = paths.BEST_BACKBONE_FILE
LAST_CHECKPOINT = paths.LAST_CHECKPOINT_FILE
HISTORY_FILE = paths.TRAINING_HISTORY_FILE
MODEL_CONFIG_FILE = paths.BACKBONE_CONFIG_FILE
_MODEL_KEYS = {"dim", "n_heads", "n_blocks", "ffn_multiplier", "dropout", "positional"}


@dataclass(frozen=True)
class PretrainSettings:
    model: Mapping = field(default_factory=dict)
    max_length: int = 66
    batch_size: int = 64
    epochs: int = 3
    learning_rate: float = 5e-4
    min_learning_rate_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    checkpoint_every: int = 200  # steps
    max_val_batches: int | None = 50
    seed: int = 2
    device: str = "auto"
    compile: bool = False
    backbone: Mapping = field(default_factory=lambda: {"name": "tokens-ntp", "inputs": "tokens", "objective": "ntp", "mask_fraction": 0.4, "target": "tokens"})

    @property
    def objective(self) -> str:
        return str(self.backbone["objective"])

    @property
    def continuous(self) -> bool:
        return self.backbone["inputs"] == "continuous"

    @property
    def predicts_features(self) -> bool:
        return self.objective == "mpm" and self.backbone.get("target", "tokens") == "features"

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> PretrainSettings:
        """From ``taufm pretrain --settings``: checked against the schema, its defaults (the
        model's too) filled in."""
        settings = settings_from_mapping(cls, values, "pretrain")
        reject_unknown_keys(settings.model, _MODEL_KEYS, "pretrain.model")
        return settings

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": dict(self.model), "backbone": dict(self.backbone)}


class FeatureHead(nn.Module):
    """The candidate's continuous features from its embedding (masked feature modelling)."""

    def __init__(self, config: GPTConfig, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(config.dim, n_features)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


MASK_SEED_OFFSET = {"train": 0, "val": 1}


def hidden_candidates(
    tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, fraction: float, seed: int, split: str, step: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """(batch, length) bool: the candidate positions masked particle modelling hides in this
    batch, each with probability ``fraction``, drawn from (seed, split, step) alone. Start, stop
    and padding positions are never hidden.

    Under DDP the batch is this process's share of the global batch, its rows ``rank``,
    ``rank + world_size``, ... (:meth:`TokenBatches.epoch`): the draws are those of the global
    batch's rows, so a jet is hidden alike whatever the number of processes."""
    candidates = mask & (tokens != START_TOKEN) & (tokens < vocab_size - 1)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, MASK_SEED_OFFSET[split], step]).generate_state(1)[0]))
    rows = len(tokens)
    # The generator fills row after row: the first rows of a larger draw are the smaller draw.
    draw = torch.rand((rank + world_size * rows, tokens.shape[1]), generator=generator)[rank::world_size][:rows]
    return candidates & (draw.to(tokens.device) < fraction)


def objective_loss(
    settings: PretrainSettings,
    backbone: nn.Module,
    head: nn.Module,
    batch: Sequence[torch.Tensor],
    vocab_size: int,
    split: str,
    step: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the losses, number of predictions) of the backbone's objective on one batch:
    ``batch`` is (tokens, mask) or (tokens, mask, features), this process's share (``rank`` of
    ``world_size``) of the global batch."""
    tokens, mask = batch[0], batch[1]
    inputs = batch[2] if settings.continuous else tokens
    if settings.objective == "ntp":
        return next_token_loss_from_embeddings(head, backbone(inputs, mask), tokens, mask)
    hidden = hidden_candidates(tokens, mask, vocab_size, float(settings.backbone.get("mask_fraction", 0.4)), settings.seed, split, step, rank, world_size)
    embeddings = backbone(inputs, mask, hidden=hidden)
    predicted = head(embeddings[hidden]).float()
    if settings.predicts_features:
        squared = (predicted - batch[2][hidden].float()).pow(2).mean(dim=-1)
        return squared.sum(), hidden.sum()
    return torch.nn.functional.cross_entropy(predicted, tokens[hidden].long(), reduction="sum"), hidden.sum()


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_distributed(device_spec: str) -> tuple[_Distributed, torch.device]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Distributed(), select_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Distributed(rank, world, local), device


def _all_sum(value: torch.Tensor, ddp: _Distributed) -> torch.Tensor:
    if ddp.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


@torch.no_grad()
def validation_loss(
    settings: PretrainSettings, backbone: GPTBackbone, head: nn.Module, batches: TokenBatches, max_batches: int | None, device: torch.device, ddp: _Distributed
) -> float:
    backbone.eval()
    head.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(batches.epoch(0)):
        if max_batches is not None and i >= max_batches:
            break
        batch = [t.to(device) for t in batch]
        with autocast(device):
            loss_sum, count = objective_loss(settings, backbone, head, batch, backbone.config.vocab_size, "val", i, ddp.rank, ddp.world_size)
        total += torch.stack([loss_sum.double(), count.double()])
    total = _all_sum(total, ddp)
    return float(total[0] / total[1].clamp(min=1))


def backbone_payload(backbone: GPTBackbone, head: nn.Module, vocabulary: Mapping, extra: Mapping, objective: Mapping | None = None) -> dict:
    config = backbone.config.to_dict()
    objective = dict(objective or PretrainSettings().backbone)
    return {
        "config": {
            "model": config,
            "vocab_size": config["vocab_size"],
            "dim": config["dim"],
            "n_blocks": config["n_blocks"],
            "tokenizer_sha256": vocabulary["tokenizer_sha256"],
            "token_ids": dict(vocabulary["token_ids"]),
            "backbone_name": objective["name"],
            "objective": objective,
        },
        "backbone": cpu_copy(backbone.state_dict()),
        "head": cpu_copy(head.state_dict()),
        **extra,
    }


class _BackboneWithHead(nn.Module):
    """Backbone and next-token head as one module, for counting a pretraining forward pass."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs, mask))


def pretraining_flops_per_jet(backbone: nn.Module, head: nn.Module, batches: TokenBatches, continuous: bool = False) -> float:
    """Forward FLOPs per jet of backbone + head (its outputs at every position) on the first 32
    jets of ``batches``' first batch, counted on copies (the models' states stay untouched)."""
    batch = next(iter(batches.epoch(0)))
    inputs = batch[2] if continuous else batch[0]
    module = _BackboneWithHead(copy.deepcopy(backbone), copy.deepcopy(head)).cpu()
    return forward_flops_per_jet(module, inputs[:32].cpu(), batch[1][:32].cpu())


def backbone_config(path: str | Path, payload: Mapping | None = None) -> GPTConfig:
    """The architecture of the backbone checkpoint at ``path``; a file that is another stage's
    checkpoint (a tokenizer, a fine-tuned model) is a :class:`TaufmError` naming it."""
    payload = load_checkpoint(path) if payload is None else payload
    try:
        return GPTConfig(**payload["config"]["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise TaufmError(f"{path}: not a pretrained backbone checkpoint (no GPT model config: {type(err).__name__}: {err})") from err


def load_backbone(path: str | Path, expect: Mapping | None = None) -> GPTBackbone:
    """A pretrained backbone, loaded strictly; ``expect`` (e.g. vocab_size, dim) must match."""
    payload = load_checkpoint(path, expect=expect)
    backbone = GPTBackbone(backbone_config(path, payload))
    if "backbone" not in payload:
        raise TaufmError(f"{path}: not a pretrained backbone checkpoint (no backbone weights)")
    load_state_strict(backbone, payload["backbone"], path)
    return backbone


def pretrain(shards: Sequence[str | Path], output_dir: str | Path, settings: PretrainSettings | None = None, resume: bool = True) -> dict:
    """Pretrain on the train split of token ``shards``, validate on their val split."""
    settings = settings or PretrainSettings()
    output_dir = Path(output_dir)
    ddp, device = _start_distributed(settings.device)
    vocabulary = token_vocabulary(shards)
    kind = {"causal": settings.objective == "ntp", "mask_embedding": settings.objective == "mpm"}
    if settings.continuous:
        kind.update(inputs="continuous", n_features=N_CANDIDATE_CHANNELS)
    config = GPTConfig(vocab_size=vocabulary["token_ids"]["vocabulary_size"], max_length=settings.max_length, **settings.model, **kind)
    identity = run_identity("pretrain", {**settings.to_dict(), "world_size": ddp.world_size, "vocabulary": vocabulary}, shards)

    seed_everything(settings.seed)
    backbone = GPTBackbone(config).to(device)
    head = (FeatureHead(config, N_CANDIDATE_CHANNELS) if settings.predicts_features else NextTokenHead(config)).to(device)
    features = settings.continuous or settings.predicts_features
    train = TokenBatches(shards, "train", settings.batch_size, settings.max_length, settings.seed, ddp.rank, ddp.world_size, features=features)
    val = TokenBatches(shards, "val", settings.batch_size, settings.max_length, settings.seed, ddp.rank, ddp.world_size, features=features)
    if train.n_rows == 0:
        raise TaufmError("no training jets in the train split of: " + ", ".join(map(str, shards)))
    steps_per_epoch = train.batches_per_epoch()
    total_steps = steps_per_epoch * settings.epochs
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = adamw([backbone, head], settings.learning_rate, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, settings.warmup_steps, settings.min_learning_rate_ratio))
    history = History(output_dir / HISTORY_FILE)
    position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
    best, best_payload = {"val_loss": math.inf}, None
    epoch_sums = torch.zeros(2, dtype=torch.float64)

    last = output_dir / LAST_CHECKPOINT
    state = resumable_state(last, identity) if resume else None
    if state is not None:
        load_state_strict(backbone, state["backbone"], last)
        load_state_strict(head, state["head"], last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        position, best, best_payload = dict(state["position"]), dict(state["best"]), state["best_payload"]
        epoch_sums = state["epoch_sums"].double()
        history = History(output_dir / HISTORY_FILE, state["history"])
        log.info("resuming from %s at epoch %d, step %d", last, position["epoch"], position["step_in_epoch"])

    model_backbone = torch.compile(backbone) if settings.compile else backbone
    train_backbone, train_head = model_backbone, head
    if ddp.world_size > 1:
        train_backbone = torch.nn.parallel.DistributedDataParallel(model_backbone, device_ids=[device.index] if device.type == "cuda" else None)
        train_head = torch.nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint() -> None:
        if ddp.main:
            save_checkpoint(
                last,
                {
                    "config": identity,
                    "backbone": backbone.state_dict(),
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "position": dict(position),
                    "best": dict(best),
                    "best_payload": best_payload,
                    "epoch_sums": epoch_sums.clone(),
                    "history": history.rows,
                },
            )

    if ddp.main:
        objective = settings.backbone
        log.info(
            "pretraining %s (%s inputs, %s): %d jets, %d steps per epoch, vocabulary %d, %d processes on %s",
            objective["name"], objective["inputs"], objective["objective"], train.n_rows, steps_per_epoch, config.vocab_size, ddp.world_size, device,
        )
    meter = ComputeMeter(device, ddp.world_size)
    for epoch in range(position["epoch"], settings.epochs):
        started, tokens_seen = time.perf_counter(), 0
        train_backbone.train()
        train_head.train()
        what = f"pretrain {settings.backbone['name']}, epoch {epoch + 1}/{settings.epochs}"
        progress = Progress(what, steps_per_epoch, already_done=position["step_in_epoch"]) if ddp.main else None
        for step, batch in enumerate(train.epoch(epoch)):
            if step < position["step_in_epoch"]:
                continue  # already done before the restart
            batch = [t.to(device) for t in batch]
            tokens, mask = batch[0], batch[1]
            with autocast(device):
                loss_sum, count = objective_loss(settings, train_backbone, train_head, batch, config.vocab_size, "train", position["global_step"], ddp.rank, ddp.world_size)
            global_count = _all_sum(count.detach().double(), ddp).clamp(min=1)
            # DDP averages gradients over processes: scale so the update is that of the global mean.
            loss = loss_sum * ddp.world_size / global_count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.gradient_clip)
            optimizer.step()
            scheduler.step()
            epoch_sums += _all_sum(torch.stack([loss_sum.detach().double(), count.detach().double()]), ddp).cpu()
            tokens_seen += int(mask.sum())
            meter.add_jets(len(tokens))
            position.update(step_in_epoch=step + 1, global_step=position["global_step"] + 1)
            if progress is not None:
                progress.update(loss=float(epoch_sums[0] / epoch_sums[1].clamp(min=1)))
            if position["global_step"] % settings.checkpoint_every == 0:
                checkpoint()
        if progress is not None:
            progress.close()
        val_loss = validation_loss(settings, backbone, head, val, settings.max_val_batches, device, ddp) if val.n_rows else float("nan")
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "global_step": position["global_step"],
            "train_loss": float(epoch_sums[0] / epoch_sums[1].clamp(min=1)),
            "val_loss": val_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            "tokens_per_second": tokens_seen * ddp.world_size / max(seconds, 1e-9),
            "seconds": seconds,
        }
        history.rows.append(row)
        if ddp.main:
            history.write()
            log.info("epoch %d: train %.4f, val %.4f", epoch, row["train_loss"], val_loss)
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch}
            if ddp.main:  # only the main process writes files: only it keeps a copy
                best_payload = backbone_payload(backbone, head, vocabulary, {"validation": dict(best)}, settings.backbone)
                save_checkpoint(output_dir / BEST_BACKBONE_FILE, best_payload)
        position = {"epoch": epoch + 1, "step_in_epoch": 0, "global_step": position["global_step"]}
        epoch_sums = torch.zeros(2, dtype=torch.float64)
        checkpoint()

    summary = {"backbone": dict(settings.backbone), "best": best, "epochs": settings.epochs, "steps": position["global_step"], "world_size": ddp.world_size, "device": str(device), "vocab_size": config.vocab_size}
    if ddp.main:
        # Every declared output, also when a resumed run had nothing left to train (the workflow
        # deletes a job's outputs before rerunning it). The best file holds the best epoch's
        # weights; without validation jets (no best epoch) the last weights are the best we have.
        history.write()
        if best_payload is None:
            best_payload = backbone_payload(backbone, head, vocabulary, {"validation": dict(best)}, settings.backbone)
        save_checkpoint(output_dir / BEST_BACKBONE_FILE, best_payload)
        save_checkpoint(output_dir / BACKBONE_FILE, backbone_payload(backbone, head, vocabulary, {"summary": summary}, settings.backbone))
        # The cost goes to model_config.json only: the checkpoints hold no timings, so that two
        # runs with one seed write byte-identical backbones.
        cost = {**parameter_counts(backbone), "flops_per_jet": pretraining_flops_per_jet(backbone, head, val if val.n_rows else train, settings.continuous), **meter.summary()}
        with atomic_output(output_dir / MODEL_CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps({"model": config.to_dict(), "settings": settings.to_dict(), **summary, "cost": cost}, indent=2, sort_keys=True, default=str) + "\n")
    if ddp.world_size > 1:
        dist.barrier()
    return summary
