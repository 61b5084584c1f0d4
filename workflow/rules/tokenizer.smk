# The VQ-VAE tokenizer: trained on JetClass(-like) jets, checked against the paper's Fig. 2 and 3
# on JetClass and Fuτure jets, then used to turn every ingested shard into token sequences.


rule train_tokenizer:
    """Train the VQ-VAE (OmniJet-alpha style) on the train split of the JetClass shards,
    validating on their val split; keeps the best model, the history and a resumable checkpoint."""
    input:
        lambda wildcards: [s for p in JETCLASS_PROCESSES for s in ingested_shards(p)],
    output:
        model=result(paths.TOKENIZER_MODEL),
        history=result(paths.TOKENIZER_HISTORY),
        summary=result(paths.TOKENIZER_SUMMARY),
    log:
        result(paths.LOGS.format(stage="tokenizer", name="train_tokenizer")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="tokenizer", name="train_tokenizer"))
    conda:
        "../envs/taufm.yaml"
    threads: TORCH_THREADS  # compute.torch_threads, for scheduling; --cores may cap it, --threads below stays
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1 if TOKENIZER["device"] != "cpu" else 0,
    params:
        code=CODE["tokenizer"],
        settings=tokenizer_settings(),
        output_dir=lambda wildcards, output: str(Path(output.model).parent),
        torch_threads=TORCH_THREADS,
    shell:
        "taufm train-tokenizer --settings {params.settings:q} --output-dir {params.output_dir:q}"
        " --threads {params.torch_threads:q} {input:q} 2> {log:q}"


rule tokenizer_checks:
    """The paper's Fig. 2 (reconstruction residuals per feature) and Fig. 3 (PID confusion
    through encode/decode) on JetClass and on each Fuτure sample."""
    input:
        model=result(paths.TOKENIZER_MODEL),
        jetclass=lambda wildcards: [s for p in JETCLASS_PROCESSES for s in ingested_shards(p)],
        future=lambda wildcards: [s for name in FUTURE_SAMPLES for s in ingested_shards(name)],
    output:
        [
            result(f"{paths.TOKENIZER_FIGURES}/{stem}.{ext}")
            for stem in paths.TOKENIZER_FIGURE_STEMS
            for ext in ("png", "pdf")
        ],
    log:
        result(paths.LOGS.format(stage="tokenizer", name="tokenizer_checks")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=CODE["tokenizer_checks"],
        future=lambda wildcards: [f"{name}={s}" for name in FUTURE_SAMPLES for s in ingested_shards(name)],
        output_dir=lambda wildcards, output: str(Path(output[0]).parent),
        split=TOKENIZER["checks"]["split"],
        max_jets=TOKENIZER["checks"]["max_jets"],
    shell:
        "taufm tokenizer-checks --tokenizer {input.model:q} --jetclass {input.jetclass:q}"
        " --future {params.future:q} --output-dir {params.output_dir:q} --split {params.split:q}"
        " --max-jets {params.max_jets:q} --threads {threads} 2> {log:q}"


rule tokenize_ee:
    """One ingested Fuτure shard -> token sequences (start 0, codes 1..K, stop K+1)."""
    input:
        shard=result(paths.INGESTED_EE),
        model=result(paths.TOKENIZER_MODEL),
    output:
        shard=result(paths.TOKENIZED_EE),
        manifest=result(f"{paths.TOKENIZED_EE}.json"),
    log:
        result(paths.LOGS.format(stage="tokenize", name="{sample}_{shard}")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        code=CODE["tokenizer"],
    shell:
        "taufm tokenize --tokenizer {input.model:q} --output {output.shard:q} --threads {threads} {input.shard:q} 2> {log:q}"


rule tokenize_jetclass:
    """One ingested JetClass shard -> token sequences (start 0, codes 1..K, stop K+1)."""
    input:
        shard=result(paths.INGESTED_JETCLASS),
        model=result(paths.TOKENIZER_MODEL),
    output:
        shard=result(paths.TOKENIZED_JETCLASS),
        manifest=result(f"{paths.TOKENIZED_JETCLASS}.json"),
    log:
        result(paths.LOGS.format(stage="tokenize", name="{process}_{shard}")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=CODE["tokenizer"],
    shell:
        "taufm tokenize --tokenizer {input.model:q} --output {output.shard:q} --threads {threads} {input.shard:q} 2> {log:q}"
