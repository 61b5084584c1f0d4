# The fine-tuning grid: one job per (task, strategy, training size, seed), plus the ablations
# (unfreeze epoch, number of pretrained blocks) and the supervised ParT baseline.

wildcard_constraints:
    task="tau_id|pt_regression|decay_mode",
    strategy=r"(scratch|fixed|finetune|part)(-(unfreeze|blocks)(\d\d*|never))?",
    size=r"\d+",
    seed=r"\d+",


rule finetune:
    """One cell of the grid: train the task head (and, as the strategy says, the backbone) on a
    nested, seeded subset of training jets; keep the best-validation-loss model and its
    predictions on every test sample."""
    input:
        finetune_inputs,
    output:
        [result(f"{paths.FINETUNE_RUN}/{name}") for name in paths.FINETUNE_FILES],
    params:
        code=CODE["finetune"],
        settings=finetune_settings(),
        shards=lambda wildcards: [f"{name}={s}" for name, files in finetune_shards(wildcards).items() for s in files],
        backbone=lambda wildcards: [] if wildcards.strategy == "part" else ["--backbone", result(f"{paths.PRETRAIN_DIR}/backbone_best.pt")],
        output_dir=lambda wildcards, output: str(Path(output[0]).parent),
        torch_threads=FINETUNE_THREADS,
    log:
        result(paths.LOGS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}"))
    conda:
        "../../envs/taufm.yaml"
    threads: FINETUNE_THREADS  # compute.finetune_threads, for scheduling; --cores may cap it, --threads below stays
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1 if FINETUNE["device"] != "cpu" else 0,
    shell:
        "taufm finetune --task {wildcards.task} --strategy {wildcards.strategy} --size {wildcards.size}"
        " --seed {wildcards.seed} {params.backbone:q} --settings {params.settings:q}"
        " --output-dir {params.output_dir:q} --threads {params.torch_threads:q} {params.shards:q} 2> {log:q}"
