# The embedded default data: Pythia 8 events through parametric detector responses, written in
# the layouts of the real files. Part of the DAG only with data.source: embedded.

SIM_FUTURE = config["simulate"]["future"]
SIM_JETCLASS = config["simulate"]["jetclass"]


rule simulate_ee:
    """One shard of a Fuτure-like e+e- sample at 380 GeV (Pythia 8, CLIC-like detector) as an
    EDM4hep-layout ROOT file; deterministic per (sample, shard, seed)."""
    output:
        result(paths.SIMULATED_EE),
    log:
        result(paths.LOGS.format(stage="simulate_ee", name="{sample}_{shard}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="simulate_ee", name="{sample}_{shard}"))
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        code=CODE["simulate"],
        events=SIM_FUTURE["events_per_shard"],
        seed=config["simulate"]["seed"],
        sqrt_s=SIM_FUTURE["sqrt_s"],
        detector=as_json(config["detector"].get("future", {})),
    shell:
        "taufm simulate-ee --sample {wildcards.sample} --shard {wildcards.shard}"
        " --events {params.events:q} --seed {params.seed:q} --sqrt-s {params.sqrt_s:q}"
        " --detector {params.detector:q} --output {output:q} 2> {log:q}"


rule simulate_jetclass:
    """One shard of JetClass-like pp jets at 13 TeV (Pythia 8, Delphes-CMS-like detector,
    anti-kt R=0.8, 500 < pT < 1000 GeV, |eta| < 2) in the JetClass ROOT layout."""
    output:
        result(paths.SIMULATED_JETCLASS),
    log:
        result(paths.LOGS.format(stage="simulate_jetclass", name="{process}_{shard}")),
    benchmark:
        result(paths.BENCHMARKS.format(stage="simulate_jetclass", name="{process}_{shard}"))
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=120,
    params:
        code=CODE["simulate"],
        jets=SIM_JETCLASS["jets_per_shard"],
        seed=config["simulate"]["seed"],
        sqrt_s=SIM_JETCLASS["sqrt_s"],
        pthat_min=lambda wildcards: (
            ["--pthat-min", str(SIM_JETCLASS["pthat_min"][wildcards.process])]
            if wildcards.process in SIM_JETCLASS["pthat_min"]
            else []
        ),
        mpi="--mpi" if SIM_JETCLASS["multiparton_interactions"] else "--no-mpi",
        jet=as_json(SIM_JETCLASS["jet"]),
        detector=as_json(config["detector"].get("jetclass", {})),
    shell:
        "taufm simulate-jetclass --process {wildcards.process} --shard {wildcards.shard}"
        " --jets {params.jets:q} --seed {params.seed:q} --sqrt-s {params.sqrt_s:q} {params.pthat_min:q}"
        " {params.mpi:q} --jet {params.jet:q} --detector {params.detector:q} --output {output:q} 2> {log:q}"
