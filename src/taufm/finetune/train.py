"""One cell of the fine-tuning grid: (task, strategy, training size, seed) -> a run directory.

Strategies (SPEC §7): ``scratch`` (the backbone architecture, randomly initialised, trained),
``fixed`` (pretrained weights, frozen throughout), ``finetune`` (pretrained, frozen for the first
``unfreeze_epoch`` epochs, then trained) and ``part`` (the supervised Particle Transformer, with
its pairwise interaction features, on the candidate features; no tokenizer or backbone).
Ablations are strategies too: ``finetune-unfreeze<K>`` unfreezes after K epochs and
``finetune-blocks<B>`` uses only the first B pretrained blocks. Frozen means
``requires_grad=False`` and eval-mode dropout, never a zero learning rate. The tokenizer is frozen
in every strategy: the backbone reads the token shards. Every run's summary also states the
model's cost: parameters (all, and trainable at the end) and the FLOPs of one forward pass per jet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taufm.config import config_hash, reject_unknown_keys, settings_from_mapping
from taufm.errors import TaufmError
from taufm.finetune.data import load_task_data, nested_subset
from taufm.finetune.strategies import Strategy, parse_strategy
from taufm.finetune.tasks import TASK_NAMES, epoch_metrics, n_outputs, predict, task_settings
from taufm.finetune.tasks import loss as task_loss
from taufm.ingest.shards import CANDIDATE_COLUMNS, MASK_COLUMN, ShardWriter
from taufm.io import atomic_output
from taufm.models.gpt import GPTBackbone
from taufm.models.heads import HeadConfig, TaskHead
from taufm.models.part import PART_PREPROCESSING, ParTConfig, ParticleTransformer
from taufm.pretrain.data import token_vocabulary
from taufm.pretrain.train import backbone_config, load_backbone
from taufm.train.runtime import (
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

LAST_CHECKPOINT = "checkpoint_last.pt"  # beside the run's outputs, not one of them
FLOP_COUNT_JETS = 32  # validation jets whose forward pass flops_per_jet is counted on

_FEATURE_COLUMNS = tuple(c for c in CANDIDATE_COLUMNS if c not in ("cand_d0", "cand_d0err", "cand_dz", "cand_dzerr"))


@dataclass(frozen=True)
class FinetuneSettings:
    head: Mapping = field(default_factory=dict)
    part: Mapping = field(default_factory=dict)
    tasks: Mapping = field(default_factory=dict)  # task -> TaskSettings overrides
    epochs: int = 10
    unfreeze_epoch: int = 5
    batch_size: int = 256
    learning_rate: float = 5e-4
    min_learning_rate_ratio: float = 0.01
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    early_stopping_patience: int | None = None
    max_val_jets: int | None = None
    device: str = "auto"

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> FinetuneSettings:
        settings = settings_from_mapping(cls, values, "finetune", positive=("epochs", "batch_size"))
        reject_unknown_keys(settings.head, (f.name for f in dataclasses.fields(HeadConfig)), "finetune.head")
        reject_unknown_keys(settings.tasks, TASK_NAMES, "finetune.tasks")
        return settings

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "head": dict(self.head), "part": dict(self.part), "tasks": {k: dict(v) for k, v in self.tasks.items()}}


class FoundationModel(nn.Module):
    """Tokens -> GPT backbone (its first ``n_blocks`` blocks) -> task head."""

    def __init__(self, backbone: GPTBackbone, head: TaskHead, n_blocks: int | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.n_blocks = n_blocks

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(tokens, mask, n_blocks=self.n_blocks), mask)


def backbone_trainable(strategy: Strategy, epoch: int) -> bool:
    """Whether the strategy trains its backbone in ``epoch`` (the ParT has none: always True)."""
    return strategy.unfreeze_epoch is not None and epoch >= strategy.unfreeze_epoch


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (requires_grad False, eval-mode dropout) or unfreeze the backbone."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    for p in backbone.parameters():
        p.requires_grad_(trainable)
    backbone.train(trainable and model.training)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_inputs(strategy: Strategy, data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and mask for backbone strategies; preprocessed candidate features for ParT.

    The ParT's pairwise features need each candidate's pT, Δη, Δφ and mass (its energy follows
    from them), which the first four preprocessed channels hold invertibly: the model reads them
    back itself (``taufm.models.part``), with this same :data:`PART_PREPROCESSING`.
    """
    if strategy.uses_backbone:
        return data["tokens"].astype(np.int64), data["token_mask"].astype(bool)
    features = np.stack([data[c] for c in _FEATURE_COLUMNS], axis=-1).astype(np.float32)
    prepared = PART_PREPROCESSING.model_inputs(features, data[MASK_COLUMN].astype(bool))
    return prepared["inputs"], prepared["mask"]


def evaluate_outputs(model: nn.Module, x: np.ndarray, mask: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(device)
            mb = torch.from_numpy(mask[start : start + batch_size]).to(device)
            with autocast(device):
                out.append(model(xb, mb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), dtype=np.float32)


def build_model(task: str, strategy: Strategy, settings: FinetuneSettings, backbone_path: Path | None, seed: int) -> nn.Module:
    """The network of one strategy; pretrained weights loaded strictly where the strategy wants them."""
    seed_everything(seed)
    if not strategy.uses_backbone:
        return ParticleTransformer(ParTConfig.from_dict(dict(settings.part)), n_outputs(task))
    if backbone_path is None:
        raise TaufmError(f"strategy {strategy.name!r} needs a pretrained backbone checkpoint")
    if strategy.pretrained:
        backbone = load_backbone(backbone_path)
    else:  # the same architecture, fresh weights
        backbone = GPTBackbone(backbone_config(backbone_path))
    if strategy.n_blocks is not None and strategy.n_blocks > backbone.config.n_blocks:
        raise TaufmError(f"strategy {strategy.name!r} asks for {strategy.n_blocks} blocks; {backbone_path} has {backbone.config.n_blocks}")
    head = TaskHead(backbone.config.dim, n_outputs(task), HeadConfig(**settings.head))
    return FoundationModel(backbone, head, strategy.n_blocks)


def check_backbone_fits_tokens(backbone_path: Path, shards: Sequence[str | Path], pretrained: bool) -> None:
    """The backbone must embed the token shards' vocabulary; pretrained weights must also come
    from tokens of the very tokenizer that made the shards (same size is not enough: another
    tokenizer's code 7 is another particle)."""
    payload = load_checkpoint(backbone_path)
    backbone_config(backbone_path, payload)  # another stage's checkpoint is named as such
    config = payload["config"]
    vocabulary = token_vocabulary(shards)
    size = vocabulary["token_ids"]["vocabulary_size"]
    if config.get("vocab_size") != size:
        raise TaufmError(f"{backbone_path}: embeds a vocabulary of {config.get('vocab_size')} tokens; the token shards ({shards[0]}, ...) use {size}")
    if pretrained and config.get("tokenizer_sha256") != vocabulary["tokenizer_sha256"]:
        raise TaufmError(
            f"{backbone_path}: pretrained on tokens of tokenizer {str(config.get('tokenizer_sha256'))[:12]}…, but the token shards "
            f"({shards[0]}, ...) were made by tokenizer {str(vocabulary['tokenizer_sha256'])[:12]}…: pretrain again or retokenize"
        )


def run_finetune(
    task: str,
    strategy_name: str,
    size: int,
    seed: int,
    shards: Mapping[str, Sequence[str | Path]],
    output_dir: str | Path,
    settings: FinetuneSettings | None = None,
    backbone_path: str | Path | None = None,
) -> dict:
    """Train one grid cell and write its run directory; returns the summary.

    ``shards`` maps each sample to its token shards (backbone strategies) or its ingested shards
    (``part``). Names, sizes and the checkpoint are all checked before training starts.
    """
    settings = settings or FinetuneSettings()
    if task not in TASK_NAMES:
        raise TaufmError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    strategy = parse_strategy(strategy_name, settings.unfreeze_epoch)
    spec = task_settings(task, settings.tasks.get(task))
    output_dir = Path(output_dir)
    backbone_path = Path(backbone_path) if backbone_path is not None else None
    device = select_device(settings.device)
    extra = ("tokens", "token_mask") if strategy.uses_backbone else (*CANDIDATE_COLUMNS, MASK_COLUMN)
    if strategy.uses_backbone and backbone_path is not None:
        check_backbone_fits_tokens(backbone_path, [s for files in shards.values() for s in files], strategy.pretrained)

    train_all = load_task_data(task, spec, shards, spec.train_samples, "train", extra)
    subset = nested_subset(len(train_all["target"]), size, seed)
    train = {k: v[subset] for k, v in train_all.items()}
    val = load_task_data(task, spec, shards, spec.train_samples, "val", extra)
    if settings.max_val_jets is not None:
        val = {k: v[: settings.max_val_jets] for k, v in val.items()}
    if len(val["target"]) == 0:
        raise TaufmError(f"{task}: no validation jets in the val split of {', '.join(spec.train_samples)}")
    tests = {sample: load_task_data(task, spec, shards, [sample], "test", extra) for sample in spec.test_samples}
    model = build_model(task, strategy, settings, backbone_path, seed).to(device)

    x_train, m_train = model_inputs(strategy, train)
    x_val, m_val = model_inputs(strategy, val)
    y_train, y_val = torch.from_numpy(train["target"]), torch.from_numpy(val["target"])
    optimizer = adamw([model], settings.learning_rate, settings.weight_decay)
    total = math.ceil(size / settings.batch_size) * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, 0, settings.min_learning_rate_ratio))
    history = History(output_dir / "history.csv")
    best, best_state, stale, start_epoch, finished = {"val_loss": math.inf, "epoch": -1}, None, 0, 0, False
    generator = torch.Generator().manual_seed(seed)
    # A killed cell resumes from its last epoch, if the checkpoint is of this very cell: same
    # settings, same shards and backbone (their contents) and the same code.
    identity_settings = {"task": task, "strategy": strategy.name, "size": size, "seed": seed, "settings": settings.to_dict(), "task_settings": dataclasses.asdict(spec)}
    inputs = [*(s for files in shards.values() for s in files), *([backbone_path] if strategy.uses_backbone and backbone_path else [])]
    identity = run_identity("finetune", identity_settings, inputs)
    last = output_dir / LAST_CHECKPOINT
    state = resumable_state(last, identity)
    if state is not None:
        load_state_strict(model, state["model"], last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        best, best_state, stale = dict(state["best"]), state["best_state"], int(state["stale"])
        start_epoch, finished = int(state["epoch"]) + 1, bool(state["finished"])
        history = History(output_dir / "history.csv", state["history"])
        log.info("resuming from %s after epoch %d", last, start_epoch - 1)
    started = time.perf_counter()
    for epoch in range(start_epoch, 0 if finished else settings.epochs):
        trainable = backbone_trainable(strategy, epoch)
        model.train()
        set_backbone_trainable(model, trainable)
        order = torch.randperm(size, generator=generator).numpy()
        train_sum = 0.0
        for start in range(0, size, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            xb, mb = torch.from_numpy(x_train[idx]).to(device), torch.from_numpy(m_train[idx]).to(device)
            with autocast(device):
                out = model(xb, mb)
            batch_loss = task_loss(task, out.float(), y_train[idx].to(device), spec)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.gradient_clip)
            optimizer.step()
            scheduler.step()
            train_sum += float(batch_loss.detach()) * len(idx)
        val_out = evaluate_outputs(model, x_val, m_val, settings.batch_size, device)
        val_loss = float(task_loss(task, torch.from_numpy(val_out), y_val, spec))
        metrics = {f"val_{k}": v for k, v in epoch_metrics(task, val_out, val["target"], val).items()}
        row = {"epoch": epoch, "backbone_trainable": int(trainable), "train_loss": train_sum / size, "val_loss": val_loss, **metrics, "learning_rate": scheduler.get_last_lr()[0]}
        history.append(row)
        if val_loss < best["val_loss"]:
            best, stale = {"val_loss": val_loss, "epoch": epoch}, 0
            best_state = cpu_copy(model.state_dict())
        else:
            stale += 1
        finished = settings.early_stopping_patience is not None and stale >= settings.early_stopping_patience
        save_checkpoint(
            last,
            {
                "config": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "rng": rng_state(),
                "epoch": epoch,
                "finished": finished,
                "best": best,
                "best_state": best_state,
                "stale": stale,
                "history": history.rows,
            },
        )
        if finished:
            log.info("early stopping after epoch %d", epoch)
            break
    seconds = time.perf_counter() - started
    history.write()  # also when a resumed cell had no epoch left (its outputs were deleted)
    if best_state is None:
        raise TaufmError(f"{task}/{strategy.name}: the validation loss was never finite")
    model.load_state_dict(best_state)
    # As the last epoch trained it (a resumed, finished cell runs no epoch to set it).
    set_backbone_trainable(model, backbone_trainable(strategy, int(history.rows[-1]["epoch"])))
    cost = {
        **parameter_counts(model),
        "flops_per_jet": forward_flops_per_jet(model, *(torch.from_numpy(a[:FLOP_COUNT_JETS]).to(device) for a in (x_val, m_val))),
    }

    resolved = {
        "task": task,
        "strategy": strategy.name,
        "base_strategy": strategy.base,
        "unfreeze_epoch": strategy.unfreeze_epoch,
        "n_blocks": strategy.n_blocks,
        "size": size,
        "seed": seed,
        "task_settings": dataclasses.asdict(spec),
        "settings": settings.to_dict(),
        "backbone": {"path": str(backbone_path), "sha256": _file_digest(backbone_path)} if strategy.uses_backbone and backbone_path else None,
        "shards": {s: [str(p) for p in v] for s, v in shards.items()},
    }
    save_checkpoint(output_dir / "model.pt", {"config": {**resolved, "settings_hash": config_hash(resolved)}, "model": best_state, "best": best})
    with ShardWriter(output_dir / "predictions.parquet") as writer:
        for sample, data in tests.items():
            x, m = model_inputs(strategy, data)
            outputs = evaluate_outputs(model, x, m, settings.batch_size, device)
            keep = ("sample", "event", "jet_index", "label", "decay_mode", "jet_pt", "jet_eta", "gen_tau_vis_pt", "target")
            writer.write({**{k: data[k] for k in keep}, **predict(task, outputs, data)})
        writer.manifest = {"stage": "finetune", "task": task, "strategy": strategy.name, "size": size, "seed": seed, "test_jets": {s: int(len(d["target"])) for s, d in tests.items()}}
    summary = {**resolved, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "training_seconds": seconds, "device": str(device), **cost}
    for name, payload in (("config.json", resolved), ("summary.json", summary)):
        with atomic_output(output_dir / name) as tmp:
            tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    log.info("%s/%s n=%d seed=%d: best val loss %.4f at epoch %d (%.0f s)", task, strategy.name, size, seed, best["val_loss"], best["epoch"], seconds)
    return summary
