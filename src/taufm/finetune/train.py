"""One cell of the fine-tuning grid: (task, strategy, training size, seed) -> a run directory.

Strategies (SPEC §7): ``scratch`` (the backbone architecture, randomly initialised, trained),
``fixed`` (pretrained weights, frozen throughout), ``finetune`` (pretrained, frozen for the first
``unfreeze_epoch`` epochs, then trained) and ``part`` (the supervised Particle Transformer, with
its pairwise interaction features, on the candidate features; no tokenizer or backbone).
Ablations are strategies too: ``finetune-unfreeze<K>`` unfreezes after K epochs and
``finetune-blocks<B>`` uses only the first B pretrained blocks. Frozen means
``requires_grad=False`` and eval-mode dropout, never a zero learning rate. The tokenizer is frozen
in every strategy: the backbone reads the token shards.

What a cell costs is kept small without changing what it computes:

- While the backbone is frozen its outputs for the cell's training jets and validation subset
  are computed once and the head trains on them (``finetune.cache_frozen_backbone``, within
  ``finetune.cache_max_mb``; :mod:`taufm.finetune.frozen`). Equal to running the backbone every
  epoch up to float rounding.
- Each epoch validates on a fixed, seeded subset of the validation jets
  (``finetune.val_subset_jets``, ``finetune.val_subset_seed``); the epoch of the lowest subset
  loss is kept, and that model is then evaluated once on the whole validation set (at most
  ``finetune.max_val_jets`` jets). ``history.csv``'s ``val_loss`` (and ``val_<metric>``) is the
  subset's, per epoch; its ``val_loss_full`` (on the kept epoch's row only) and the summary's
  ``best_val_loss`` are the whole set's loss of the kept model; the summary's
  ``best_val_loss_subset`` is the subset's.
- Several cells of one task run in one process (:func:`run_finetune_pack`): shards and backbone
  are read once, and each cell's run directory is bitwise what it would be alone.

Every run's summary also states the model's cost: parameters (all, and trainable at the end),
the FLOPs of one forward pass per jet (and of its backbone and head parts), what training cost
in this process (:class:`taufm.train.runtime.ComputeMeter`: device-seconds, jets trained, jets
per second, peak memory) and an estimate of the FLOPs it ran (:func:`flop_estimates`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taufm.config import config_hash, reject_unknown_keys, settings_from_mapping
from taufm.errors import TaufmError
from taufm.finetune.data import load_task_data, nested_subset, validation_subset
from taufm.finetune.frozen import MEGABYTE, CacheBudget, frozen_backbone_outputs
from taufm.finetune.inputs import LIFETIME_CHANNEL_NAMES, check_input_set, part_inputs
from taufm.finetune.strategies import DEFAULT_BACKBONE, Strategy, parse_strategy
from taufm.finetune.tasks import TASK_NAMES, TaskSettings, epoch_metrics, n_outputs, predict, task_settings
from taufm.finetune.tasks import loss as task_loss
from taufm.ingest.shards import CANDIDATE_COLUMNS, MASK_COLUMN, ShardWriter
from taufm.io import atomic_output
from taufm.models.gpt import GPTBackbone, GPTConfig
from taufm.models.heads import HeadConfig, TaskHead
from taufm.models.part import ParTConfig, ParticleTransformer
from taufm.progress import Progress
from taufm.pretrain.data import token_vocabulary
from taufm.pretrain.train import backbone_config
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, TOKEN_FEATURES_COLUMN, token_feature_array
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

LIFETIME_CHANNELS = len(LIFETIME_CHANNEL_NAMES)
LAST_CHECKPOINT = "checkpoint_last.pt"  # beside the run's outputs, not one of them
FLOP_COUNT_JETS = 32  # validation jets whose forward pass flops_per_jet is counted on
# Settings of the workflow, not of a cell: left out of a cell's resolved settings and identity,
# so a packed cell's run directory is the same as the cell's run alone.
WORKFLOW_ONLY_SETTINGS = ("pack",)


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
    max_val_jets: int | None = None  # caps the whole validation set (its first jets)
    val_subset_jets: int | None = 50000  # validation jets each epoch is judged on (None: all)
    val_subset_seed: int = 0
    cache_frozen_backbone: bool = True
    cache_max_mb: float = 2048
    pack: Mapping = field(default_factory=dict)  # the workflow's packing of cells into jobs
    device: str = "auto"
    inputs: str = "paper"  # input set of backbone strategies named without +lifetime

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> FinetuneSettings:
        settings = settings_from_mapping(cls, values, "finetune", positive=("epochs", "batch_size"))
        reject_unknown_keys(settings.head, (f.name for f in dataclasses.fields(HeadConfig)), "finetune.head")
        reject_unknown_keys(settings.tasks, TASK_NAMES, "finetune.tasks")
        return settings

    def to_dict(self) -> dict:
        """The settings a cell runs with (the workflow's packing left out), as plain JSON."""
        values = {**dataclasses.asdict(self), "head": dict(self.head), "part": dict(self.part), "tasks": {k: dict(v) for k, v in self.tasks.items()}}
        return {k: v for k, v in values.items() if k not in WORKFLOW_ONLY_SETTINGS}


@dataclass(frozen=True)
class Cell:
    """One cell of the grid to train: its strategy, training size, seed and run directory."""

    strategy: str
    size: int
    seed: int
    output_dir: Path


class FoundationModel(nn.Module):
    """Backbone inputs -> backbone (its first ``n_blocks`` blocks) -> task head.

    The inputs (:func:`model_inputs`) are what the backbone reads — token ids (batch, length) or
    continuous features (batch, length, n_features) — optionally followed by ``n_head_channels``
    channels per position that bypass the backbone: the ``+lifetime`` strategies' impact
    parameters, appended to the backbone's outputs and so projected by the head's input layer
    (token ids then travel as channel 0 of a float array). The backbone's part
    (:meth:`backbone_outputs`) is what a frozen backbone's cache holds, channels included.
    """

    def __init__(self, backbone: GPTBackbone, head: TaskHead, n_blocks: int | None, n_head_channels: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.n_blocks = n_blocks
        self.n_head_channels = n_head_channels

    def backbone_outputs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.n_head_channels:
            return self.backbone(x, mask, n_blocks=self.n_blocks)
        inputs, channels = x[..., : -self.n_head_channels], x[..., -self.n_head_channels :]
        if self.backbone.config.inputs == "tokens":
            inputs = inputs[..., 0].long()
        embedded = self.backbone(inputs, mask, n_blocks=self.n_blocks)
        return torch.cat([embedded, channels.to(embedded.dtype)], dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone_outputs(x, mask), mask)


class TruncatedBackbone(nn.Module):
    """The backbone part of a :class:`FoundationModel` (its first ``n_blocks`` blocks) as a
    module of its own: what the frozen-backbone cache computes and whose FLOPs are counted."""

    def __init__(self, model: FoundationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.backbone_outputs(x, mask)


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


def model_inputs(strategy: Strategy, data: Mapping[str, np.ndarray], backbone_inputs: str = "tokens") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, mask) of the strategy's model, for its input set ``strategy.inputs``.

    Backbone strategies (``backbone_inputs``: what the backbone reads): token ids (jets, length)
    or the tokenizer channels of ``token_features`` (jets, length, 10); with ``paper+lifetime``
    the four lifetime channels of ``token_features`` follow, as float channels (token ids then
    channel 0). The ParT: its preprocessed candidate features (:mod:`taufm.finetune.inputs`).

    The ParT's pairwise features need each candidate's pT, Δη, Δφ and mass (its energy follows
    from them), which the first four preprocessed channels hold invertibly: the model reads them
    back itself (``taufm.models.part``), with this same ``PART_PREPROCESSING``.
    """
    if not strategy.uses_backbone:
        return part_inputs(data, strategy.inputs)
    mask = data["token_mask"].astype(bool)
    lifetime = strategy.inputs == "paper+lifetime"
    if backbone_inputs == "tokens" and not lifetime:
        return data["tokens"].astype(np.int64), mask
    if TOKEN_FEATURES_COLUMN not in data:
        raise TaufmError(f"strategy {strategy.name!r} needs the token shards' {TOKEN_FEATURES_COLUMN} column")
    features = token_feature_array(data[TOKEN_FEATURES_COLUMN])
    parts = [data["tokens"].astype(np.float32)[..., None] if backbone_inputs == "tokens" else features[..., :N_CANDIDATE_CHANNELS]]
    if lifetime:
        parts.append(features[..., N_CANDIDATE_CHANNELS : N_CANDIDATE_CHANNELS + LIFETIME_CHANNELS])
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32), mask


def head_channels(strategy: Strategy) -> int:
    """Channels a backbone strategy's inputs carry past the backbone into the head."""
    return LIFETIME_CHANNELS if strategy.uses_backbone and strategy.inputs == "paper+lifetime" else 0


def resolve_strategy(name: str, settings: FinetuneSettings) -> Strategy:
    """The strategy ``name`` with its input set resolved: ``+lifetime``, else the configured one
    (``finetune.inputs``; the ParT's ``finetune.part.inputs``)."""
    part_default = str(dict(settings.part).get("inputs", "paper"))
    strategy = parse_strategy(name, settings.unfreeze_epoch, default_inputs=settings.inputs)
    if not strategy.uses_backbone:
        strategy = parse_strategy(name, settings.unfreeze_epoch, default_inputs=part_default)
    check_input_set(strategy.inputs)
    return strategy


def part_settings(settings: FinetuneSettings, input_set: str | None = None) -> tuple[ParTConfig, str]:
    """The ParT's configuration and input set from ``finetune.part``: ``input_set`` (a
    ``+lifetime`` strategy's; default ``finetune.part.inputs``, an input set of
    :mod:`taufm.finetune.inputs`) sets ``n_features`` unless that is given, and must agree."""
    values = dict(settings.part)
    configured = values.pop("inputs", "paper")
    input_set = input_set or configured
    n_inputs = check_input_set(input_set)
    if values.setdefault("n_features", n_inputs) != n_inputs:
        raise TaufmError(f"finetune.part.n_features is {values['n_features']}, but input set {input_set!r} has {n_inputs} inputs per candidate")
    return ParTConfig.from_dict(values), input_set


def _on_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device) if isinstance(x, torch.Tensor) else torch.from_numpy(x).to(device)


def evaluate_outputs(
    model: nn.Module, x: np.ndarray | torch.Tensor, mask: np.ndarray, batch_size: int, device: torch.device, embedded: bool = False
) -> np.ndarray:
    """The model's outputs for every jet, in eval mode, in batches. ``embedded``: ``x`` holds the
    frozen backbone's outputs (:mod:`taufm.finetune.frozen`) and only ``model.head`` runs."""
    model.eval()
    forward = model.head if embedded else model
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = _on_device(x[start : start + batch_size], device)
            mb = torch.from_numpy(mask[start : start + batch_size]).to(device)
            with autocast(device):
                out.append(forward(xb, mb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), dtype=np.float32)


@dataclass(frozen=True)
class BackboneCheckpoint:
    """A backbone checkpoint read once (a pack of cells builds every model from it)."""

    path: Path
    payload: Mapping
    config: GPTConfig
    sha256: str

    @classmethod
    def read(cls, path: str | Path) -> BackboneCheckpoint:
        path = Path(path)
        payload = load_checkpoint(path)
        return cls(path=path, payload=payload, config=backbone_config(path, payload), sha256=_file_digest(path))

    @property
    def name(self) -> str:
        """The backbone's name in pretrain.backbones (checkpoints from before there were
        several are the paper's backbone)."""
        return str(self.payload.get("config", {}).get("backbone_name", DEFAULT_BACKBONE))

    def backbone(self, pretrained: bool) -> GPTBackbone:
        """The architecture with fresh weights, and the pretrained ones loaded strictly if asked."""
        backbone = GPTBackbone(self.config)
        if pretrained:
            if "backbone" not in self.payload:
                raise TaufmError(f"{self.path}: not a pretrained backbone checkpoint (no backbone weights)")
            load_state_strict(backbone, self.payload["backbone"], self.path)
        return backbone


def _check_blocks(strategy: Strategy, checkpoint: BackboneCheckpoint) -> None:
    if strategy.n_blocks is not None and strategy.n_blocks > checkpoint.config.n_blocks:
        raise TaufmError(f"strategy {strategy.name!r} asks for {strategy.n_blocks} blocks; {checkpoint.path} has {checkpoint.config.n_blocks}")


def build_model(task: str, strategy: Strategy, settings: FinetuneSettings, backbone: str | Path | BackboneCheckpoint | None, seed: int) -> nn.Module:
    """The network of one strategy; pretrained weights loaded strictly where the strategy wants them."""
    seed_everything(seed)
    if not strategy.uses_backbone:
        return ParticleTransformer(part_settings(settings, strategy.inputs)[0], n_outputs(task))
    if backbone is None:
        raise TaufmError(f"strategy {strategy.name!r} needs a pretrained backbone checkpoint")
    checkpoint = backbone if isinstance(backbone, BackboneCheckpoint) else BackboneCheckpoint.read(backbone)
    encoder = checkpoint.backbone(pretrained=strategy.pretrained)  # scratch: the same architecture, fresh weights
    _check_blocks(strategy, checkpoint)
    extra = head_channels(strategy)
    head = TaskHead(encoder.config.dim + extra, n_outputs(task), HeadConfig(**settings.head))
    return FoundationModel(encoder, head, strategy.n_blocks, extra)


def check_backbone_fits_tokens(backbone_path: Path, shards: Sequence[str | Path], pretrained: bool, payload: Mapping | None = None) -> None:
    """The backbone must embed the token shards' vocabulary; pretrained weights must also come
    from tokens of the very tokenizer that made the shards (same size is not enough: another
    tokenizer's code 7 is another particle). ``payload``: the checkpoint, if already read."""
    payload = load_checkpoint(backbone_path) if payload is None else payload
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


@dataclass(frozen=True)
class TaskJets:
    """What the cells of one task read, once per process: every selected training jet (each cell
    draws its nested subset), the validation jets (capped at ``max_val_jets``) with their model
    inputs and the seeded subset that judges each epoch, and each test sample."""

    train: Mapping[str, np.ndarray]
    val: Mapping[str, np.ndarray]
    val_subset: np.ndarray | None  # indices into val; None: the whole validation set
    tests: Mapping[str, Mapping[str, np.ndarray]]
    inputs: tuple[Path, ...]  # the files the cells' identity hashes (shards, backbone)
    inputs_identity: Mapping[str, str]  # run_identity's hashes of those inputs and the code


def _require_token_features(shards: Mapping[str, Sequence[str | Path]], strategies: Sequence[Strategy]) -> None:
    """A token shard written before token shards held their features is named, with the fix."""
    import pyarrow.parquet as pq

    for path in (Path(s) for files in shards.values() for s in files):
        try:
            names = pq.read_schema(path).names
        except Exception:  # unreadable or missing: read_shards names it as such
            continue
        if TOKEN_FEATURES_COLUMN not in names:
            raise TaufmError(
                f"{path}: no {TOKEN_FEATURES_COLUMN} column (tokenized before token shards held their features); "
                f"strategy {strategies[0].name!r} needs them: tokenize again"
            )


def load_task_jets(
    task: str,
    spec: TaskSettings,
    shards: Mapping[str, Sequence[str | Path]],
    strategies: Sequence[Strategy],
    settings: FinetuneSettings,
    backbone_path: Path | None,
    backbone_inputs: str = "tokens",
) -> TaskJets:
    """The jets the cells of ``strategies`` (one kind: all backbone strategies, or all ParT)
    read; the token features only when one of them needs them."""
    strategy = strategies[0]
    extra: tuple[str, ...] = (*CANDIDATE_COLUMNS, MASK_COLUMN)
    if strategy.uses_backbone:
        extra = ("tokens", "token_mask")
        if backbone_inputs != "tokens" or any(head_channels(s) for s in strategies):
            extra += (TOKEN_FEATURES_COLUMN,)
            _require_token_features(shards, strategies)
    train = load_task_data(task, spec, shards, spec.train_samples, "train", extra)
    val = load_task_data(task, spec, shards, spec.train_samples, "val", extra)
    if settings.max_val_jets is not None:
        val = {k: v[: settings.max_val_jets] for k, v in val.items()}
    if len(val["target"]) == 0:
        raise TaufmError(f"{task}: no validation jets in the val split of {', '.join(spec.train_samples)}")
    tests = {sample: load_task_data(task, spec, shards, [sample], "test", extra) for sample in spec.test_samples}
    inputs = [Path(s) for files in shards.values() for s in files]
    if strategy.uses_backbone and backbone_path is not None:
        inputs.append(backbone_path)
    return TaskJets(
        train=train,
        val=val,
        val_subset=validation_subset(len(val["target"]), settings.val_subset_jets, settings.val_subset_seed),
        tests=tests,
        inputs=tuple(inputs),
        inputs_identity=run_identity("finetune", {}, inputs),
    )


@dataclass
class PassCounts:
    """Jets through each kind of pass in this process, for :func:`flop_estimates`."""

    trained: int = 0  # forward + backward through a trainable model
    trained_frozen: int = 0  # a frozen backbone's forward, the head's forward + backward
    trained_cached: int = 0  # the head's forward + backward on cached backbone outputs
    cached: int = 0  # backbone forwards that filled the cache (training jets)
    validated: int = 0  # full forward passes of validation (per-epoch subset and the final whole set)
    validated_cached: int = 0  # the head's forward on cached validation outputs
    cached_val: int = 0  # backbone forwards that filled the cache (validation jets)


def flop_estimates(counts: PassCounts, flops_per_jet: float, backbone_flops_per_jet: float) -> dict[str, float]:
    """Estimated FLOPs this process ran, from the counted forward FLOPs per jet of the model and
    of its backbone part (the head's is the difference).

    A trainable pass costs 3x its forward (backward ≈ 2x forward); a frozen backbone only its
    forward (1x), the head then 3x; a pass on cached backbone outputs only the head's 3x, the
    cache itself one backbone forward per cached jet. ``train_flops_estimate`` counts training
    steps and the training jets' cache; ``validation_flops_estimate`` the forward passes of
    validation (per-epoch subset, the final whole set, the validation jets' cache).
    """
    head = flops_per_jet - backbone_flops_per_jet
    train = 3 * flops_per_jet * counts.trained + (backbone_flops_per_jet + 3 * head) * counts.trained_frozen + 3 * head * counts.trained_cached + backbone_flops_per_jet * counts.cached
    validation = flops_per_jet * counts.validated + head * counts.validated_cached + backbone_flops_per_jet * counts.cached_val
    return {"train_flops_estimate": float(train), "validation_flops_estimate": float(validation)}


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
    (summary,) = run_finetune_pack(task, [Cell(strategy_name, size, seed, Path(output_dir))], shards, settings, backbone_path)
    return summary


def run_finetune_pack(
    task: str,
    cells: Sequence[Cell],
    shards: Mapping[str, Sequence[str | Path]],
    settings: FinetuneSettings | None = None,
    backbone_path: str | Path | None = None,
    on_cell_done: Callable[[Cell, dict], None] | None = None,
) -> list[dict]:
    """Train several cells of one task, one after another in this process, reading the shards
    and the backbone once; each cell's run directory is what :func:`run_finetune` alone writes.

    The cells must all use the backbone (and ``shards`` are token shards) or all be ``part``
    (ingested shards). Every cell is checked (strategy, size, blocks, backbone) before any
    trains. ``on_cell_done(cell, summary)`` runs after each cell. Returns the summaries.
    """
    settings = settings or FinetuneSettings()
    if task not in TASK_NAMES:
        raise TaufmError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    if not cells:
        raise TaufmError(f"{task}: no cells to train")
    strategies = [resolve_strategy(cell.strategy, settings) for cell in cells]
    if len({s.uses_backbone for s in strategies}) > 1:
        raise TaufmError(f"{task}: a pack holds backbone strategies or part cells, not both ({', '.join(s.name for s in strategies)})")
    if len({s.backbone for s in strategies}) > 1:
        raise TaufmError(f"{task}: the cells of a pack start from one backbone ({', '.join(s.name for s in strategies)})")
    directories = [Path(cell.output_dir).resolve() for cell in cells]
    if len(set(directories)) < len(directories):
        raise TaufmError(f"{task}: two cells of the pack write the same run directory")
    spec = task_settings(task, settings.tasks.get(task))
    backbone_path = Path(backbone_path) if backbone_path is not None else None
    device = select_device(settings.device)
    checkpoint = None
    if strategies[0].uses_backbone:
        if backbone_path is None:
            raise TaufmError(f"strategy {strategies[0].name!r} needs a pretrained backbone checkpoint")
        checkpoint = BackboneCheckpoint.read(backbone_path)
        if checkpoint.name != strategies[0].backbone:
            raise TaufmError(f"strategy {strategies[0].name!r} starts from backbone {strategies[0].backbone!r}, but {backbone_path} holds backbone {checkpoint.name!r}")
        token_shards = [s for files in shards.values() for s in files]
        for pretrained in sorted({s.pretrained for s in strategies}):
            check_backbone_fits_tokens(backbone_path, token_shards, pretrained, checkpoint.payload)
        for strategy in strategies:
            _check_blocks(strategy, checkpoint)
    backbone_inputs = checkpoint.config.inputs if checkpoint is not None else "tokens"
    jets = load_task_jets(task, spec, shards, strategies, settings, backbone_path, backbone_inputs)
    for cell in cells:
        nested_subset(len(jets.train["target"]), cell.size, cell.seed)  # every size fits, before any cell trains
    summaries = []
    for cell, strategy in zip(cells, strategies):
        summary = _train_cell(task, strategy, cell.size, cell.seed, Path(cell.output_dir), settings, spec, jets, checkpoint, shards, device)
        summaries.append(summary)
        if on_cell_done is not None:
            on_cell_done(cell, summary)
    return summaries


def _train_cell(
    task: str,
    strategy: Strategy,
    size: int,
    seed: int,
    output_dir: Path,
    settings: FinetuneSettings,
    spec: TaskSettings,
    jets: TaskJets,
    checkpoint: BackboneCheckpoint | None,
    shards: Mapping[str, Sequence[str | Path]],
    device: torch.device,
) -> dict:
    subset = nested_subset(len(jets.train["target"]), size, seed)
    train = {k: v[subset] for k, v in jets.train.items()}
    model = build_model(task, strategy, settings, checkpoint, seed).to(device)

    backbone_inputs = checkpoint.config.inputs if strategy.uses_backbone and checkpoint is not None else "tokens"
    x_train, m_train = model_inputs(strategy, train, backbone_inputs)
    x_val, m_val = model_inputs(strategy, jets.val, backbone_inputs)
    y_train, y_val = torch.from_numpy(train["target"]), torch.from_numpy(jets.val["target"])
    # Each epoch is judged on the validation subset; the kept model once on the whole set.
    pick = jets.val_subset if jets.val_subset is not None else slice(None)
    x_sub, m_sub, y_sub = x_val[pick], m_val[pick], y_val[pick]
    val_sub = {k: v[pick] for k, v in jets.val.items()}
    use_cache = settings.cache_frozen_backbone and strategy.uses_backbone

    optimizer = adamw([model], settings.learning_rate, settings.weight_decay)
    total = math.ceil(size / settings.batch_size) * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, 0, settings.min_learning_rate_ratio))
    history = History(output_dir / "history.csv")
    best, best_state, stale, start_epoch, finished = {"val_loss": math.inf, "epoch": -1}, None, 0, 0, False
    generator = torch.Generator().manual_seed(seed)
    # A killed cell resumes from its last epoch, if the checkpoint is of this very cell: same
    # settings, same shards and backbone (their contents) and the same code.
    identity_settings = {"task": task, "strategy": strategy.name, "size": size, "seed": seed, "settings": settings.to_dict(), "task_settings": dataclasses.asdict(spec)}
    identity = {**jets.inputs_identity, "settings_hash": config_hash(identity_settings)}  # run_identity("finetune", identity_settings, inputs)
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

    meter = ComputeMeter(device)
    counts = PassCounts()
    cached_train = cached_val = None  # the frozen backbone's outputs, computed once (never checkpointed)
    cache_built, cache_bytes = False, 0
    started = time.perf_counter()
    steps_per_epoch = math.ceil(size / settings.batch_size)
    progress = Progress(f"finetune {task}/{strategy.name} n={size} seed={seed}", steps_per_epoch * settings.epochs, already_done=steps_per_epoch * start_epoch)
    for epoch in range(start_epoch, 0 if finished else settings.epochs):
        trainable = backbone_trainable(strategy, epoch)
        if trainable:
            cached_train = cached_val = None
        elif use_cache and not cache_built:
            budget = CacheBudget(settings.cache_max_mb)
            frozen = TruncatedBackbone(model)
            cached_train = frozen_backbone_outputs(frozen, x_train, m_train, settings.batch_size, device, budget, "training jets")
            cached_val = frozen_backbone_outputs(frozen, x_sub, m_sub, settings.batch_size, device, budget, "validation jets")
            cache_built, cache_bytes = True, budget.used_bytes
            counts.cached += len(x_train) if cached_train is not None else 0
            counts.cached_val += len(x_sub) if cached_val is not None else 0
        model.train()
        set_backbone_trainable(model, trainable)
        order = torch.randperm(size, generator=generator).numpy()
        train_sum = 0.0
        for start in range(0, size, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            mb = torch.from_numpy(m_train[idx]).to(device)
            with autocast(device):
                if cached_train is not None:
                    out = model.head(cached_train[torch.from_numpy(idx).to(device)], mb)
                else:
                    out = model(torch.from_numpy(x_train[idx]).to(device), mb)
            batch_loss = task_loss(task, out.float(), y_train[idx].to(device), spec)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.gradient_clip)
            optimizer.step()
            scheduler.step()
            train_sum += float(batch_loss.detach()) * len(idx)
            meter.add_jets(len(idx))
            progress.update(epoch=f"{epoch + 1}/{settings.epochs}", loss=float(batch_loss.detach()))
        if trainable:
            counts.trained += size
        elif cached_train is not None:
            counts.trained_cached += size
        else:
            counts.trained_frozen += size
        if cached_val is not None:
            val_out = evaluate_outputs(model, cached_val, m_sub, settings.batch_size, device, embedded=True)
            counts.validated_cached += len(x_sub)
        else:
            val_out = evaluate_outputs(model, x_sub, m_sub, settings.batch_size, device)
            counts.validated += len(x_sub)
        val_loss = float(task_loss(task, torch.from_numpy(val_out), y_sub, spec))
        metrics = {f"val_{k}": v for k, v in epoch_metrics(task, val_out, val_sub["target"], val_sub).items()}
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
    progress.close()
    cached_train = cached_val = None
    seconds = time.perf_counter() - started
    if best_state is None:
        raise TaufmError(f"{task}/{strategy.name}: the validation loss was never finite")
    model.load_state_dict(best_state)
    # As the last epoch trained it (a resumed, finished cell runs no epoch to set it).
    set_backbone_trainable(model, backbone_trainable(strategy, int(history.rows[-1]["epoch"])))
    if jets.val_subset is None:  # the subset was the whole set
        best_val_loss = best["val_loss"]
    else:
        best_val_loss = float(task_loss(task, torch.from_numpy(evaluate_outputs(model, x_val, m_val, settings.batch_size, device)), y_val, spec))
        counts.validated += len(x_val)
    compute = meter.summary()
    # history.csv: val_loss per epoch is the subset's; val_loss_full, on the kept epoch's row, the
    # whole set's. Written also when a resumed cell had no epoch left (its outputs were deleted).
    rows = [_with_full_loss(row, best_val_loss if int(row["epoch"]) == best["epoch"] else "") for row in history.rows]
    History(output_dir / "history.csv", rows).write()

    flop_inputs = tuple(torch.from_numpy(a[:FLOP_COUNT_JETS]).to(device) for a in (x_val, m_val))
    flops = forward_flops_per_jet(model, *flop_inputs)
    backbone_flops = forward_flops_per_jet(TruncatedBackbone(model), *flop_inputs) if strategy.uses_backbone else 0.0
    cost = {**parameter_counts(model), "flops_per_jet": flops, "backbone_flops_per_jet": backbone_flops, "head_flops_per_jet": flops - backbone_flops}

    resolved = {
        "task": task,
        "strategy": strategy.name,
        "base_strategy": strategy.base,
        "unfreeze_epoch": strategy.unfreeze_epoch,
        "n_blocks": strategy.n_blocks,
        "backbone_name": strategy.backbone,
        "inputs": strategy.inputs,
        "size": size,
        "seed": seed,
        "task_settings": dataclasses.asdict(spec),
        "settings": settings.to_dict(),
        "backbone": {"path": str(checkpoint.path), "sha256": checkpoint.sha256} if strategy.uses_backbone and checkpoint else None,
        "shards": {s: [str(p) for p in v] for s, v in shards.items()},
    }
    kept = {**best, "val_loss_full": best_val_loss}
    save_checkpoint(output_dir / "model.pt", {"config": {**resolved, "settings_hash": config_hash(resolved)}, "model": best_state, "best": kept})
    with ShardWriter(output_dir / "predictions.parquet") as writer:
        for sample, data in jets.tests.items():
            x, m = model_inputs(strategy, data, backbone_inputs)
            outputs = evaluate_outputs(model, x, m, settings.batch_size, device)
            keep = ("sample", "event", "jet_index", "label", "decay_mode", "jet_pt", "jet_eta", "gen_tau_vis_pt", "target")
            writer.write({**{k: data[k] for k in keep}, **predict(task, outputs, data)})
        writer.manifest = {"stage": "finetune", "task": task, "strategy": strategy.name, "size": size, "seed": seed, "test_jets": {s: int(len(d["target"])) for s, d in jets.tests.items()}}
    summary = {
        **resolved,
        "best_epoch": best["epoch"],
        "best_val_loss": best_val_loss,  # the kept model on the whole validation set
        "best_val_loss_subset": best["val_loss"],  # on the subset that chose the epoch
        "val_jets": int(len(x_val)),
        "val_subset_jets": int(len(x_sub)),
        "frozen_backbone_cache": {"train_jets": counts.cached, "val_jets": counts.cached_val, "megabytes": cache_bytes / MEGABYTE},
        "training_seconds": seconds,
        "device": str(device),
        **cost,
        **compute,
        **flop_estimates(counts, flops, backbone_flops),
    }
    for name, payload in (("config.json", resolved), ("summary.json", summary)):
        with atomic_output(output_dir / name) as tmp:
            tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    log.info("%s/%s n=%d seed=%d: best val loss %.4f at epoch %d (%.0f s)", task, strategy.name, size, seed, best_val_loss, best["epoch"], seconds)
    return summary


def _with_full_loss(row: Mapping, full_loss: float | str) -> dict:
    """``row`` with ``val_loss_full`` right after ``val_loss`` (empty but on the kept epoch)."""
    out = {}
    for key, value in row.items():
        if key != "val_loss_full":
            out[key] = value
        if key == "val_loss":
            out["val_loss_full"] = full_loss
    return out
