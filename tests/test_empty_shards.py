"""A file whose events give no jet: a warning in the log and the manifest, an empty shard, and
stages after ingestion that take it in their stride instead of stopping the workflow."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from taufm import paths
from taufm.finetune.data import load_task_data
from taufm.finetune.tasks import task_settings
from taufm.ingest.ee import ingest_ee_file
from taufm.plots.dataquality import plot_dataquality
from taufm.pretrain.data import TokenBatches
from taufm.tokenizer.tokenize import tokenize_shard
from taufm.tokenizer.train import TokenizerSettings, train_tokenizer

from .edm4hep_events import leptonic_tau, tau_to_pi_nu, tau_to_rho_nu, write_events
from .test_tokenizer import TINY_MODEL, write_synthetic_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("empty")
    write_events(d / "Z_Ztautau_000.root", [leptonic_tau()])  # its only jet is cleaned away
    write_events(d / "Z_Ztautau_001.root", [tau_to_pi_nu(), tau_to_rho_nu()] * 20)
    ingested = [d / "ingested" / f"Z_Ztautau_00{i}.parquet" for i in range(2)]
    manifests = [ingest_ee_file(d / f"Z_Ztautau_00{i}.root", ingested[i], sample="Z_Ztautau") for i in range(2)]
    write_synthetic_shard(d / "jets.parquet", n_jets=300, seed=0)
    train_tokenizer([d / "jets.parquet"], d / "tokenizer", TokenizerSettings(epochs=1, batch_size=64, model=TINY_MODEL, device="cpu"))
    tokenized = [d / "tokenized" / p.name for p in ingested]
    token_manifests = [tokenize_shard(p, d / "tokenizer" / "tokenizer.pt", t) for p, t in zip(ingested, tokenized)]
    return d, ingested, manifests, tokenized, token_manifests


def test_an_empty_shard_is_written_with_a_warning(shards, caplog):
    d, ingested, manifests, _, _ = shards
    assert manifests[0]["jets"] == 0 and pq.read_metadata(ingested[0]).num_rows == 0
    assert "no jet passed the selection in 1 events" in manifests[0]["warnings"][0]
    assert "warnings" not in manifests[1] and manifests[1]["jets"] > 0
    with caplog.at_level("WARNING"):
        ingest_ee_file(d / "Z_Ztautau_000.root", d / "again.parquet", sample="Z_Ztautau")
    assert "no jet passed the selection" in caplog.text


def test_an_empty_shard_is_tokenized_into_an_empty_token_shard(shards):
    _, _, _, tokenized, token_manifests = shards
    table = pq.read_table(tokenized[0])
    assert table.num_rows == 0 and {"tokens", "token_mask", "n_tokens", "label", "split"} <= set(table.column_names)
    assert token_manifests[0]["jets"] == 0 and token_manifests[0]["warnings"]
    assert json.loads(paths.manifest(tokenized[0]).read_text())["token_ids"] == token_manifests[1]["token_ids"]
    assert pq.read_table(tokenized[1]).schema.equals(table.schema)


def test_later_stages_read_past_an_empty_shard(shards, tmp_path):
    _, ingested, _, tokenized, _ = shards
    batches = TokenBatches(tokenized, "train", batch_size=8, max_length=18)
    assert batches.n_rows == TokenBatches(tokenized[1:], "train", batch_size=8, max_length=18).n_rows > 0
    spec = task_settings("pt_regression", None)
    data = load_task_data("pt_regression", spec, {"Z_Ztautau": tokenized}, ["Z_Ztautau"], "train", ("tokens", "token_mask"))
    alone = load_task_data("pt_regression", spec, {"Z_Ztautau": tokenized[1:]}, ["Z_Ztautau"], "train", ("tokens", "token_mask"))
    assert len(data["target"]) == len(alone["target"]) > 0
    summary = plot_dataquality(ingested, tmp_path / "dq", sample="Z_Ztautau", kind="ee")
    assert summary["n_jets"] == pq.read_metadata(ingested[1]).num_rows
