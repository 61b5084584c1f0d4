# Shared helpers: config validation, path patterns, the lists of every output.

import glob
import json
from pathlib import Path

from taufm import paths
from taufm.config import validate_config
from taufm.errors import TaufmError
from taufm.provenance import source_hash

validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

RESULTS = config["results_dir"]
EMBEDDED = config["data"]["source"] == "embedded"
FUTURE_SAMPLES = ["ZH_Htautau", "Z_Ztautau", "qq"]
JETCLASS_PROCESSES = ["ZJetsToNuNu", "TTBar"]


# The package sources each stage runs (see taufm.provenance): a rule reruns when they change.
_SHARED = ("errors", "io", "config", "arrays")
CODE = {
    "simulate": source_hash("sim", *_SHARED),
    "ingest": source_hash("ingest", "physics", *_SHARED),
    "dataquality": source_hash("plots/dataquality", "plots/style", *_SHARED),
    "tokenizer": source_hash("tokenizer", "models/vqvae", "train", "data", "ingest/shards", *_SHARED),
    "tokenizer_checks": source_hash("plots/tokenizer_checks", "plots/style", "tokenizer", "models/vqvae", "data", *_SHARED),
    "pretrain": source_hash("pretrain", "models/gpt", "train", "data", "ingest/shards", *_SHARED),
    "finetune": source_hash("finetune", "models", "train", "data", "pretrain", "tokenizer/preprocessing", "ingest/shards", "physics", *_SHARED),
    "metrics": source_hash("evaluate/metrics", "physics", *_SHARED),
    "figures": source_hash("plots/paper_figures", "plots/style", *_SHARED),
    "embeddings": source_hash("evaluate/embeddings", "models/gpt", "pretrain", "plots/style", "data", *_SHARED),
}


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


def _expand_globs(kind, name):
    patterns = config["data"]["files"][kind].get(name, [])
    if not patterns:
        raise TaufmError(f"data.source is 'files' but data.files.{kind}.{name} lists no files")
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise TaufmError(f"data.files.{kind}.{name}: {pattern!r} matches no file")
        found.extend(matches)
    return found


def future_inputs(sample):
    """The EDM4hep files of one Fuτure sample: simulated shards, or the user's real files."""
    if EMBEDDED:
        shards = config["simulate"]["future"]["shards"][sample]
        return [str(paths.simulated_ee(RESULTS, sample, i)) for i in range(shards)]
    return _expand_globs("future", sample)


def jetclass_inputs(process):
    """The JetClass files of one process: simulated shards, or the user's real files."""
    if EMBEDDED:
        shards = config["simulate"]["jetclass"]["shards"][process]
        return [str(paths.simulated_jetclass(RESULTS, process, i)) for i in range(shards)]
    return _expand_globs("jetclass", process)


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
    jc = [str(paths.tokenized_jetclass(RESULTS, name, i)) for name in JETCLASS_PROCESSES for i in range(len(jetclass_inputs(name)))]
    return ee + jc


def all_tokenizer_outputs():
    figures = [result(f"{paths.TOKENIZER_FIGURES}/{stem}.{ext}") for stem in paths.TOKENIZER_FIGURE_STEMS for ext in ("png", "pdf")]
    return [result(paths.TOKENIZER_MODEL), result(paths.TOKENIZER_SUMMARY), *figures, *all_tokenized()]
