"""The smoke preset through ``snakemake --profile slurm`` on the test cluster, in the background.

Most of that run's wall time is spent waiting on the scheduler (submission, status polls, job
start), not computing: run in the foreground it was the suite's slowest fixture (311 s, of which
its jobs computed 71 s). So ``tests/conftest.py`` starts it in a background thread before the
first test of any session that will use it, and the fixtures in ``tests/test_workflow.py`` wait
for it: the unit tests run meanwhile. It runs in its own results directory, so Snakemake's locks
keep it apart from every other run in the checkout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"
TRAINING_RULES = ("train_tokenizer", "pretrain", "finetune")
FIXTURE = "slurm_smoke_run"  # the fixture of tests/test_workflow.py that waits for this run
TIMEOUT_S = 1800


def slurm_test_profile(directory: Path) -> Path:
    """``slurm/config.yaml`` as shipped, with this test cluster's names and fast polling.

    Overrides: the partitions (``cpu`` default, ``gpu`` for training rules), no account, status
    polling every second instead of 40 + 30 s, no retries (a failure must show), and threads /
    CPUs per GPU sized to this 2-core machine (the same threads as the local smoke run).
    """
    profile = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in TRAINING_RULES:
        assert "cpus_per_gpu" in profile["set-resources"][rule], f"{rule}: cpus_per_gpu in the shipped profile"
    threads = {"train_tokenizer": 2, "pretrain": 2, "finetune": 1}
    profile.update(
        {
            "jobs": 4,
            "retries": 0,
            "latency-wait": 5,
            "seconds-between-status-checks": 1,
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-no-account": True,
            "set-threads": threads,
        }
    )
    profile["default-resources"]["slurm_partition"] = "cpu"
    for rule in TRAINING_RULES:
        profile["set-resources"][rule].update(slurm_partition="gpu", cpus_per_gpu=threads[rule])
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


class SlurmSmokeRun:
    """A test cluster and one ``snakemake --profile slurm`` run on it, in a background thread.

    The training stages run with ``device: auto``, so their rules request a GPU (the cluster's GPU
    is fake: the jobs still compute on the CPU). The whole chain runs with one fine-tuning cell
    (Fig. 6 needs it), up to the figures of the fine-tuning grid (the data-quality and
    tokenizer-check figures are left to the local runs): every kind of training and evaluation job
    goes through Slurm, and the local runs cover the whole grid.
    """

    def __init__(self, base: Path):
        self.base = base
        self.results = base / "results"
        self.cluster = None
        self.process: subprocess.Popen | None = None
        self.stdout = self.stderr = ""
        self.skip_reason: str | None = None
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slurm-smoke-run", daemon=True)

    def start(self) -> SlurmSmokeRun:
        self._thread.start()
        return self

    def prepare(self) -> list[str]:
        """Write the run's config override and test profile under ``base``; the command to run."""
        smoke = yaml.safe_load(SMOKE.read_text())
        override = self.base / "gpu.yaml"
        stages = {stage: {**smoke[stage], "device": "auto"} for stage in ("tokenizer", "pretrain", "finetune")}
        stages["finetune"]["grid"] = {**smoke["finetune"]["grid"], "tasks": ["decay_mode"], "strategies": ["finetune"]}
        stages["finetune"]["ablations"] = {**smoke["finetune"]["ablations"], "tasks": []}
        stages["finetune"]["pack"] = {"by": []}  # the per-cell rule (the local smoke run packs strategies)
        override.write_text(yaml.safe_dump({"results_dir": str(self.results), **stages}))
        profile = slurm_test_profile(self.base / "profile")
        targets = [str(self.results / "figures" / name) for name in ("fig5_physics.png", "fig6_tsne.png", "summary_table.md")]
        return [sys.executable, "-m", "snakemake", "--profile", str(profile), *targets, "--configfile", str(SMOKE), str(override)]

    def _run(self) -> None:
        from tests.slurm_cluster import SlurmTestCluster, unavailable_reason

        try:
            self.skip_reason = unavailable_reason()
            if self.skip_reason:
                return
            self.cluster = SlurmTestCluster().start()
            if self._stopping.is_set():
                return
            self.process = subprocess.Popen(
                self.prepare(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            self.stdout, self.stderr = self.process.communicate(timeout=TIMEOUT_S)
        except BaseException as error:  # raised again, in the test that waits
            self.error = error

    def wait(self) -> SlurmSmokeRun:
        """Block until the run has ended; skip if there is no test cluster, raise if the run failed."""
        import pytest

        self._thread.join(TIMEOUT_S + 120)
        if self._thread.is_alive():
            raise AssertionError(f"snakemake --profile slurm still running after {TIMEOUT_S} s")
        if self.skip_reason:
            pytest.skip(self.skip_reason)
        if self.error is not None:
            raise AssertionError(f"the Slurm smoke run could not run: {self.error!r}") from self.error
        if self.process.returncode != 0:
            raise AssertionError(
                f"snakemake --profile slurm failed:\n{self.stdout[-4000:]}\n{self.stderr[-6000:]}\n{self.cluster.logs()[-4000:]}"
            )
        return self

    def stop(self) -> None:
        """End the run (when the session ends before it did) and stop the cluster."""
        self._stopping.set()
        while self._thread.is_alive():
            if self.process is not None and self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            self._thread.join(1)
        if self.cluster is not None:
            self.cluster.stop()
