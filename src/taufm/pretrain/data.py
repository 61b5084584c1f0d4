"""Streaming token batches from tokenized shards, one Parquet row group at a time.

Memory holds one row group and one batch, however large the dataset. Each epoch visits the
(shard, row group) pairs in an order drawn from (seed, epoch) and shuffles rows within each row
group, so the batch sequence is fixed by the seed. Under DistributedDataParallel every process
builds the same global batches and takes its rows ``rank::world_size``: the global batch, and so
the training, is the same for any number of processes.

With ``features=True`` each batch also carries the candidates' continuous features at their
token positions (the token shards' ``token_features``, its tokenizer channels: what
continuous-input backbones read and what a feature-predicting objective targets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from taufm import paths
from taufm.data import column_to_numpy, read_parquet_or_fail
from taufm.errors import TaufmError
from taufm.ingest.shards import SPLITS
from taufm.tokenizer.tokenize import N_CANDIDATE_CHANNELS, token_feature_array

TOKEN_COLUMNS = ("tokens", "token_mask", "split")
FEATURES_COLUMN = "token_features"


def token_vocabulary(shards: Sequence[str | Path]) -> dict:
    """The token ids of the shards (from their manifests); all shards must share one tokenizer."""
    found = None
    for shard in shards:
        manifest_path = paths.manifest(shard)
        try:
            manifest = json.loads(Path(manifest_path).read_text())
            ids = {"token_ids": manifest["token_ids"], "tokenizer_sha256": manifest["tokenizer"]["sha256"]}
            int(ids["token_ids"]["vocabulary_size"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise TaufmError(f"{manifest_path}: not the manifest of a token shard ({err})") from err
        if found is None:
            found = ids
        elif ids != found:
            raise TaufmError(f"{shard}: tokenized with another tokenizer than {shards[0]}")
    if found is None:
        raise TaufmError("no token shards given")
    return found


class TokenBatches:
    def __init__(
        self,
        shards: Sequence[str | Path],
        split: str,
        batch_size: int,
        max_length: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        features: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise TaufmError(f"unknown split {split!r}")
        self.shards = [Path(s) for s in shards]
        self.split_index = SPLITS.index(split)
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.features = features
        self.columns = [*TOKEN_COLUMNS, *([FEATURES_COLUMN] if features else [])]
        self.row_groups: list[tuple[int, int]] = []
        self.n_rows = 0
        for i, shard in enumerate(self.shards):
            try:
                parquet = pq.ParquetFile(shard)
            except Exception as err:
                raise TaufmError(f"{shard}: not a readable token shard ({err})") from err
            missing = [c for c in self.columns if c not in parquet.schema_arrow.names]
            if missing:
                hint = "tokenized before token features existed: tokenize again" if missing == [FEATURES_COLUMN] else "is it a token shard?"
                raise TaufmError(f"{shard}: missing column(s) {', '.join(missing)} ({hint})")
            split_column = column_to_numpy(read_parquet_or_fail(shard, lambda: parquet.read(columns=["split"]), "token shard").column("split"))
            self.n_rows += int((split_column == self.split_index).sum())
            self.row_groups += [(i, g) for g in range(parquet.num_row_groups)]

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n_rows, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def _rows(self, epoch: int) -> Iterator[tuple[np.ndarray, ...]]:
        rng = np.random.default_rng([self.seed, epoch])
        for k in rng.permutation(len(self.row_groups)):
            shard, group = self.row_groups[k]
            path = self.shards[shard]
            table = read_parquet_or_fail(path, lambda: pq.ParquetFile(path).read_row_group(group, columns=self.columns), "token shard")
            keep = column_to_numpy(table.column("split")) == self.split_index
            tokens = column_to_numpy(table.column("tokens"))[keep][:, : self.max_length]
            mask = column_to_numpy(table.column("token_mask"))[keep][:, : self.max_length]
            order = rng.permutation(len(tokens))
            arrays = [tokens[order], mask[order]]
            if self.features:
                features = token_feature_array(column_to_numpy(table.column(FEATURES_COLUMN))[keep])
                arrays.append(features[order, : self.max_length, :N_CANDIDATE_CHANNELS])
            yield tuple(arrays)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This process's share of each global batch of the epoch: (tokens, mask) tensors, and
        the features (batch, length, channels) with ``features``."""
        buffers: list[list[np.ndarray]] = []
        buffered = 0
        mine = slice(self.rank, None, self.world_size)
        dtypes = (np.int64, bool, np.float32)

        def emit(arrays: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
            return tuple(torch.from_numpy(np.ascontiguousarray(a[mine].astype(t))) for a, t in zip(arrays, dtypes))

        for arrays in self._rows(epoch):
            buffers.append(list(arrays))
            buffered += len(arrays[0])
            while buffered >= self.batch_size:
                joined = [np.concatenate(parts) for parts in zip(*buffers)]
                yield emit([a[: self.batch_size] for a in joined])
                buffers = [[a[self.batch_size :] for a in joined]]
                buffered -= self.batch_size
        if buffered >= self.world_size:
            yield emit([np.concatenate(parts) for parts in zip(*buffers)])
