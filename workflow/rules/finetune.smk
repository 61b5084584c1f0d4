# The fine-tuning grid: one job per (task, strategy, training size, seed), plus the ablations
# (unfreeze epoch, number of pretrained blocks) and the supervised ParT baseline.

FINETUNE = config["finetune"]


def finetune_settings():
    return as_json({k: v for k, v in FINETUNE.items() if k not in ("grid", "ablations")})


def finetune_shards(wildcards):
    """Token shards of every e+e- sample (ingested shards for the ParT baseline)."""
    if wildcards.strategy == "part":
        return {name: ingested_shards(name) for name in FUTURE_SAMPLES}
    return {name: [str(paths.tokenized_ee(RESULTS, name, i)) for i in range(len(future_inputs(name)))] for name in FUTURE_SAMPLES}


def finetune_inputs(wildcards):
    shards = [s for files in finetune_shards(wildcards).values() for s in files]
    if wildcards.strategy == "part":
        return shards
    return shards + [result(f"{paths.PRETRAIN_DIR}/backbone_best.pt")]


def finetune_runs():
    """Every run directory of the grid and the ablations."""
    grid, ablations = FINETUNE["grid"], FINETUNE["ablations"]
    cells = [(t, s, n, seed) for t in grid["tasks"] for s in grid["strategies"] for n in grid["sizes"] for seed in grid["seeds"]]
    ablation_strategies = [f"finetune-unfreeze{k}" for k in ablations["unfreeze_epochs"]] + [f"finetune-blocks{b}" for b in ablations["n_blocks"]]
    cells += [(t, s, ablations["size"], seed) for t in ablations["tasks"] for s in [*ablation_strategies, "fixed", "finetune"] for seed in ablations["seeds"]]
    return sorted({result(paths.FINETUNE_RUN.format(task=t, strategy=s, size=n, seed=seed)) for t, s, n, seed in cells})


wildcard_constraints:
    task="tau_id|pt_regression|decay_mode",
    strategy=r"(scratch|fixed|finetune|part)(-(unfreeze|blocks)(\d+|never))?",
    size=r"\d+",
    seed=r"\d+",


rule finetune:
    """One cell of the grid: train the task head (and, as the strategy says, the backbone) on a
    nested, seeded subset of training jets; keep the best-validation-loss model and its
    predictions on every test sample."""
    input:
        finetune_inputs,
    output:
        [result(paths.FINETUNE_RUN + "/" + name) for name in paths.FINETUNE_FILES],
    params:
        code=CODE["finetune"],
        settings=finetune_settings(),
        shards=lambda wildcards: " ".join(f"{name}={s}" for name, files in finetune_shards(wildcards).items() for s in files),
        backbone=lambda wildcards: "" if wildcards.strategy == "part" else "--backbone " + result(f"{paths.PRETRAIN_DIR}/backbone_best.pt"),
        output_dir=lambda wildcards: result(paths.FINETUNE_RUN.format(**wildcards)),
    log:
        result(paths.LOGS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="finetune", name="{task}_{strategy}_n{size}_seed{seed}"))
    conda:
        "../../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1 if FINETUNE["device"] != "cpu" else 0,
    shell:
        "taufm finetune --task {wildcards.task} --strategy {wildcards.strategy} --size {wildcards.size}"
        " --seed {wildcards.seed} {params.backbone} --settings {params.settings:q}"
        " --output-dir {params.output_dir:q} --threads {threads} {params.shards} 2> {log:q}"
