# Shared helpers: config validation, path patterns, the lists of every output.

import functools
import json
from pathlib import Path

from taufm import paths, remote
from taufm.config import SCHEMA_PATH, SETTINGS_PAYLOADS, pretrain_backbone_payload, validate_config
from taufm.config_checks import check_cross_settings
from taufm.errors import TaufmError
from taufm.finetune.strategies import DEFAULT_BACKBONE, parse_strategy
from taufm.provenance import STAGE_SOURCES, stage_source_hash

validate_config(config, SCHEMA_PATH)  # the schema ships in the package: src/taufm/schemas/
check_cross_settings(config)  # ratios, head widths, strategies vs the backbone: before any job

RESULTS = config["results_dir"]
EMBEDDED = config["data"]["source"] == "embedded"
# torch's intra-op threads in the tokenizer, pretraining and fine-tuning jobs (a param of each, so
# a change reruns them): from the config, never from `threads`, which --cores caps, so that
# --cores does not change the results.
TORCH_THREADS = config["compute"]["torch_threads"]
FINETUNE_THREADS = config["compute"]["finetune_threads"]
FUTURE_SAMPLES = ["ZH_Htautau", "Z_Ztautau", "qq"]
JETCLASS_PROCESSES = ["ZJetsToNuNu", "TTBar"]


# The package sources each stage runs, hashed (taufm.provenance.STAGE_SOURCES): a rule carries
# its stage's hash as a param, so it reruns when those sources change.
CODE = {stage: stage_source_hash(stage) for stage in STAGE_SOURCES}


wildcard_constraints:
    sample="|".join(FUTURE_SAMPLES),
    process="|".join(JETCLASS_PROCESSES),
    shard=r"\d\d\d+",
    dq_sample="|".join(FUTURE_SAMPLES + JETCLASS_PROCESSES),


def result(pattern):
    """A path pattern from taufm.paths, under the results directory."""
    return str(Path(RESULTS) / pattern)


def as_json(value):
    """Structured settings travel to `taufm` subcommands as one JSON argument."""
    return json.dumps(value, sort_keys=True)


# root:// inputs as the server described them in this DAG build (from a glob's listing or a stat).
REMOTE_FILES = {}


def remote_file(url):
    """A root:// input's size and mtime, asked of the server once per DAG build."""
    if url not in REMOTE_FILES:
        REMOTE_FILES[url] = remote.stat(url)
    return REMOTE_FILES[url]


@functools.cache
def _expand_globs(kind, name):
    """data.files.<kind>.<name>: local paths and globs, root:// URLs and remote globs (listed on
    the server once per DAG build), as a tuple of files (taufm.remote.expand_patterns)."""
    patterns = config["data"]["files"][kind].get(name, [])
    if not patterns:
        raise TaufmError(f"data.source is 'files' but data.files.{kind}.{name} lists no files")
    return tuple(
        remote.expand_patterns(patterns, f"data.files.{kind}.{name}", stat_file=remote_file, listed=REMOTE_FILES)
    )


def _listed(kind, name):
    """Files listed for a sample are read; with data.source: embedded the others are simulated."""
    return bool(config["data"]["files"][kind].get(name)) or not EMBEDDED


def future_inputs(sample):
    """The EDM4hep files of one Fuτure sample: the user's files, or simulated shards."""
    if _listed("future", sample):
        return list(_expand_globs("future", sample))
    shards = config["simulate"]["future"]["shards"][sample]
    return [str(paths.simulated_ee(RESULTS, sample, i)) for i in range(shards)]


def jetclass_inputs(process):
    """The JetClass files of one process: the user's files, or simulated shards."""
    if _listed("jetclass", process):
        return list(_expand_globs("jetclass", process))
    shards = config["simulate"]["jetclass"]["shards"][process]
    return [str(paths.simulated_jetclass(RESULTS, process, i)) for i in range(shards)]


def ee_source(wildcards):
    """The file (path or root:// URL) one e+e- ingestion job reads."""
    return future_inputs(wildcards.sample)[int(wildcards.shard)]


def jetclass_source(wildcards):
    """The file (path or root:// URL) one JetClass ingestion job reads."""
    return jetclass_inputs(wildcards.process)[int(wildcards.shard)]


def local_input(source):
    """Input function of an ingestion rule: its file if local (Snakemake compares its mtime), none
    for a root:// URL, which Snakemake cannot see: the rule's `remote` param stands for it."""

    def files(wildcards):
        path = source(wildcards)
        return [] if remote.is_remote(path) else [path]

    return files


def remote_identity(source):
    """Param function of an ingestion rule: size and mtime of a root:// input at DAG-build time
    (empty for a local file), so that a file changed on the server reruns the job."""

    def identity(wildcards):
        path = source(wildcards)
        return remote_file(path).identity() if remote.is_remote(path) else ""

    return identity


def all_future_inputs():
    return [f for sample in FUTURE_SAMPLES for f in future_inputs(sample)]


def all_jetclass_inputs():
    return [f for process in JETCLASS_PROCESSES for f in jetclass_inputs(process)]


def ingested_shards(name):
    """The Parquet shards of one Fuτure sample or JetClass process (one per input file)."""
    if name in FUTURE_SAMPLES:
        return [str(paths.ingested_ee(RESULTS, name, i)) for i in range(len(future_inputs(name)))]
    return [str(paths.ingested_jetclass(RESULTS, name, i)) for i in range(len(jetclass_inputs(name)))]


def all_ingested():
    return [s for name in FUTURE_SAMPLES + JETCLASS_PROCESSES for s in ingested_shards(name)]


def all_dataquality_figures():
    stems = [result(paths.DATAQUALITY.format(sample=name)) for name in FUTURE_SAMPLES + JETCLASS_PROCESSES]
    return [stem + ext for stem in stems for ext in (".png", ".pdf")]


def all_tokenized():
    ee = [str(paths.tokenized_ee(RESULTS, name, i)) for name in FUTURE_SAMPLES for i in range(len(future_inputs(name)))]
    jc = [
        str(paths.tokenized_jetclass(RESULTS, name, i))
        for name in JETCLASS_PROCESSES
        for i in range(len(jetclass_inputs(name)))
    ]
    return ee + jc


def all_tokenizer_outputs():
    figures = [
        result(f"{paths.TOKENIZER_FIGURES}/{stem}.{ext}")
        for stem in paths.TOKENIZER_FIGURE_STEMS
        for ext in ("png", "pdf")
    ]
    return [result(paths.TOKENIZER_MODEL), result(paths.TOKENIZER_SUMMARY), *figures, *all_tokenized()]


# ---- Stage settings and the params and input lists built from them (functions live here,
# rules in the stage files, as Snakemake's linter asks) ----

# Ingestion
INGEST = config["ingest"]


def settings_payload(name):
    """The JSON settings of one command, cut from the config as taufm.config.SETTINGS_PAYLOADS
    says (the command checks them against the same part of the schema)."""
    return as_json(SETTINGS_PAYLOADS[name].from_config(config))


def ee_ingest_settings():
    return settings_payload("ingest.future")


def jetclass_ingest_settings():
    return settings_payload("ingest.jetclass")


# Tokenizer
TOKENIZER = config["tokenizer"]


def tokenizer_settings():
    return settings_payload("tokenizer")


# Pretraining
PRETRAIN = config["pretrain"]
BACKBONES = list(PRETRAIN["backbones"])


def pretrain_settings(backbone):
    """The JSON settings of one backbone's pretraining job (taufm.config.pretrain_backbone_payload)."""
    return as_json(pretrain_backbone_payload(config, backbone))


def backbone_checkpoint(backbone):
    return result(paths.pretrain_file(backbone, paths.BEST_BACKBONE_FILE))


def all_pretrain_outputs():
    files = [result(paths.pretrain_file(b, name)) for b in BACKBONES for name in paths.PRETRAIN_OUTPUTS]
    curves = [result(paths.PRETRAIN_LOSS_CURVE.format(backbone=b)) + ext for b in BACKBONES for ext in (".png", ".pdf")]
    return files + curves


def pretrain_command():
    """`taufm pretrain` as a list of words (each quoted in the rule), under torchrun when more
    than one process is configured."""
    if PRETRAIN["processes"] > 1:
        return [
            "torchrun",
            "--standalone",
            "--nproc_per_node",
            str(PRETRAIN["processes"]),
            "-m",
            "taufm.cli",
            "pretrain",
        ]
    return ["taufm", "pretrain"]


# Fine-tuning grid
FINETUNE = config["finetune"]


def finetune_settings():
    return settings_payload("finetune")


def strategy_backbone(strategy):
    """The backbone a strategy starts from (None for the ParT baseline); names were checked
    against pretrain.backbones before any job (taufm.config_checks)."""
    return parse_strategy(strategy, FINETUNE["unfreeze_epoch"], BACKBONES).backbone


def finetune_shards(wildcards):
    """Token shards of every e+e- sample (ingested shards for the ParT baseline)."""
    if strategy_backbone(wildcards.strategy) is None:
        return {name: ingested_shards(name) for name in FUTURE_SAMPLES}
    return {
        name: [str(paths.tokenized_ee(RESULTS, name, i)) for i in range(len(future_inputs(name)))]
        for name in FUTURE_SAMPLES
    }


def finetune_inputs(wildcards):
    shards = [s for files in finetune_shards(wildcards).values() for s in files]
    backbone = strategy_backbone(wildcards.strategy)
    return shards if backbone is None else shards + [backbone_checkpoint(backbone)]


def finetune_shard_arguments(kind, wildcards):
    """SAMPLE=SHARD words of a job: of ``kind``'s strategy, or (None) the wildcards'."""
    return [f"{name}={s}" for name, files in finetune_shards(kind or wildcards).items() for s in files]


def finetune_backbone_argument(wildcards):
    backbone = strategy_backbone(wildcards.strategy)
    return [] if backbone is None else ["--backbone", backbone_checkpoint(backbone)]


def finetune_runs():
    """Every run directory of the grid and the ablations."""
    grid, ablations = FINETUNE["grid"], FINETUNE["ablations"]
    cells = [
        (t, s, n, seed)
        for t in grid["tasks"]
        for s in grid["strategies"]
        for n in grid["sizes"]
        for seed in grid["seeds"]
    ]
    ablation_strategies = [f"finetune-unfreeze{k}" for k in ablations["unfreeze_epochs"]] + [
        f"finetune-blocks{b}" for b in ablations["n_blocks"]
    ]
    cells += [
        (t, s, ablations["size"], seed)
        for t in ablations["tasks"]
        for s in [*ablation_strategies, "fixed", "finetune"]
        for seed in ablations["seeds"]
    ]
    return sorted({result(paths.FINETUNE_RUN.format(task=t, strategy=s, size=n, seed=seed)) for t, s, n, seed in cells})


# Evaluation
EVALUATE = config["evaluate"]
if EVALUATE["figure_size"] not in FINETUNE["grid"]["sizes"]:
    raise TaufmError(
        f"evaluate.figure_size {EVALUATE['figure_size']} is not among finetune.grid.sizes {FINETUNE['grid']['sizes']}"
    )
if "decay_mode" not in FINETUNE["grid"]["tasks"] or "finetune" not in FINETUNE["grid"]["strategies"]:
    raise TaufmError("Fig. 6 needs the decay_mode task and the finetune strategy in finetune.grid")


def compared_backbones():
    """The backbones besides tokens-ntp whose embeddings are probed: those the grid fine-tunes
    (finetune@<backbone>) on decay modes at the figure size."""
    if "decay_mode" not in FINETUNE["grid"]["tasks"]:
        return []
    return [b for b in BACKBONES if b != DEFAULT_BACKBONE and f"finetune@{b}" in FINETUNE["grid"]["strategies"]]


def compared_backbone_files(backbone):
    """(pretrained checkpoint, fine-tuned decay-mode model) of one probed backbone."""
    run = paths.FINETUNE_RUN.format(
        task="decay_mode",
        strategy=f"finetune@{backbone}",
        size=EVALUATE["figure_size"],
        seed=FINETUNE["grid"]["seeds"][0],
    )
    return [backbone_checkpoint(backbone), result(f"{run}/model.pt")]


def all_evaluation_outputs():
    stems = ("fig4_validation_loss", "fig5_physics", "fig6_tsne", "fig7_ablations", "fig8_backbones")
    probes = [
        result("embedding_probes.csv"),
        result("figures/embedding_probes.png"),
        result("figures/embedding_probes.pdf"),
    ]
    return [result("metrics.csv"), result("figures/summary_table.md"), *probes] + [
        result(f"figures/{s}.{e}") for s in stems for e in ("png", "pdf")
    ]
