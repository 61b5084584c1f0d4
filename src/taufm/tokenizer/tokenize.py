"""Turning ingested jet shards into token sequences with a trained tokenizer.

Each jet becomes ``[start, code_1 + 1, ..., code_n + 1, stop]`` followed by padding: the start
token is 0, the codes of the jet's candidates (pT order, after the tokenizer's angular cuts) are
shifted to 1..K, the stop token is K + 1; padding positions hold 0 and are false in
``token_mask``. Every other column of the input shard (labels, jet kinematics, split) is carried
over, so the token shards are all later stages need.

Beside the tokens, ``token_features`` holds what each token stands for, position by position
(:data:`TOKEN_FEATURE_NAMES`, zero at the start, stop and padding positions): the tokenizer's
view of the candidate (its preprocessed inputs: scaled log pT, Δη, Δφ, mass, the charge and the
five PID flags), which continuous-input backbones read instead of the token, and the four
lifetime channels of :mod:`taufm.finetune.inputs` (signed impact parameters and significances),
which the ``+lifetime`` strategies give their head. Parquet holds it flattened: (jets, positions
x channels); :func:`token_feature_array` restores the three axes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from taufm.data import CANDIDATE_FEATURE_COLUMNS, candidate_arrays, column_to_numpy, iter_parquet_batches, read_parquet_or_fail
from taufm.errors import TaufmError
from taufm.finetune.inputs import LIFETIME_CHANNEL_NAMES, LIFETIME_COLUMNS, LIFETIME_INPUT_COLUMNS, lifetime_channels
from taufm.ingest.shards import MASK_COLUMN, ShardWriter
from taufm.tokenizer.preprocessing import PID_FLAGS
from taufm.tokenizer.train import load_tokenizer

log = logging.getLogger(__name__)

START_TOKEN = 0
TOKEN_FEATURES_COLUMN = "token_features"
CANDIDATE_CHANNEL_NAMES = ("scaled_log_pt", "scaled_deta", "scaled_dphi", "scaled_mass", "charge", *PID_FLAGS)  # the tokenizer's preprocessed inputs
TOKEN_FEATURE_NAMES = (*CANDIDATE_CHANNEL_NAMES, *LIFETIME_CHANNEL_NAMES)
N_CANDIDATE_CHANNELS = len(CANDIDATE_CHANNEL_NAMES)


def token_feature_array(flat: np.ndarray) -> np.ndarray:
    """(jets, positions, channels) float32 from the stored (jets, positions x channels)."""
    flat = np.asarray(flat, dtype=np.float32)
    channels = len(TOKEN_FEATURE_NAMES)
    return flat.reshape(len(flat), flat.shape[1] // channels if flat.ndim == 2 else 0, channels)


def token_features(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(jets, candidates + 2, channels): each real candidate's channels at its token's position
    (the candidates in the order :func:`token_sequences` gives them), zero elsewhere."""
    n_jets, width, n_channels = channels.shape
    order = np.argsort(~mask, axis=1, kind="stable")
    compact = np.take_along_axis(channels, order[..., None], axis=1)
    real = np.arange(width)[None, :] < mask.sum(axis=1)[:, None]
    out = np.zeros((n_jets, width + 2, n_channels), dtype=np.float32)
    out[:, 1 : width + 1] = np.where(real[..., None], compact, 0.0)
    return out


def stop_token(codebook_size: int) -> int:
    return codebook_size + 1


def token_sequences(codes: np.ndarray, mask: np.ndarray, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, token_mask) of shape (jets, candidates + 2) from per-candidate codes and mask."""
    n_jets, width = codes.shape
    order = np.argsort(~mask, axis=1, kind="stable")  # real candidates first, in their order
    compact = np.take_along_axis(codes, order, axis=1)
    n = mask.sum(axis=1)
    position = np.arange(width)[None, :]
    tokens = np.zeros((n_jets, width + 2), dtype=np.int32)
    tokens[:, 1 : width + 1] = np.where(position < n[:, None], compact + 1, 0)
    tokens[np.arange(n_jets), n + 1] = stop_token(codebook_size)
    token_mask = np.arange(width + 2)[None, :] < (n + 2)[:, None]
    return tokens, token_mask


def codes_of_tokens(tokens: np.ndarray, token_mask: np.ndarray, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`token_sequences`: per-candidate codes (-1 where none) and mask."""
    inner = tokens[:, 1:-1].astype(np.int64) - 1
    inner_mask = token_mask[:, 1:-1] & (tokens[:, 1:-1] != stop_token(codebook_size)) & (tokens[:, 1:-1] != START_TOKEN)
    return np.where(inner_mask, inner, -1), inner_mask


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _lifetime_or_zeros(table: dict, has_lifetime: bool, candidates_shape: tuple[int, ...]) -> np.ndarray:
    """The lifetime channels of the candidates, (jets, candidates, channels); zeros for a shard
    ingested without the impact-parameter columns."""
    if has_lifetime:
        return lifetime_channels(table)
    return np.zeros((*candidates_shape, len(LIFETIME_CHANNEL_NAMES)), dtype=np.float32)


@torch.no_grad()
def tokenize_shard(shard: str | Path, tokenizer: str | Path, output: str | Path, batch_size: int = 4096) -> dict:
    """Tokenize one ingested shard; returns the manifest written beside the output."""
    shard, tokenizer = Path(shard), Path(tokenizer)
    model, preprocessing = load_tokenizer(tokenizer)
    k = model.config.codebook_size
    try:
        parquet = pq.ParquetFile(shard)
    except Exception as err:
        raise TaufmError(f"{shard}: not a readable Parquet shard ({err})") from err
    names = parquet.schema_arrow.names
    missing = [c for c in (*CANDIDATE_FEATURE_COLUMNS, MASK_COLUMN) if c not in names]
    if missing:
        raise TaufmError(f"{shard}: missing column(s) {', '.join(missing)} (tokenize reads ingested shards)")
    carried = [c for c in names if not c.startswith("cand_")]
    has_lifetime = all(c in names for c in LIFETIME_INPUT_COLUMNS)
    if not has_lifetime:
        log.warning("%s has no %s columns: its lifetime channels are zero", shard, "/".join(LIFETIME_COLUMNS))
    empty = parquet.metadata.num_rows == 0
    if empty:
        log.warning("%s holds no jets: writing an empty token shard", shard)
    jets = dropped = 0
    # An empty shard (a file whose events gave no jet) still yields a token shard, with no rows.
    batches = [read_parquet_or_fail(shard, parquet.read)] if empty else iter_parquet_batches(parquet, shard, batch_size)
    with ShardWriter(output) as writer:
        for batch in batches:
            table = {c: column_to_numpy(batch.column(c)) for c in batch.schema.names}
            features, mask = candidate_arrays(table)
            inputs = preprocessing.model_inputs(features, mask)
            codes = np.full(inputs["mask"].shape, -1, dtype=np.int64)
            if len(codes):
                x = torch.from_numpy(inputs["inputs"])
                m = torch.from_numpy(inputs["mask"])
                latent = model.encode(x, m)
                codes[inputs["mask"]] = model.quantizer.nearest(latent[m]).numpy()
            tokens, token_mask = token_sequences(codes, inputs["mask"], k)
            channels = np.concatenate([inputs["inputs"], _lifetime_or_zeros(table, has_lifetime, inputs["inputs"].shape[:2])], axis=-1)
            features = token_features(channels, inputs["mask"])
            columns = {**{c: table[c] for c in carried}, "n_tokens": token_mask.sum(axis=1).astype(np.int16), "tokens": tokens, "token_mask": token_mask}
            writer.write({**columns, TOKEN_FEATURES_COLUMN: features.reshape(len(features), features.shape[1] * features.shape[2])})
            jets += len(tokens)
            dropped += int((mask & ~inputs["mask"]).sum())
        writer.manifest = {
            "stage": "tokenize",
            "input": str(shard),
            "jets": jets,
            **({"warnings": [f"{shard.name} holds no jets"]} if empty else {}),
            "candidates_dropped_by_tokenizer_cuts": dropped,
            "tokenizer": {"path": str(tokenizer), "sha256": _file_digest(tokenizer), "codebook_size": k, "model": model.config.to_dict(), "preprocessing": preprocessing.to_dict()},
            "token_ids": {"start": START_TOKEN, "codes": [1, k], "stop": stop_token(k), "padding": 0, "vocabulary_size": k + 2},
            "token_features": list(TOKEN_FEATURE_NAMES),
        }
    log.info("tokenized %s -> %s: %d jets", shard, output, jets)
    return dict(writer.manifest)
