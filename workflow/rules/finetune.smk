# The fine-tuning grid: one job per (task, strategy, training size, seed), plus the ablations
# (unfreeze epoch, number of pretrained blocks) and the supervised ParT baseline. With
# finetune.pack.by set, small cells of one task share a job instead (taufm.finetune.packs): the
# finetune_pack* rules below, whose outputs are the same run directories.

from functools import partial
from types import SimpleNamespace

from taufm.finetune.packs import cell_settings, pack_cell_arguments, pack_directory, pack_families
from taufm.finetune.strategies import STRATEGY_PATTERN


wildcard_constraints:
    task="tau_id|pt_regression|decay_mode",
    strategy=STRATEGY_PATTERN,
    size=r"\d+",
    seed=r"\d+",


FINETUNE_CELL_SETTINGS = as_json(cell_settings(SETTINGS_PAYLOADS["finetune"].from_config(config)))
FINETUNE_PACKS = pack_families(FINETUNE)


rule finetune:
    """One cell of the grid: train the task head (and, as the strategy says, the backbone) on a
    nested, seeded subset of training jets; keep the best-validation-loss model and its
    predictions on every test sample."""
    input:
        finetune_inputs,
    output:
        [result(f"{paths.FINETUNE_RUN}/{name}") for name in paths.FINETUNE_FILES],
    log:
        result(paths.LOGS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}"))
    conda:
        "../envs/taufm.yaml"
    threads: FINETUNE_THREADS  # compute.finetune_threads, for scheduling; --cores may cap it, --threads below stays
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1 if FINETUNE["device"] != "cpu" else 0,
    params:
        code=CODE["finetune"],
        settings=FINETUNE_CELL_SETTINGS,
        shards=partial(finetune_shard_arguments, None),
        backbone=finetune_backbone_argument,
        output_dir=lambda wildcards, output: str(Path(output[0]).parent),
        torch_threads=FINETUNE_THREADS,
    shell:
        "taufm finetune --task {wildcards.task} --strategy {wildcards.strategy} --size {wildcards.size}"
        " --seed {wildcards.seed} {params.backbone:q} --settings {params.settings:q}"
        " --output-dir {params.output_dir:q} --threads {params.torch_threads:q} {params.shards:q} 2> {log:q}"


# One rule per pack family (finetune_pack: the grid's backbone strategies; finetune_pack_part:
# its ParT baseline; finetune_pack_ablations), preferred over the per-cell rule for its cells.
for family in FINETUNE_PACKS:
    # A family packed by strategies holds one backbone's strategies (or the ParT's): its first
    # strategy names the job's backbone and shards; otherwise the strategy is a wildcard.
    kind = SimpleNamespace(strategy=family.strategies[0]) if "strategies" in family.by else None

    rule:
        """Several small cells of one task in one process (taufm finetune-pack): the shards and
        the backbone read once, every run directory as the cell's own finetune job writes it."""
        name:
            family.rule
        input:
            finetune_inputs(kind) if kind else finetune_inputs,
        output:
            [result(f"{run}/{name}") for run in family.run_patterns() for name in paths.FINETUNE_FILES],
        log:
            result(paths.LOGS.format(stage="finetune", name=f"pack_{family.job_name()}")),
        benchmark:
            result(paths.BENCHMARKS.format(stage="finetune", name=f"pack_{family.job_name()}"))
        wildcard_constraints:
            **family.wildcard_constraints(),
        conda:
            "../envs/taufm.yaml"
        threads: FINETUNE_THREADS
        resources:
            mem_mb=4000,
            runtime=120 * family.cells_per_job,
            gpu=1 if FINETUNE["device"] != "cpu" else 0,
        params:
            code=CODE["finetune"],
            settings=FINETUNE_CELL_SETTINGS,
            shards=partial(finetune_shard_arguments, kind),
            backbone=finetune_backbone_argument(kind) if kind else finetune_backbone_argument,
            cells=partial(pack_cell_arguments, family, results_dir=RESULTS),
            output_dir=partial(pack_directory, family, results_dir=RESULTS),
            torch_threads=FINETUNE_THREADS,
        shell:
            "taufm finetune-pack --task {wildcards.task} {params.backbone:q} --settings {params.settings:q}"
            " --output-dir {params.output_dir:q} --threads {params.torch_threads:q} {params.cells:q} {params.shards:q} 2> {log:q}"

    workflow.ruleorder(family.rule, "finetune")
