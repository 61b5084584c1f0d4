"""taufm: the tau foundation-model study as a Snakemake workflow plus the package that does the work."""

from __future__ import annotations

__version__ = "0.1.0"
