# Pretraining: each backbone of pretrain.backbones (input kind x objective) learns on the
# tokenized JetClass jets, in its own job and directory results/pretrain/<backbone>/.


wildcard_constraints:
    backbone="|".join(BACKBONES),


rule pretrain:
    """Pretraining of one backbone: next-token prediction or masked particle modelling on tokens
    or continuous features (loss masked over padding, AdamW with warm-up and cosine decay, bf16
    on GPU, DDP under torchrun); resumes from its last checkpoint."""
    input:
        lambda wildcards: [
            str(paths.tokenized_jetclass(RESULTS, p, i))
            for p in JETCLASS_PROCESSES
            for i in range(len(jetclass_inputs(p)))
        ],
    output:
        [result(f"{paths.PRETRAIN_DIR}/{name}") for name in paths.PRETRAIN_OUTPUTS],
    log:
        result(paths.LOGS.format(stage="pretrain", name="{backbone}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="pretrain", name="{backbone}"))
    conda:
        "../envs/taufm.yaml"
    threads: TORCH_THREADS  # compute.torch_threads, for scheduling; --cores may cap it, --threads below stays
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=PRETRAIN["processes"] if PRETRAIN["device"] != "cpu" else 0,
    params:
        code=CODE["pretrain"],
        command=pretrain_command(),
        settings=lambda wildcards: pretrain_settings(wildcards.backbone),
        output_dir=lambda wildcards, output: str(Path(output[0]).parent),
        torch_threads=TORCH_THREADS,
    shell:
        "{params.command:q} --settings {params.settings:q} --output-dir {params.output_dir:q}"
        " --threads {params.torch_threads:q} {input:q} 2> {log:q}"


rule pretrain_loss_curve:
    """Training and validation loss per epoch of one backbone's pretraining (a figure job: a
    style change redraws it without retraining)."""
    input:
        result(f"{paths.PRETRAIN_DIR}/{paths.TRAINING_HISTORY_FILE}"),
    output:
        multiext(result(paths.PRETRAIN_LOSS_CURVE), ".png", ".pdf"),
    log:
        result(paths.LOGS.format(stage="pretrain", name="loss_curve_{backbone}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="pretrain", name="loss_curve_{backbone}"))
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["figures"],
        stem=lambda wildcards, output: str(Path(output[0]).with_suffix("")),
    shell:
        "taufm loss-curve --history {input:q} --output-stem {params.stem:q} 2> {log:q}"
