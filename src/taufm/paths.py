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
# File names inside the training stages' output directories (the stages write them, the rules
# declare them: both read them from here).
TRAINING_HISTORY_FILE = "history.csv"
LAST_CHECKPOINT_FILE = "checkpoint_last.pt"
TOKENIZER_MODEL_FILE = "tokenizer.pt"
TOKENIZER_SUMMARY_FILE = "summary.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_MODEL = f"{TOKENIZER_DIR}/{TOKENIZER_MODEL_FILE}"
TOKENIZER_HISTORY = f"{TOKENIZER_DIR}/{TRAINING_HISTORY_FILE}"
TOKENIZER_SUMMARY = f"{TOKENIZER_DIR}/{TOKENIZER_SUMMARY_FILE}"
TOKENIZER_FIGURES = "figures/tokenizer"
FIG2_STEM = "fig2_residuals"
FIG3_PID_STEM = "fig3_pid_confusion"
FIG3_CHARGE_STEM = "fig3_charge_confusion"
TOKENIZER_FIGURE_STEMS = (FIG2_STEM, FIG3_PID_STEM, FIG3_CHARGE_STEM)
PRETRAIN_DIR = "pretrain/{backbone}"  # one per backbone of pretrain.backbones
BACKBONE_FILE = "backbone.pt"
BEST_BACKBONE_FILE = "backbone_best.pt"
BACKBONE_CONFIG_FILE = "model_config.json"
PRETRAIN_OUTPUTS = (BACKBONE_FILE, BEST_BACKBONE_FILE, TRAINING_HISTORY_FILE, BACKBONE_CONFIG_FILE)
PRETRAIN_LOSS_CURVE = f"{PRETRAIN_DIR}/loss_curve"  # + .png / .pdf, drawn by a figure rule
FINETUNE_RUN = "finetune/{task}/{strategy}/n{size}/seed{seed}"
FINETUNE_FILES = ("config.json", TRAINING_HISTORY_FILE, "model.pt", "predictions.parquet", "summary.json")
TOKENIZED_EE = "tokenized/future/{sample}/{sample}_{shard}.parquet"
TOKENIZED_JETCLASS = "tokenized/jetclass/{process}/{process}_{shard}.parquet"
LOGS = "logs/{stage}/{name}.log"
BENCHMARKS = "benchmarks/{stage}/{name}.tsv"


def pretrain_file(backbone: str, name: str) -> str:
    """A file of one backbone's pretraining directory (relative to the results directory)."""
    return f"{PRETRAIN_DIR.format(backbone=backbone)}/{name}"


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
