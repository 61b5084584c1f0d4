"""Figures: one module per figure family, all drawn with the look defined in :mod:`taufm.plots.style`.

- :mod:`taufm.plots.style`: mplhep style (as a context manager), fixed colours, ``save_figure``.
- :mod:`taufm.plots.dataquality`: per-sample checks of the ingested Parquet shards.
- :mod:`taufm.plots.tokenizer_checks`: the paper's Fig. 2 and 3 (tokenizer reconstruction).
- :mod:`taufm.plots.paper_figures`: the paper's Fig. 4, 5 and 7 and the headline table.
"""
