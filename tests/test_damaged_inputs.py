"""Damaged inputs that only show late: a Parquet file whose footer reads but whose data pages do
not, and another stage's checkpoint given as the backbone. Each is a TaufmError naming the file,
never a raw pyarrow or KeyError traceback."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from taufm.data import iter_parquet_batches, read_parquet_or_fail, read_shards
from taufm.errors import TaufmError
from taufm.finetune.train import run_finetune
from taufm.pretrain.data import TokenBatches

from .test_finetune import SETTINGS, world  # noqa: F401 (the fixture)


def _damage_data_pages(path, column: str) -> None:
    """Overwrite the middle of ``column``'s first column chunk: the footer stays intact."""
    metadata = pq.read_metadata(path)
    names = [metadata.schema.column(i).path.split(".")[0] for i in range(metadata.num_columns)]
    chunk = metadata.row_group(0).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    end = start + chunk.total_compressed_size
    middle = (chunk.data_page_offset + end) // 2  # inside the data pages, past any dictionary page
    data = bytearray(path.read_bytes())
    data[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _shard(path, n: int = 20_000) -> None:
    rng = np.random.default_rng(0)
    table = pa.table({"jet_pt": rng.normal(30, 5, n).astype(np.float32), "split": rng.integers(0, 3, n).astype(np.int8)})
    pq.write_table(table, path, compression="zstd")


def test_a_damaged_data_page_is_named(tmp_path):
    path = tmp_path / "jets.parquet"
    _shard(path)
    _damage_data_pages(path, "jet_pt")
    assert pq.read_schema(path).names == ["jet_pt", "split"], "the footer still reads: only the data are damaged"
    with pytest.raises((pa.ArrowException, OSError)):
        pq.read_table(path)
    with pytest.raises(TaufmError, match=r"jets\.parquet: cannot read the Parquet shard, the file is damaged"):
        read_shards([path], ["jet_pt"])
    with pytest.raises(TaufmError, match=r"jets\.parquet: cannot read the token shard"):
        read_parquet_or_fail(path, lambda: pq.read_table(path), "token shard")
    with pytest.raises(TaufmError, match=r"jets\.parquet: cannot read"):
        list(iter_parquet_batches(pq.ParquetFile(path), path, 1000))
    assert read_shards([path], ["split"])["split"].size == 20_000, "the undamaged column still reads"


def test_a_damaged_token_shard_stops_pretraining_data_with_its_name(tmp_path):
    n, length = 4000, 8
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 30, (n, length)).astype(np.int16)
    table = pa.table(
        {
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), length),
            "token_mask": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * length, dtype=bool)), length),
            "split": pa.array(np.zeros(n, dtype=np.int8)),
        }
    )
    path = tmp_path / "tokens.parquet"
    pq.write_table(table, path, compression="zstd")
    _damage_data_pages(path, "tokens")
    batches = TokenBatches([path], "train", batch_size=64, max_length=length)  # the split column is intact
    with pytest.raises(TaufmError, match=r"tokens\.parquet: cannot read the token shard, the file is damaged"):
        list(batches.epoch(0))


def test_another_stages_checkpoint_as_the_backbone_is_named(world, tmp_path):  # noqa: F811
    _, shards, backbone = world
    not_a_backbone = tmp_path / "tokenizer.pt"
    torch.save({"config": {"codebook_size": 32, "vocab_size": 34}, "model": {}}, not_a_backbone)
    for strategy in ("scratch", "fixed"):
        with pytest.raises(TaufmError, match=r"tokenizer\.pt: not a pretrained backbone checkpoint"):
            run_finetune("tau_id", strategy, 10, 0, shards, tmp_path / strategy, SETTINGS, not_a_backbone)
        assert not (tmp_path / strategy).exists(), "nothing written"
