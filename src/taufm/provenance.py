"""What produced an output: source hashes for reruns, and a provenance record per job.

Snakemake tracks a rule's params but never the modules a script imports. Each rule therefore
carries :func:`stage_source_hash` of the taufm modules its stage runs (:data:`STAGE_SOURCES`) as a
param: editing ``taufm/finetune/...`` changes the fine-tuning rules' hash only, so exactly
fine-tuning and what depends on its outputs reruns; editing the figure style reruns figures only.

Every ``taufm`` command that succeeds also writes a provenance record (:func:`write_record`) into
its output directory: the resolved settings it ran with and their hash, the stage's source hash,
the git commit of the taufm checkout (with a dirty flag), the versions of the libraries that
shape the results, the device, the host and the Slurm job.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taufm.config import config_hash

PACKAGE_ROOT = Path(__file__).resolve().parent

# Modules every stage runs.
SHARED_SOURCES = ("errors", "io", "config", "arrays", "paths")
# The package sources (modules or subpackages, relative to taufm/) each stage runs. Figures are
# drawn only by figure stages, so a style edit (plots/style.py) never reruns a training stage.
STAGE_SOURCES: Mapping[str, tuple[str, ...]] = {
    "simulate": ("sim",),
    "ingest": ("ingest", "physics"),
    "dataquality": ("plots/dataquality", "plots/style"),
    "tokenizer": ("tokenizer", "models/vqvae", "models/masking", "train", "data", "ingest/shards"),
    "tokenizer_checks": ("plots/tokenizer_checks", "plots/style", "tokenizer", "models/vqvae", "models/masking", "data"),
    "pretrain": ("pretrain", "models/gpt", "models/masking", "train", "data", "ingest/shards"),
    "finetune": ("finetune", "models", "train", "data", "pretrain", "tokenizer/preprocessing", "ingest/shards", "physics"),
    "metrics": ("evaluate/metrics", "physics"),
    "figures": ("plots/paper_figures", "plots/training", "plots/style"),
    "embeddings": ("evaluate/embeddings", "models/gpt", "models/masking", "pretrain", "plots/style", "data"),
}
# Libraries whose versions can change a result, recorded in every provenance record.
RECORDED_PACKAGES = ("taufm", "torch", "numpy", "uproot", "awkward", "fastjet", "pythia8mc", "vector", "pyarrow", "scikit-learn", "matplotlib", "mplhep", "snakemake")


def source_files(*parts: str, root: Path | None = None) -> list[Path]:
    """The .py files of the named modules or subpackages (paths relative to the package)."""
    root = root or PACKAGE_ROOT
    files: set[Path] = set()
    for part in parts:
        path = root / part
        if path.is_dir():
            files.update(path.rglob("*.py"))
        elif path.with_suffix(".py").is_file():
            files.add(path.with_suffix(".py"))
        else:
            raise ValueError(f"no taufm module or subpackage {part!r} under {root}")
    return sorted(files)


def source_hash(*parts: str, root: Path | None = None) -> str:
    """A short SHA-256 of the names and contents of those source files."""
    root = root or PACKAGE_ROOT
    digest = hashlib.sha256()
    for path in source_files(*parts, root=root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_source_hash(stage: str, root: Path | None = None) -> str:
    """The source hash of one stage of :data:`STAGE_SOURCES` (shared modules included)."""
    if stage not in STAGE_SOURCES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_SOURCES)}")
    return source_hash(*STAGE_SOURCES[stage], *SHARED_SOURCES, root=root)


def git_state(path: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (None when it is not one)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    head = git("rev-parse", "HEAD", "--show-toplevel")
    if head is None:
        return {"commit": None, "dirty": None, "checkout": None}
    commit, checkout = head.splitlines()[:2]
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status.strip()) if status is not None else None, "checkout": checkout}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed versions (None: not installed), read from package metadata without importing."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device(device: str) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: the accelerator's name where there is one."""
    if device.startswith("cuda") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            index = torch.device(device).index
            index = torch.cuda.current_device() if index is None else index
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device


def record_path(output: str | Path, is_directory: bool) -> Path:
    """Where the record of a job goes: ``<dir>/provenance.json`` for a job that owns an output
    directory, ``<parent>/provenance/<output name>.json`` for a job writing one file (or figure
    stem) among others in a shared directory."""
    output = Path(output)
    if is_directory:
        return output / "provenance.json"
    return output.parent / "provenance" / f"{output.name}.json"


def build_record(
    stage: str,
    command: str,
    config: Mapping[str, Any],
    device: str = "cpu",
    started: datetime.datetime | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    finished = datetime.datetime.now(datetime.timezone.utc)
    started = started or finished
    return {
        "stage": stage,
        "command": command,
        "argv": list(sys.argv if argv is None else argv),
        "config": dict(config),
        "config_sha256": config_hash(config),
        "code_sha256": stage_source_hash(stage),
        "git": git_state(),
        "versions": package_versions(),
        "device": describe_device(device),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": finished.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds(), 3),
    }


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a record atomically (the whole file or none)."""
    from taufm.io import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path
