# Evaluation: metrics of every run, one tidy table, the paper's figures and the Snakemake report.


rule metrics:
    """Metrics of one fine-tuning run on each test sample (ROC AUC and misID at 80% efficiency,
    pT response and resolution, decay-mode AUCs), each with a bootstrap 68% interval over the test
    jets, plus its best validation loss; beside them the curves Fig. 5 draws and the bootstrap
    replicates (metrics_details.json)."""
    input:
        [result(f"{paths.FINETUNE_RUN}/{name}") for name in ("predictions.parquet", "summary.json", "history.csv")],
    output:
        metrics=result(f"{paths.FINETUNE_RUN}/metrics.json"),
        details=result(f"{paths.FINETUNE_RUN}/metrics_details.json"),
    log:
        result(paths.LOGS.format(stage="metrics", name="{task}_{strategy}_n{size}_seed{seed}")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=CODE["metrics"],
        run_dir=lambda wildcards: result(paths.FINETUNE_RUN.format(**wildcards)),
        replicates=EVALUATE["bootstrap_replicates"],
    shell:
        "taufm metrics --run-dir {params.run_dir:q} --output {output.metrics:q} --details {output.details:q}"
        " --bootstrap-replicates {params.replicates:q} 2> {log:q}"


rule aggregate_metrics:
    """One tidy table: a row per (task, strategy, size, seed, test sample) and mean/std rows (with
    the bootstrap interval of the seed mean); and the paper's comparisons between strategies
    (fine-tune - scratch, fine-tune - fixed, ParT - fine-tune) as differences with intervals."""
    input:
        metrics=[f"{run}/metrics.json" for run in finetune_runs()],
        details=[f"{run}/metrics_details.json" for run in finetune_runs()],
        tokenizer=result(paths.TOKENIZER_SUMMARY),
        pretrain=[result(paths.pretrain_file(b, paths.BACKBONE_CONFIG_FILE)) for b in BACKBONES],
    output:
        csv=report(result("metrics.csv"), caption="../report/metrics.rst", category="Tables"),
        parquet=result("metrics.parquet"),
        comparisons_csv=report(result("comparisons.csv"), caption="../report/comparisons.rst", category="Tables"),
        comparisons_parquet=result("comparisons.parquet"),
        grid_cost_csv=report(result("grid_cost.csv"), caption="../report/grid_cost.rst", category="Tables"),
        grid_cost_parquet=result("grid_cost.parquet"),
    log:
        result(paths.LOGS.format(stage="metrics", name="aggregate")),
    conda:
        "../envs/taufm.yaml"
    params:
        code=CODE["metrics"],
        # Each backbone's pretraining cost under its own stage name, pretrain@<backbone>.
        pretrain_costs=lambda wildcards, input: [
            f"--stage-cost=pretrain@{b}={path}" for b, path in zip(BACKBONES, input.pretrain)
        ],
    shell:
        "taufm aggregate-metrics --csv {output.csv:q} --parquet {output.parquet:q}"
        " --comparisons-csv {output.comparisons_csv:q} --comparisons-parquet {output.comparisons_parquet:q}"
        " --grid-cost-csv {output.grid_cost_csv:q} --grid-cost-parquet {output.grid_cost_parquet:q}"
        " --stage-cost tokenizer={input.tokenizer:q} {params.pretrain_costs:q}"
        " {input.metrics:q} 2> {log:q}"


rule paper_figures:
    """The paper's Fig. 4 (validation loss vs training size), Fig. 5 (physics performance at one
    size), Fig. 7 (ablations) and the headline numbers beside the paper's; Fig. 8 (the pretrained
    backbones and input sets compared)."""
    input:
        metrics=result("metrics.parquet"),
        comparisons=result("comparisons.parquet"),
        grid_cost=result("grid_cost.parquet"),
        runs=[f"{run}/metrics_details.json" for run in finetune_runs()],
    output:
        fig4=report(result("figures/fig4_validation_loss.png"), caption="../report/fig4.rst", category="Paper figures"),
        fig5=report(result("figures/fig5_physics.png"), caption="../report/fig5.rst", category="Paper figures"),
        fig7=report(result("figures/fig7_ablations.png"), caption="../report/fig7.rst", category="Paper figures"),
        fig8=report(result("figures/fig8_backbones.png"), caption="../report/fig8.rst", category="Beyond the paper"),
        grid_cost=report(result("figures/grid_cost.png"), caption="../report/grid_cost.rst", category="Compute"),
        pdfs=[
            result(f"figures/{stem}.pdf")
            for stem in ("fig4_validation_loss", "fig5_physics", "fig7_ablations", "fig8_backbones", "grid_cost")
        ],
        table=report(result("figures/summary_table.md"), caption="../report/summary_table.rst", category="Tables"),
        table_csv=result("figures/summary_table.csv"),
    log:
        result(paths.LOGS.format(stage="figures", name="paper_figures")),
    conda:
        "../envs/taufm.yaml"
    params:
        code=CODE["figures"],
        size=EVALUATE["figure_size"],
        ablation_size=FINETUNE["ablations"]["size"],
        unfreeze_epoch=FINETUNE["unfreeze_epoch"],
        n_blocks=config["pretrain"]["model"]["n_blocks"],
        output_dir=lambda wildcards, output: str(Path(output.fig4).parent),
    shell:
        "taufm paper-figures --metrics {input.metrics:q} --comparisons {input.comparisons:q} --grid-cost {input.grid_cost:q} --size {params.size:q}"
        " --ablation-size {params.ablation_size:q} --unfreeze-epoch {params.unfreeze_epoch:q} --n-blocks {params.n_blocks:q}"
        " --output-dir {params.output_dir:q} {input.runs:q} 2> {log:q}"


rule embeddings:
    """Fig. 6: backbone jet embeddings of tau jets (untrained, pretrained, fine-tuned on decay
    modes), mapped to 2-D with t-SNE and coloured by true decay mode; and the same embeddings'
    decay-mode accuracy under a linear probe and a kNN probe (a table and a figure)."""
    input:
        shards=lambda wildcards: [
            str(paths.tokenized_ee(RESULTS, "Z_Ztautau", i)) for i in range(len(future_inputs("Z_Ztautau")))
        ],
        pretrained=backbone_checkpoint(DEFAULT_BACKBONE),
        finetuned=result(
            f"{paths.FINETUNE_RUN}/model.pt".format(
                task="decay_mode", strategy="finetune", size=EVALUATE["figure_size"], seed=FINETUNE["grid"]["seeds"][0]
            )
        ),
        compared=[path for b in compared_backbones() for path in compared_backbone_files(b)],
    output:
        embeddings=result("embeddings/tau_jet_embeddings.npz"),
        figure=report(result("figures/fig6_tsne.png"), caption="../report/fig6.rst", category="Paper figures"),
        pdf=result("figures/fig6_tsne.pdf"),
        probes_csv=result("embedding_probes.csv"),
        probes_parquet=result("embedding_probes.parquet"),
        probes_figure=report(
            result("figures/embedding_probes.png"), caption="../report/embedding_probes.rst", category="Paper figures"
        ),
        probes_pdf=result("figures/embedding_probes.pdf"),
    log:
        result(paths.LOGS.format(stage="figures", name="embeddings")),
    conda:
        "../envs/taufm.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=CODE["embeddings"],
        stem=lambda wildcards, output: str(Path(output.pdf).with_suffix("")),
        probes_stem=lambda wildcards, output: str(Path(output.probes_pdf).with_suffix("")),
        max_jets=EVALUATE["tsne_jets"],
        probe_train_jets=EVALUATE["probe_train_jets"],
        probe_neighbours=EVALUATE["probe_neighbours"],
        compared=[word for b in compared_backbones() for word in ["--compare-backbone", b, *compared_backbone_files(b)]],
    shell:
        "taufm embeddings --pretrained {input.pretrained:q} --finetuned-model {input.finetuned:q}"
        " --output {output.embeddings:q} --figure-stem {params.stem:q} --max-jets {params.max_jets:q}"
        " --probes-csv {output.probes_csv:q} --probes-parquet {output.probes_parquet:q} --probes-figure-stem {params.probes_stem:q}"
        " --probe-train-jets {params.probe_train_jets:q} --probe-neighbours {params.probe_neighbours:q} {params.compared:q}"
        " --threads {threads} {input.shards:q} 2> {log:q}"
