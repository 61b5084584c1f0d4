# taufm: reconstructing hadronically decaying tau leptons with a jet foundation model, end to end.
#
#   snakemake --cores all                                              # default run (embedded data)
#   snakemake --cores all --configfile workflow/presets/smoke.yaml     # minutes, tiny data
#   snakemake --profile slurm all                                      # on a Slurm cluster
#
# The workflow is the house plan; the package (src/taufm) does the work: every rule runs one
# `taufm <stage>` subcommand with the settings it depends on passed as params.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    """Everything the landed stages produce: the ingested jet shards of every sample with their
    data-quality figures, the trained tokenizer with the paper's Fig. 2-3 checks, the token
    shards, every pretrained backbone, the fine-tuning grid, the metrics table and the paper's
    figures (from the simulated files, or the real files in data.files)."""
    input:
        all_ingested(),
        all_dataquality_figures(),
        all_tokenizer_outputs(),
        all_pretrain_outputs(),
        [f"{run}/{name}" for run in finetune_runs() for name in paths.FINETUNE_FILES],
        all_evaluation_outputs(),
