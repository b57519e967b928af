"""Shared builders for the kernel tests (tiny shapes: the kernels run in the Triton interpreter)."""

from __future__ import annotations

import torch


def random_page_table(B: int, lens: list[int], page_size: int, extra_pages: int = 3, seed: int = 0):
    """A shuffled page table (physical ids not in logical order) with spare pages."""
    g = torch.Generator().manual_seed(seed)
    max_pages = max(1, max(-(-n // page_size) for n in lens))
    P = B * max_pages + extra_pages
    table = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
    return table, P, torch.tensor(lens, dtype=torch.int32)


def integer_tensor(shape, lo: int, hi: int, dtype, seed: int):
    """Small integers: exactly representable in fp16/bf16, so scores are exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def tiny_llama(layers=3, dtype=torch.float32, seed=0):
    """A tiny random Llama (GQA 4/2, head dim 32) for the transformers tests on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()
