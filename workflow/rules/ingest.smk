# Ingestion: ROOT files (simulated or real) -> labelled jets with candidate features -> Parquet
# shards (one per input file, with a JSON manifest holding the cutflow) and data-quality figures.


rule ingest_ee:
    """One EDM4hep file -> reco jets clustered with ee-genkt (R=0.4, p=-1), matched one-to-one to
    generator hadronic taus, labelled (tau/background, decay mode, visible pT), with per-candidate
    features; a Parquet shard plus a manifest with the cutflow. A root:// input is streamed."""
    input:
        local_input(ee_source),
    output:
        shard=result(paths.INGESTED_EE),
        manifest=result(f"{paths.INGESTED_EE}.json"),
    log:
        result(paths.LOGS.format(stage="ingest_ee", name="{sample}_{shard}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="ingest_ee", name="{sample}_{shard}"))
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=CODE["ingest"],
        settings=ee_ingest_settings(),
        # the file read: a local input above, or a root:// URL with its size and mtime
        source=ee_source,
        remote=remote_identity(ee_source),
    shell:
        "taufm ingest-ee --sample {wildcards.sample} --settings {params.settings:q}"
        " --output {output.shard:q} {params.source:q} 2> {log:q}"


rule ingest_jetclass:
    """One JetClass file -> jets with pT-ordered candidate features (the columns of the e+e-
    shards) and their JetClass label; a Parquet shard plus a manifest. A root:// input is
    streamed."""
    input:
        local_input(jetclass_source),
    output:
        shard=result(paths.INGESTED_JETCLASS),
        manifest=result(f"{paths.INGESTED_JETCLASS}.json"),
    log:
        result(paths.LOGS.format(stage="ingest_jetclass", name="{process}_{shard}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="ingest_jetclass", name="{process}_{shard}"))
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=CODE["ingest"],
        settings=jetclass_ingest_settings(),
        # the file read: a local input above, or a root:// URL with its size and mtime
        source=jetclass_source,
        remote=remote_identity(jetclass_source),
    shell:
        "taufm ingest-jetclass --sample {wildcards.process} --settings {params.settings:q}"
        " --output {output.shard:q} {params.source:q} 2> {log:q}"


rule dataquality:
    """Data-quality figure of one sample: jet pT, candidate multiplicity, decay-mode fractions and
    reco-jet pT / visible tau pT (e+e-), or soft-drop mass and tau3/tau2 (JetClass)."""
    input:
        lambda wildcards: ingested_shards(wildcards.dq_sample),
    output:
        png=result(f"{paths.DATAQUALITY}.png".format(sample="{dq_sample}")),
        pdf=result(f"{paths.DATAQUALITY}.pdf".format(sample="{dq_sample}")),
    log:
        result(paths.LOGS.format(stage="dataquality", name="{dq_sample}")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        code=CODE["dataquality"],
        kind=lambda wildcards: "ee" if wildcards.dq_sample in FUTURE_SAMPLES else "jetclass",
        stem=lambda wildcards: result(paths.DATAQUALITY.format(sample=wildcards.dq_sample)),
    shell:
        "taufm dataquality --sample {wildcards.dq_sample} --kind {params.kind:q}"
        " --output-stem {params.stem:q} {input:q} 2> {log:q}"
