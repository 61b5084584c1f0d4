"""Figures: one module per figure family, all drawn with the look defined in :mod:`taufm.plots.style`.

- :mod:`taufm.plots.style`: mplhep style (as a context manager), fixed colours, ``save_figure``.
- :mod:`taufm.plots.dataquality`: per-sample checks of the ingested Parquet shards.
"""
