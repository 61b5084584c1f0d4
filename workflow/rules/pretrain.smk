# Pretraining: the GPT backbone learns next-token prediction on tokenized JetClass jets.

PRETRAIN = config["pretrain"]


def pretrain_command():
    """`taufm pretrain`, under torchrun when more than one process is configured."""
    if PRETRAIN["processes"] > 1:
        return f"torchrun --standalone --nproc_per_node {PRETRAIN['processes']} -m taufm.cli pretrain"
    return "taufm pretrain"


rule pretrain:
    """Next-token pretraining of the GPT backbone (loss masked over padding, AdamW with warm-up
    and cosine decay, bf16 on GPU, DDP under torchrun); resumes from its last checkpoint."""
    input:
        lambda wildcards: [str(paths.tokenized_jetclass(RESULTS, p, i)) for p in JETCLASS_PROCESSES for i in range(len(jetclass_inputs(p)))],
    output:
        [result(f"{paths.PRETRAIN_DIR}/{name}") for name in paths.PRETRAIN_OUTPUTS],
    params:
        code=CODE["pretrain"],
        command=pretrain_command(),
        settings=as_json({k: v for k, v in PRETRAIN.items() if k != "processes"}),
        output_dir=result(paths.PRETRAIN_DIR),
    log:
        result(paths.LOGS.format(stage="pretrain", name="pretrain")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="pretrain", name="pretrain"))
    conda:
        "../../envs/taufm.yaml"
    threads: 4  # capped at --cores locally
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=PRETRAIN["processes"] if PRETRAIN["device"] != "cpu" else 0,
    shell:
        "{params.command} --settings {params.settings:q} --output-dir {params.output_dir:q}"
        " --threads {threads} {input:q} 2> {log:q}"
