"""Every output path pattern of the workflow, in one place.

The Snakemake rules and the package both build paths from these patterns (``{name}`` fields are
Snakemake wildcards), so no path string is written twice. All paths are relative to the results
directory given in the config (``results_dir``, default ``results``).
"""

from __future__ import annotations

from pathlib import Path

SIMULATED_EE = "simulated/future/{sample}/{sample}_{shard}.root"
SIMULATED_JETCLASS = "simulated/jetclass/{process}_{shard}.root"
INGESTED_EE = "ingested/future/{sample}/{sample}_{shard}.parquet"
INGESTED_JETCLASS = "ingested/jetclass/{process}/{process}_{shard}.parquet"
DATAQUALITY = "figures/dataquality/dataquality_{sample}"  # + .png / .pdf
TOKENIZER_MODEL = "tokenizer/tokenizer.pt"
TOKENIZER_HISTORY = "tokenizer/history.csv"
TOKENIZER_SUMMARY = "tokenizer/summary.json"
TOKENIZER_FIGURES = "figures/tokenizer"
TOKENIZER_FIGURE_STEMS = ("fig2_residuals", "fig3_pid_confusion", "fig3_charge_confusion")
PRETRAIN_DIR = "pretrain"
PRETRAIN_OUTPUTS = ("backbone.pt", "backbone_best.pt", "history.csv", "model_config.json", "loss_curve.png", "loss_curve.pdf")
FINETUNE_RUN = "finetune/{task}/{strategy}/n{size}/seed{seed}"
FINETUNE_FILES = ("config.json", "history.csv", "model.pt", "predictions.parquet", "summary.json")
TOKENIZED_EE = "tokenized/future/{sample}/{sample}_{shard}.parquet"
TOKENIZED_JETCLASS = "tokenized/jetclass/{process}/{process}_{shard}.parquet"
LOGS = "logs/{stage}/{name}.log"
BENCHMARKS = "benchmarks/{stage}/{name}.tsv"


def shard_label(index: int) -> str:
    """Shard indices are written with (at least) three digits, as in JetClass file names (``_000``)."""
    return f"{index:03d}"


def simulated_ee(results: str | Path, sample: str, shard: int) -> Path:
    return Path(results) / SIMULATED_EE.format(sample=sample, shard=shard_label(shard))


def simulated_jetclass(results: str | Path, process: str, shard: int) -> Path:
    return Path(results) / SIMULATED_JETCLASS.format(process=process, shard=shard_label(shard))


def ingested_ee(results: str | Path, sample: str, shard: int) -> Path:
    return Path(results) / INGESTED_EE.format(sample=sample, shard=shard_label(shard))


def ingested_jetclass(results: str | Path, process: str, shard: int) -> Path:
    return Path(results) / INGESTED_JETCLASS.format(process=process, shard=shard_label(shard))


def tokenized_ee(results: str | Path, sample: str, shard: int) -> Path:
    return Path(results) / TOKENIZED_EE.format(sample=sample, shard=shard_label(shard))


def tokenized_jetclass(results: str | Path, process: str, shard: int) -> Path:
    return Path(results) / TOKENIZED_JETCLASS.format(process=process, shard=shard_label(shard))


def manifest(shard: str | Path) -> Path:
    """The JSON manifest written beside a Parquet shard."""
    shard = Path(shard)
    return shard.with_name(shard.name + ".json")
