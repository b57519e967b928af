"""``questkern report``: bench CSVs, tuning tables/studies, profiles -> one offline HTML file.

data.py     loaders (bench, quality, profiles, tuning tables, Optuna studies)
figures.py  one function per section, plotly figures with titles and units
build.py    the single self-contained HTML page and its manifest of plot ids
browser.py  headless Chromium: load check (JS errors, plots drawn) and screenshots
"""

from questkern.report.build import ReportInputs, gather, read_manifest, render

__all__ = ["ReportInputs", "gather", "render", "read_manifest"]
