"""The ``taufm`` command line: one subcommand per pipeline stage.

Every Snakemake rule runs exactly one of these subcommands; the settings a rule depends on come
in as arguments (structured settings as one JSON object), never read from the config file here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from taufm.config import checked_settings
from taufm.errors import TaufmError

log = logging.getLogger("taufm")


def _json_object(text: str) -> dict:
    """Parse a JSON object given inline or as ``@path``."""
    if text.startswith("@"):
        try:
            with open(text[1:]) as handle:
                text = handle.read()
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot read settings file {text[1:]}: {err.strerror}") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _cmd_simulate_ee(args: argparse.Namespace) -> None:
    from taufm.sim.detector import DetectorParameters
    from taufm.sim.ee import simulate_ee_shard

    detector = DetectorParameters.from_mapping(checked_settings("detector.future", args.detector), where="detector.future")
    simulate_ee_shard(
        args.sample,
        args.shard,
        args.events,
        args.output,
        seed=args.seed,
        sqrt_s=args.sqrt_s,
        detector=detector,
        batch_size=args.batch_size,
        progress=args.progress,
    )


def _cmd_simulate_jetclass(args: argparse.Namespace) -> None:
    from taufm.sim.detector import DetectorParameters
    from taufm.sim.jetclass import DELPHES_CMS_LIKE, simulate_jetclass_shard

    detector = DetectorParameters.from_mapping(checked_settings("detector.jetclass", args.detector), where="detector.jetclass", base=DELPHES_CMS_LIKE)
    jet = checked_settings("simulate.jetclass.jet", args.jet)  # every key, the schema's defaults filled in
    simulate_jetclass_shard(
        args.process,
        args.shard,
        args.jets,
        args.output,
        seed=args.seed,
        sqrt_s=args.sqrt_s,
        detector=detector,
        pthat_min=args.pthat_min,
        multiparton_interactions=args.mpi,
        jet_radius=jet["radius"],
        jet_pt_min=jet["pt_min"],
        jet_pt_max=jet["pt_max"],
        jet_abs_eta_max=jet["abs_eta_max"],
        batch_size=args.batch_size,
        progress=args.progress,
    )


def _cmd_ingest_ee(args: argparse.Namespace) -> None:
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file

    settings = EEIngestSettings.from_mapping(args.settings)
    ingest_ee_file(args.input, args.output, sample=args.sample, settings=settings)


def _cmd_ingest_jetclass(args: argparse.Namespace) -> None:
    from taufm.ingest.jetclass import ingest_jetclass_file

    settings = checked_settings("ingest.jetclass", args.settings)  # every key, the schema's defaults filled in
    ingest_jetclass_file(args.input, args.output, sample=args.sample, **settings)


def _cmd_dataquality(args: argparse.Namespace) -> None:
    from taufm.plots.dataquality import plot_dataquality

    summary = plot_dataquality(args.shards, args.output_stem, sample=args.sample, kind=args.kind)
    log.info("data quality of %s: %s", args.sample, json.dumps(summary, sort_keys=True, default=str))


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_train_tokenizer(args: argparse.Namespace) -> dict:
    from taufm.tokenizer.train import TokenizerSettings, train_tokenizer

    _set_threads(args.threads)
    settings = TokenizerSettings.from_mapping(args.settings)
    summary = train_tokenizer(args.shards, args.output_dir, settings)
    log.info("tokenizer trained: %s", json.dumps({k: summary[k] for k in ("best_epoch", "val_best", "val_mean_prediction")}, default=str))
    return {"device": summary["device"]}


def _cmd_tokenize(args: argparse.Namespace) -> None:
    from taufm.tokenizer.tokenize import tokenize_shard

    _set_threads(args.threads)
    tokenize_shard(args.input, args.tokenizer, args.output)


def _sample_paths(pairs: list[str]) -> dict[str, list[str]]:
    """SAMPLE=PATH arguments grouped by sample."""
    samples: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise TaufmError(f"expected SAMPLE=PATH, got {pair!r}")
        samples.setdefault(name, []).append(path)
    return samples


def _cmd_tokenizer_checks(args: argparse.Namespace) -> None:
    from taufm.plots.tokenizer_checks import plot_tokenizer_checks

    _set_threads(args.threads)
    summary = plot_tokenizer_checks(
        args.tokenizer, args.jetclass, _sample_paths(args.future), args.output_dir, split=args.split, max_jets=args.max_jets, seed=args.seed
    )
    log.info("tokenizer checks: %s", json.dumps(summary, sort_keys=True, default=str))


def _cmd_pretrain(args: argparse.Namespace) -> dict:
    from taufm.pretrain.train import PretrainSettings, pretrain

    _set_threads(args.threads)
    summary = pretrain(args.shards, args.output_dir, PretrainSettings.from_mapping(args.settings))
    log.info("pretraining done: %s", json.dumps(summary, default=str))
    return {"device": summary["device"]}


def _cmd_loss_curve(args: argparse.Namespace) -> None:
    from taufm.plots.training import plot_loss_curve

    summary = plot_loss_curve(args.history, args.output_stem, title=args.title, ylabel=args.ylabel)
    log.info("loss curve: %s", json.dumps(summary))


def _cmd_finetune(args: argparse.Namespace) -> dict:
    from taufm.finetune.train import FinetuneSettings, run_finetune

    _set_threads(args.threads)
    settings = FinetuneSettings.from_mapping(args.settings)
    summary = run_finetune(args.task, args.strategy, args.size, args.seed, _sample_paths(args.shards), args.output_dir, settings, args.backbone)
    return {"device": summary["device"]}


def _pack_cells(words: list[list[str]]) -> list:
    """``--cell STRATEGY SIZE SEED RUN_DIR`` arguments as cells."""
    from pathlib import Path

    from taufm.finetune.train import Cell

    cells = []
    for strategy, size, seed, run_dir in words:
        try:
            cells.append(Cell(strategy, _positive_int(size), _non_negative_int(seed), Path(run_dir)))
        except argparse.ArgumentTypeError as err:
            raise TaufmError(f"--cell {strategy} {size} {seed} {run_dir}: {err}") from err
    return cells


def _cmd_finetune_pack(args: argparse.Namespace) -> dict:
    """Cells of one task in this process; each run directory gets its own provenance record
    (the settings of the cell as `taufm finetune` would record them), the pack's directory one."""
    import datetime

    from taufm.finetune.train import FinetuneSettings, run_finetune_pack
    from taufm.provenance import build_record, record_path, write_record

    _set_threads(args.threads)
    settings = FinetuneSettings.from_mapping(args.settings)
    shards = _sample_paths(args.shards)
    started = [datetime.datetime.now(datetime.timezone.utc)]

    def record_cell(cell, summary: dict) -> None:
        config = {"task": args.task, "strategy": cell.strategy, "size": cell.size, "seed": cell.seed, "backbone": args.backbone}
        config.update(settings=args.settings, output_dir=str(cell.output_dir), threads=args.threads, shards=args.shards)
        write_record(record_path(cell.output_dir, is_directory=True), build_record("finetune", "finetune-pack", config, device=summary["device"], started=started[0]))
        started[0] = datetime.datetime.now(datetime.timezone.utc)

    summaries = run_finetune_pack(args.task, _pack_cells(args.cell), shards, settings, args.backbone, on_cell_done=record_cell)
    return {"device": summaries[0]["device"]}


def _cmd_metrics(args: argparse.Namespace) -> None:
    from taufm.evaluate.metrics import evaluate_run
    from taufm.io import atomic_output

    rows, details = evaluate_run(args.run_dir, n_bootstrap=args.bootstrap_replicates, bootstrap_seed=args.bootstrap_seed)
    with atomic_output(args.details) as tmp_details, atomic_output(args.output) as tmp:
        tmp_details.write_text(json.dumps(details, sort_keys=True, default=str) + "\n")
        tmp.write_text(json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: str, what: str):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaufmError(f"{path}: not a {what} ({err})") from err


def _cmd_aggregate_metrics(args: argparse.Namespace) -> None:
    from pathlib import Path

    from taufm.evaluate.metrics import DETAILS_FILE, aggregate, compare_strategies, grid_cost, write_comparisons, write_grid_cost, write_table

    rows, details = [], []
    for path in args.inputs:
        found = _read_json(path, "metrics file")
        if not isinstance(found, list):
            raise TaufmError(f"{path}: not a metrics file (a JSON list of rows)")
        rows.extend(found)
        details.append(_read_json(str(Path(path).with_name(DETAILS_FILE)), "run details file (written by `taufm metrics` beside it)"))
    stage_costs = {}
    for pair in args.stage_cost:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise TaufmError(f"--stage-cost {pair!r}: expected STAGE=PATH")
        found = _read_json(path, "training summary")
        if not isinstance(found, dict):
            raise TaufmError(f"{path}: not a training summary (a JSON object)")
        stage_costs[name] = found.get("cost", found)
    write_table(aggregate(rows, details), args.csv, args.parquet)
    write_comparisons(compare_strategies(rows, details), args.comparisons_csv, args.comparisons_parquet)
    write_grid_cost(grid_cost(rows, stage_costs), args.grid_cost_csv, args.grid_cost_parquet)


def _cmd_paper_figures(args: argparse.Namespace) -> None:
    from pathlib import Path

    import pyarrow.parquet as pq

    from taufm.plots.paper_figures import fig4_validation_loss, fig5_physics, fig7_ablations, fig8_backbones, fig_grid_cost, runs_from_details, summary_table

    tables = {}
    for name, path in (("metrics", args.metrics), ("comparisons", args.comparisons), ("grid cost", args.grid_cost)):
        try:
            tables[name] = pq.read_table(path).to_pylist()
        except Exception as err:  # missing or not Parquet
            raise TaufmError(f"{path}: not a readable {name} table ({err})") from err
    out = Path(args.output_dir)
    summary = {
        "fig4": fig4_validation_loss(tables["metrics"], out / "fig4_validation_loss"),
        "fig5": fig5_physics(runs_from_details(args.runs, args.size), out / "fig5_physics", args.size),
        "fig7": fig7_ablations(tables["metrics"], out / "fig7_ablations", args.ablation_size, default_unfreeze_epoch=args.unfreeze_epoch, n_blocks_total=args.n_blocks),
        "fig8": fig8_backbones(tables["metrics"], out / "fig8_backbones"),
        "table": summary_table(tables["metrics"], args.size, out / "summary_table.md", out / "summary_table.csv", comparisons=tables["comparisons"]),
        "grid_cost": fig_grid_cost(tables["grid cost"], out / "grid_cost"),
    }
    log.info("paper figures: %s", json.dumps(summary, default=str)[:2000])


def _cmd_embeddings(args: argparse.Namespace) -> None:
    import numpy as np

    from taufm.evaluate.embeddings import embed_jets, embed_tau_jets, load_backbones, plot_probes, plot_tsne, probe_decay_modes
    from taufm.evaluate.metrics import write_probes
    from taufm.io import atomic_output

    probe_outputs = (args.probes_csv, args.probes_parquet, args.probes_figure_stem)
    if any(probe_outputs) and not all(probe_outputs):
        raise TaufmError("embeddings: give all of --probes-csv, --probes-parquet and --probes-figure-stem, or none")
    _set_threads(args.threads)
    backbones = load_backbones(args.pretrained, args.finetuned_model, args.seed)  # read once, for t-SNE and probes
    result = embed_tau_jets(args.shards, args.pretrained, args.finetuned_model, max_jets=args.max_jets, seed=args.seed, backbones=backbones)
    rows = None
    if all(probe_outputs):  # computed before anything is written: a failing probe leaves no output
        probe = {"train_jets": args.probe_train_jets, "neighbours": args.probe_neighbours, "seed": args.seed}
        rows = probe_decay_modes(args.shards, backbones, result, **probe)
        for name, pretrained, finetuned in args.compare_backbone:  # the other backbones, on the same test jets
            others = load_backbones(pretrained, finetuned, args.seed)
            test = embed_jets(args.shards, others, max_jets=args.max_jets, seed=args.seed)
            rows += probe_decay_modes(args.shards, others, test, **probe, backbone=name)
    with atomic_output(args.output) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **result)
    log.info("fig. 6: %s", plot_tsne(result, args.figure_stem))
    if rows is not None:
        write_probes(rows, args.probes_csv, args.probes_parquet)
        plot_probes(rows, args.probes_figure_stem)
        for row in rows:
            log.info("probe %s on the %s %s backbone: accuracy %.3f ± %.3f (majority %.3f)", row["probe"], row["backbone_stage"], row["backbone"], row["accuracy"], row["accuracy_error"], row["majority_fraction"])


def _cmd_config_docs(args: argparse.Namespace) -> None:
    from taufm.config_docs import write_config_docs

    log.info("configuration keys: %s", write_config_docs(args.output))


def _cmd_rule_docs(args: argparse.Namespace) -> None:
    from taufm.rule_docs import write_rule_docs

    log.info("rules: %s", write_rule_docs(args.output, args.snakefile))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taufm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    ee = sub.add_parser("simulate-ee", help="generate one shard of a Fuτure-like e+e- sample (EDM4hep ROOT)")
    ee.add_argument("--sample", required=True, help="ZH_Htautau, Z_Ztautau or qq")
    ee.add_argument("--shard", required=True, type=_non_negative_int)
    ee.add_argument("--events", required=True, type=_positive_int, help="events in this shard")
    ee.add_argument("--seed", type=int, default=0, help="base seed; the shard's seed derives from (sample, shard, seed)")
    ee.add_argument("--sqrt-s", type=float, default=380.0, help="centre-of-mass energy in GeV")
    ee.add_argument("--detector", type=_json_object, default={}, help="detector parameters as JSON (or @file)")
    ee.add_argument("--batch-size", type=_positive_int, default=500)
    ee.add_argument("--progress", action="store_true")
    ee.add_argument("--output", required=True)
    ee.set_defaults(func=_cmd_simulate_ee)

    jc = sub.add_parser("simulate-jetclass", help="generate one shard of JetClass-like pp jets (JetClass ROOT)")
    jc.add_argument("--process", required=True, help="ZJetsToNuNu (QCD) or TTBar (Tbqq)")
    jc.add_argument("--shard", required=True, type=_non_negative_int)
    jc.add_argument("--jets", required=True, type=_positive_int, help="jets in this shard")
    jc.add_argument("--seed", type=int, default=0)
    jc.add_argument("--sqrt-s", type=float, default=13000.0)
    jc.add_argument("--pthat-min", type=float, default=None, help="Pythia PhaseSpace:pTHatMin (default: per process)")
    jc.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=True, help="multi-parton interactions")
    jc.add_argument("--jet", type=_json_object, default={}, help='jet selection as JSON: {"radius", "pt_min", "pt_max", "abs_eta_max"}')
    jc.add_argument("--detector", type=_json_object, default={}, help="detector parameters as JSON (or @file)")
    jc.add_argument("--batch-size", type=_positive_int, default=200)
    jc.add_argument("--progress", action="store_true")
    jc.add_argument("--output", required=True)
    jc.set_defaults(func=_cmd_simulate_jetclass)
    ie = sub.add_parser("ingest-ee", help="EDM4hep file -> labelled jets (Parquet shard + manifest)")
    ie.add_argument("--sample", required=True, help="sample name recorded in the shard (ZH_Htautau, Z_Ztautau, qq, ...)")
    ie.add_argument("--settings", type=_json_object, default={}, help="ingestion settings as JSON (or @file)")
    ie.add_argument("--output", required=True, help="Parquet shard to write; the manifest goes to <output>.json")
    ie.add_argument("input", help="EDM4hep ROOT file (Fuτure or taufm simulate-ee)")
    ie.set_defaults(func=_cmd_ingest_ee)

    ij = sub.add_parser("ingest-jetclass", help="JetClass file -> jets with candidate features (Parquet shard + manifest)")
    ij.add_argument("--sample", required=True, help="process name recorded in the shard (e.g. ZJetsToNuNu, TTBar)")
    ij.add_argument("--settings", type=_json_object, default={}, help="ingestion settings as JSON (or @file)")
    ij.add_argument("--output", required=True)
    ij.add_argument("input", help="JetClass ROOT file")
    ij.set_defaults(func=_cmd_ingest_jetclass)

    dq = sub.add_parser("dataquality", help="data-quality figure of one sample's shards (PNG + PDF)")
    dq.add_argument("--sample", required=True)
    dq.add_argument("--kind", required=True, choices=["ee", "jetclass"])
    dq.add_argument("--output-stem", required=True, help="figure path without extension")
    dq.add_argument("shards", nargs="+", help="Parquet shards of the sample")
    dq.set_defaults(func=_cmd_dataquality)
    tt = sub.add_parser("train-tokenizer", help="train the VQ-VAE tokenizer on ingested JetClass shards")
    tt.add_argument("--settings", type=_json_object, default={}, help="tokenizer settings as JSON (or @file)")
    tt.add_argument("--output-dir", required=True, help="gets tokenizer.pt, history.csv, summary.json, checkpoint_last.pt")
    tt.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    tt.add_argument("shards", nargs="+", help="ingested JetClass shards (train and val splits are used)")
    tt.set_defaults(func=_cmd_train_tokenizer)

    tk = sub.add_parser("tokenize", help="ingested shard -> token sequences (Parquet shard + manifest)")
    tk.add_argument("--tokenizer", required=True, help="tokenizer.pt from train-tokenizer")
    tk.add_argument("--output", required=True)
    tk.add_argument("--threads", type=_positive_int, default=None)
    tk.add_argument("input", help="ingested shard (e+e- or JetClass)")
    tk.set_defaults(func=_cmd_tokenize)

    tc = sub.add_parser("tokenizer-checks", help="the paper's Fig. 2 (residuals) and Fig. 3 (PID confusion)")
    tc.add_argument("--tokenizer", required=True)
    tc.add_argument("--jetclass", nargs="+", required=True, help="ingested JetClass shards")
    tc.add_argument("--future", nargs="+", required=True, metavar="SAMPLE=PATH", help="ingested Fuτure shards, each as SAMPLE=PATH")
    tc.add_argument("--output-dir", required=True)
    tc.add_argument("--split", default="test", choices=["train", "val", "test"])
    tc.add_argument("--max-jets", type=_positive_int, default=5000)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--threads", type=_positive_int, default=None)
    tc.set_defaults(func=_cmd_tokenizer_checks)
    pt = sub.add_parser("pretrain", help="pretrain the GPT backbone on token shards (also under torchrun for DDP)")
    pt.add_argument("--settings", type=_json_object, default={}, help="pretraining settings as JSON (or @file)")
    pt.add_argument("--output-dir", required=True, help="gets backbone.pt, backbone_best.pt, history.csv, model_config.json")
    pt.add_argument("--threads", type=_positive_int, default=None)
    pt.add_argument("shards", nargs="+", help="token shards of JetClass jets (train and val splits are used)")
    pt.set_defaults(func=_cmd_pretrain)
    lc = sub.add_parser("loss-curve", help="training and validation loss per epoch from a history.csv (PNG + PDF)")
    lc.add_argument("--history", required=True, help="history.csv of a training stage")
    lc.add_argument("--output-stem", required=True, help="figure path without extension")
    lc.add_argument("--title", default="Backbone pretraining")
    lc.add_argument("--ylabel", default="Next-token cross entropy")
    lc.set_defaults(func=_cmd_loss_curve)
    ft = sub.add_parser("finetune", help="train one cell of the fine-tuning grid (task, strategy, size, seed)")
    ft.add_argument("--task", required=True, help="tau_id, pt_regression or decay_mode")
    ft.add_argument("--strategy", required=True, help="scratch, fixed, finetune, part, finetune-unfreeze<K|never>, <strategy>-blocks<B>")
    ft.add_argument("--size", required=True, type=_positive_int, help="training jets")
    ft.add_argument("--seed", required=True, type=_non_negative_int)
    ft.add_argument("--backbone", default=None, help="pretrained backbone (all strategies but part)")
    ft.add_argument("--settings", type=_json_object, default={}, help="fine-tuning settings as JSON (or @file)")
    ft.add_argument("--output-dir", required=True)
    ft.add_argument("--threads", type=_positive_int, default=None)
    ft.add_argument("shards", nargs="+", metavar="SAMPLE=PATH", help="token shards (or ingested shards for part) of each sample")
    ft.set_defaults(func=_cmd_finetune)
    fp = sub.add_parser("finetune-pack", help="train several cells of one task in one process (shards and backbone read once)")
    fp.add_argument("--task", required=True, help="tau_id, pt_regression or decay_mode")
    cell_help = "one cell and its run directory (what `taufm finetune --output-dir` writes); repeat for each cell"
    fp.add_argument("--cell", required=True, action="append", nargs=4, metavar=("STRATEGY", "SIZE", "SEED", "RUN_DIR"), help=cell_help)
    fp.add_argument("--backbone", default=None, help="pretrained backbone (all strategies but part)")
    fp.add_argument("--settings", type=_json_object, default={}, help="fine-tuning settings as JSON (or @file)")
    fp.add_argument("--output-dir", required=True, help="the pack's own directory (its provenance record)")
    fp.add_argument("--threads", type=_positive_int, default=None)
    fp.add_argument("shards", nargs="+", metavar="SAMPLE=PATH", help="token shards (or ingested shards for part) of each sample")
    fp.set_defaults(func=_cmd_finetune_pack)
    me = sub.add_parser("metrics", help="metrics of one fine-tuning run, per test sample, with bootstrap intervals (JSON rows)")
    me.add_argument("--run-dir", required=True)
    me.add_argument("--output", required=True, help="metrics.json: one row per test sample")
    me.add_argument("--details", required=True, help="metrics_details.json: the figures' curves and the bootstrap replicates")
    me.add_argument("--bootstrap-replicates", type=_non_negative_int, default=200, help="bootstrap replicates over the test jets (0: no intervals)")
    me.add_argument("--bootstrap-seed", type=_non_negative_int, default=0)
    me.set_defaults(func=_cmd_metrics)

    ag = sub.add_parser("aggregate-metrics", help="per-run metrics -> one tidy table with means and stds over seeds, and the strategy comparisons")
    ag.add_argument("--csv", required=True)
    ag.add_argument("--parquet", required=True)
    ag.add_argument("--comparisons-csv", required=True, help="differences between strategies (fine-tune - scratch, ...) with intervals")
    ag.add_argument("--comparisons-parquet", required=True)
    ag.add_argument("--grid-cost-csv", required=True, help="device-seconds and FLOPs per figure point, per training stage and in total")
    ag.add_argument("--grid-cost-parquet", required=True)
    ag.add_argument("--stage-cost", action="append", default=[], metavar="STAGE=PATH",
                    help="an upstream training stage's summary (tokenizer summary.json, pretraining model_config.json)")
    ag.add_argument("inputs", nargs="+", help="metrics.json files of the runs (each with its metrics_details.json beside it)")
    ag.set_defaults(func=_cmd_aggregate_metrics)

    pf = sub.add_parser("paper-figures", help="the paper's Fig. 4, 5, 7 and the headline table from the stored metrics")
    pf.add_argument("--metrics", required=True, help="metrics.parquet from aggregate-metrics")
    pf.add_argument("--comparisons", required=True, help="comparisons.parquet from aggregate-metrics")
    pf.add_argument("--grid-cost", required=True, help="grid_cost.parquet from aggregate-metrics (drawn as grid_cost.png)")
    pf.add_argument("--size", required=True, type=_positive_int, help="training size of Fig. 5 and the table (paper: 10000)")
    pf.add_argument("--ablation-size", required=True, type=_positive_int)
    pf.add_argument("--unfreeze-epoch", required=True, type=_non_negative_int)
    pf.add_argument("--n-blocks", required=True, type=_positive_int, help="blocks of the pretrained backbone")
    pf.add_argument("--output-dir", required=True)
    pf.add_argument("runs", nargs="+", help="metrics_details.json of every run of the grid (Fig. 5 draws those at --size)")
    pf.set_defaults(func=_cmd_paper_figures)

    em = sub.add_parser("embeddings", help="Fig. 6: t-SNE of backbone jet embeddings (untrained, pretrained, fine-tuned), and probes of them")
    em.add_argument("--pretrained", required=True)
    em.add_argument("--finetuned-model", required=True, help="model.pt of a fine-tuning run")
    em.add_argument("--output", required=True, help=".npz with embeddings, t-SNE coordinates and decay modes")
    em.add_argument("--figure-stem", required=True)
    em.add_argument("--max-jets", type=_positive_int, default=4096)
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--probes-csv", help="decay-mode probes of the embeddings (linear, kNN) as CSV ...")
    em.add_argument("--probes-parquet", help="... and Parquet")
    em.add_argument("--probes-figure-stem", help="... and their figure (.png, .pdf)")
    em.add_argument("--probe-train-jets", type=_positive_int, default=4000, help="train-split tau jets the probes are fitted on")
    em.add_argument("--compare-backbone", nargs=3, action="append", default=[], metavar=("NAME", "PRETRAINED", "FINETUNED_MODEL"),
                    help="probe another backbone too: its name, pretrained checkpoint and a decay-mode fine-tuning run's model.pt (repeatable)")
    em.add_argument("--probe-neighbours", type=_positive_int, default=15, help="k of the kNN probe")
    em.add_argument("--threads", type=_positive_int, default=None)
    em.add_argument("shards", nargs="+", help="token shards of the tau sample")
    em.set_defaults(func=_cmd_embeddings)

    # Documentation, not stages: they write no provenance record (not in COMMAND_STAGES).
    cd = sub.add_parser("config-docs", help="Markdown describing every configuration key, from the config schema")
    cd.add_argument("--output", required=True, help="e.g. config/README.md")
    cd.set_defaults(func=_cmd_config_docs)
    rd = sub.add_parser("rule-docs", help="Markdown documenting every workflow rule, from the rules' docstrings")
    rd.add_argument("--output", required=True, help="e.g. docs/rules.md")
    rd.add_argument("--snakefile", default="workflow/Snakefile", help="the workflow's main file; its includes are read too")
    rd.set_defaults(func=_cmd_rule_docs)
    return parser


# The source stage (taufm.provenance.STAGE_SOURCES) of each command, for its provenance record.
COMMAND_STAGES = {
    "simulate-ee": "simulate",
    "simulate-jetclass": "simulate",
    "ingest-ee": "ingest",
    "ingest-jetclass": "ingest",
    "dataquality": "dataquality",
    "train-tokenizer": "tokenizer",
    "tokenize": "tokenizer",
    "tokenizer-checks": "tokenizer_checks",
    "pretrain": "pretrain",
    "loss-curve": "figures",
    "finetune": "finetune",
    "finetune-pack": "finetune",
    "metrics": "metrics",
    "aggregate-metrics": "metrics",
    "paper-figures": "figures",
    "embeddings": "embeddings",
}
# Arguments that do not change what a command computes: left out of the recorded settings.
_NOT_SETTINGS = {"func", "command", "verbose", "progress"}


def _record_provenance(args: argparse.Namespace, outcome: dict | None, started, argv: Sequence[str]) -> None:
    """The provenance record of a command that succeeded, in its output directory."""
    import os

    from taufm.provenance import build_record, record_path, write_record

    if os.environ.get("RANK", "0") != "0":  # under torchrun: one record, from rank 0
        return
    if getattr(args, "output_dir", None):
        path = record_path(args.output_dir, is_directory=True)
    else:
        output = next(getattr(args, name) for name in ("output", "output_stem", "csv") if getattr(args, name, None))
        path = record_path(output, is_directory=False)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    device = (outcome or {}).get("device", "cpu")
    write_record(path, build_record(COMMAND_STAGES[args.command], args.command, settings, device=device, started=started, argv=["taufm", *argv]))


def main(argv: Sequence[str] | None = None) -> int:
    import datetime

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        outcome = args.func(args)
        if args.command in COMMAND_STAGES:
            _record_provenance(args, outcome, started, argv)
    except TaufmError as err:
        print(f"taufm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
