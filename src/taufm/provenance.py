"""Which package sources a stage runs, as a hash: Snakemake reruns a stage when it changes.

Snakemake tracks a rule's params but never the modules a script imports. Each rule therefore
carries ``source_hash(...)`` of the taufm modules its stage uses as a param: editing
``taufm/finetune/...`` changes the fine-tuning rules' hash only, so exactly fine-tuning and what
depends on its outputs reruns.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


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
