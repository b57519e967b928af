"""Hooks that make questkern the decode attention of model libraries.

``questkern.integrations.hf``: Hugging Face transformers (``AttentionInterface``), with
``hf_cache.QuestCache`` (the K/V in questkern's pages), ``hf_generate`` (a decode loop
capturable in a CUDA graph) and ``hf_bench`` (what ``questkern generate`` runs).
Importing this package does not import transformers; the submodules do, lazily.
"""
