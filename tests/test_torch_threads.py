"""`snakemake --cores N` does not change the results: the torch thread count of the tokenizer and
pretraining jobs is compute.torch_threads, that of each fine-tuning cell compute.finetune_threads,
never the (capped) `threads` of the rule.
Dry runs only (`snakemake -n -p`): the rendered shell commands are compared."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"
TRAINING_COMMANDS = ("train-tokenizer", "pretrain", "finetune", "finetune-pack")  # the smoke preset packs strategies
_COMMAND = re.compile(r"^Shell command: .*?taufm'? '?(?P<command>[a-z-]+)'? .*?--threads '?(?P<threads>\d+)'?", re.MULTILINE)


def planned_torch_threads(tmp_path: Path, cores: int, override: dict | None = None) -> dict[str, set[int]]:
    """Training command -> the --threads values of its planned jobs, from a dry run."""
    configfiles = [str(SMOKE)]
    if override:
        configfiles.append(str(tmp_path / "override.yaml"))
        Path(configfiles[-1]).write_text(yaml.safe_dump(override))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", str(cores), "--configfile", *configfiles,
           "--config", f"results_dir={tmp_path / 'results'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    threads: dict[str, set[int]] = {}
    for match in _COMMAND.finditer(proc.stdout + proc.stderr):
        threads.setdefault(match["command"], set()).add(int(match["threads"]))
    assert set(TRAINING_COMMANDS) <= set(threads), f"no shell command planned for {set(TRAINING_COMMANDS) - set(threads)}"
    return {command: threads[command] for command in TRAINING_COMMANDS}


def test_cores_do_not_change_the_torch_threads_of_training_jobs(tmp_path):
    configured = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["compute"]
    assert configured["torch_threads"] > 1, "with one thread, capping at --cores 1 would go unnoticed"
    cells = {configured["finetune_threads"]}
    expected = {"train-tokenizer": {configured["torch_threads"]}, "pretrain": {configured["torch_threads"]}, "finetune": cells, "finetune-pack": cells}
    one_core = planned_torch_threads(tmp_path, 1, {"compute": {"finetune_threads": 2}})
    three_cores = planned_torch_threads(tmp_path, 3, {"compute": {"finetune_threads": 2}})
    assert one_core == three_cores == {**expected, "finetune": {2}, "finetune-pack": {2}}
    assert planned_torch_threads(tmp_path, 3) == expected


def test_the_torch_threads_are_those_of_the_config(tmp_path):
    planned = planned_torch_threads(tmp_path, 1, {"compute": {"torch_threads": 3, "finetune_threads": 4}})
    assert planned == {"train-tokenizer": {3}, "pretrain": {3}, "finetune": {4}, "finetune-pack": {4}}
