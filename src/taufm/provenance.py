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

import ast
import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taufm.config import config_hash

PACKAGE_ROOT = Path(__file__).resolve().parent

# Modules every stage runs.
SHARED_SOURCES = ("errors", "io", "config", "arrays", "paths")
# The modules each stage's commands call (what taufm.cli imports for them). Everything these
# import, directly or inside a function, belongs to the stage: STAGE_SOURCES follows the import
# graph, so a new import can never be forgotten. Figures are drawn only by figure stages, so a
# style edit (plots/style.py) never reruns a training stage.
STAGE_ENTRY_MODULES: Mapping[str, tuple[str, ...]] = {
    "simulate": ("taufm.sim.ee", "taufm.sim.jetclass", "taufm.sim.detector"),
    "ingest": ("taufm.ingest.ee", "taufm.ingest.jetclass"),
    "dataquality": ("taufm.plots.dataquality",),
    "tokenizer": ("taufm.tokenizer.train", "taufm.tokenizer.tokenize"),
    "tokenizer_checks": ("taufm.plots.tokenizer_checks",),
    "pretrain": ("taufm.pretrain.train",),
    "finetune": ("taufm.finetune.train",),
    "metrics": ("taufm.evaluate.metrics",),
    "figures": ("taufm.plots.paper_figures", "taufm.plots.training"),
    "embeddings": ("taufm.evaluate.embeddings", "taufm.evaluate.metrics"),  # metrics: the probe table writer
}
# Modules that record what ran but never change a result: outside every stage's hash.
NOT_RESULT_MODULES = ("taufm.provenance", "taufm.cli")


def module_file(module: str, root: Path | None = None) -> Path | None:
    """The source file of a ``taufm.…`` module (a package's ``__init__.py``), or None."""
    root = root or PACKAGE_ROOT
    parts = module.split(".")[1:]
    path = root.joinpath(*parts) if parts else root
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """The ``taufm`` modules one source file imports, at top level or inside functions."""
    return set(_imported_modules(path, module, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _imported_modules(path: Path, module: str, mtime_ns: int) -> frozenset[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this file is in
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # names that are submodules
    return frozenset(name for name in found if name == "taufm" or name.startswith("taufm."))


def import_closure(modules: Sequence[str], root: Path | None = None) -> list[str]:
    """Every ``taufm`` module ``modules`` run (their imports, transitively, and the packages
    that hold them), as paths relative to the package without ``.py``; sorted."""
    root = root or PACKAGE_ROOT
    seen: set[str] = set()
    stack = list(modules)
    while stack:
        module = stack.pop()
        if module in seen or module in NOT_RESULT_MODULES:
            continue
        path = module_file(module, root)
        if path is None:
            continue  # a name imported from a module, not a module
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        stack.extend(parents)
        stack.extend(imported_modules(path, module))
    files = {module_file(m, root).relative_to(root).with_suffix("").as_posix() for m in seen}
    return sorted(files)


def stage_sources(root: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Stage -> the package sources it runs (see :data:`STAGE_ENTRY_MODULES`)."""
    return {stage: _stage_closure(stage, root) for stage in STAGE_ENTRY_MODULES}


@functools.lru_cache(maxsize=None)
def _stage_closure(stage: str, root: Path | None = None) -> tuple[str, ...]:
    shared = tuple(f"taufm.{name.replace('/', '.')}" for name in SHARED_SOURCES)
    return tuple(import_closure((*STAGE_ENTRY_MODULES[stage], *shared), root))


class _StageSources(Mapping):
    """Stage -> its sources, each worked out on first use (a command needs its own stage only)."""

    def __getitem__(self, stage: str) -> tuple[str, ...]:
        if stage not in STAGE_ENTRY_MODULES:
            raise KeyError(stage)
        return _stage_closure(stage)

    def __iter__(self):
        return iter(STAGE_ENTRY_MODULES)

    def __len__(self) -> int:
        return len(STAGE_ENTRY_MODULES)


STAGE_SOURCES: Mapping[str, tuple[str, ...]] = _StageSources()
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
    sources = STAGE_SOURCES[stage] if root is None else stage_sources(root)[stage]
    return source_hash(*sources, root=root)


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
