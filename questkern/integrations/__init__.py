"""Hooks that make questkern the decode attention of model libraries.

``questkern.integrations.hf``: Hugging Face transformers (``AttentionInterface``).
Importing this package does not import transformers; the submodule does, lazily.
"""
