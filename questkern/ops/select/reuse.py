"""Selection reuse across decode steps: the gate kernel (rules: reuse_naive.py).

Before the selection launch, ``_reuse_gate_kernel`` (grid ``(B, Hkv)``, one tiny program
per KV head) decides on the device which KV heads select at this step, writes the
decision to ``gate [B, Hkv]`` and updates the state; the selection kernels read the gate
first and return at once for KV heads that reuse, leaving their previous rows in the
plan's selection buffer. No host sync and nothing re-captured: a CUDA graph of the step
replays the same launches and the gate decides what runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from questkern.config import next_pow2
from questkern.ops.select.kernel import _planned_pages


@triton.jit
def _reuse_gate_kernel(
    q,  # [B, Hq, D] (last dim contiguous)
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    gate,  # [B, Hkv] int32 out: 1 = the KV head's rows select at this step
    state,  # [B, Hkv, 4] int32: seq_len at the last step (-1: none), first physical page, pages, steps since selection
    force,  # [B, Hkv] int32: 1 = select at this step (QuestDecode.reselect); cleared here
    q_sel,  # [B, Hkv, GROUP * HEAD_DIM] float32: the queries of the last selection (DRIFT)
    max_pages,
    every,
    threshold,
    stride_qb,
    stride_qh,
    stride_tb,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_GD: tl.constexpr,  # next_pow2(GROUP * HEAD_DIM)
    AGE: tl.constexpr,  # reselect_every is set
    DRIFT: tl.constexpr,  # drift_threshold is set
    status=None,  # [1] int32 plan status (STATUS), see _planned_pages
    STATUS: tl.constexpr = False,
):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    n_h = tl.num_programs(1)
    r = i_b.to(tl.int64) * n_h + i_h
    seq_len = tl.load(seq_lens + i_b)
    n_pages = _planned_pages(seq_len, PAGE, max_pages, status, STATUS)
    first = tl.load(page_table + i_b.to(tl.int64) * stride_tb)
    p_st = state + r * 4
    last_len = tl.load(p_st)
    last_first = tl.load(p_st + 1)
    last_pages = tl.load(p_st + 2)
    age = tl.load(p_st + 3)
    forced = tl.load(force + r)
    go = (last_len < 0) | (seq_len < last_len) | (seq_len > last_len + 1) | (first != last_first) | (forced != 0)
    go = go | (n_pages != last_pages)
    if AGE:
        go = go | (age + 1 >= every)
    if DRIFT:
        o_x = tl.arange(0, BLOCK_GD)
        m_x = o_x < GROUP * HEAD_DIM
        p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_x // HEAD_DIM) * stride_qh + o_x % HEAD_DIM
        b_q = tl.load(p_q, mask=m_x, other=0.0).to(tl.float32)  # [BLOCK_GD] the group's queries, concatenated
        p_qs = q_sel + r * (GROUP * HEAD_DIM) + o_x
        b_qs = tl.load(p_qs, mask=m_x, other=0.0)
        dot = tl.sum(b_q * b_qs, axis=0)
        den = tl.sqrt(tl.sum(b_q * b_q, axis=0)) * tl.sqrt(tl.sum(b_qs * b_qs, axis=0))
        # cos = dot / den < threshold, without dividing; a zero or non-finite norm counts as drifted
        go = go | (den == 0) | (den != den) | (den == float("inf")) | (dot != dot) | (dot < threshold * den)
        tl.store(p_qs, b_q, mask=m_x & go)
    tl.store(gate + r, go.to(tl.int32))
    tl.store(p_st, seq_len)
    tl.store(p_st + 1, first)
    tl.store(p_st + 2, n_pages)
    tl.store(p_st + 3, tl.where(go, 0, age + 1))
    tl.store(force + r, 0)


@dataclass
class ReuseState:
    """Device state of selection reuse for one plan (see :func:`reuse_state`)."""

    gate: torch.Tensor  # [B, Hkv] int32
    state: torch.Tensor  # [B, Hkv, 4] int32
    force: torch.Tensor  # [B, Hkv] int32
    q_sel: torch.Tensor  # [B, Hkv, G * D] float32 (a [1] placeholder without drift)
    reselect_every: int | None
    drift_threshold: float | None


def reuse_state(
    batch: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    reselect_every: int | None,
    drift_threshold: float | None,
    device,
) -> ReuseState:
    """Fresh state: every sequence selects at its first step."""
    state = torch.zeros(batch, num_kv_heads, 4, dtype=torch.int32, device=device)
    state[..., 0] = -1
    n = group * head_dim if drift_threshold is not None else 1
    return ReuseState(
        gate=torch.ones(batch, num_kv_heads, dtype=torch.int32, device=device),
        state=state,
        force=torch.zeros(batch, num_kv_heads, dtype=torch.int32, device=device),
        q_sel=torch.zeros(batch, num_kv_heads, n, dtype=torch.float32, device=device),
        reselect_every=reselect_every,
        drift_threshold=drift_threshold,
    )


def reuse_gate(
    q: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    st: ReuseState,
    status: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the gate for this step; returns ``st.gate`` [B, Hkv] int32. Inputs assumed validated."""
    B, Hq, D = q.shape
    Hkv = st.gate.shape[1]
    G = Hq // Hkv
    _reuse_gate_kernel[(B, Hkv)](
        q,
        page_table,
        seq_lens,
        st.gate,
        st.state,
        st.force,
        st.q_sel,
        page_table.shape[1],
        st.reselect_every or 0,
        0.0 if st.drift_threshold is None else float(st.drift_threshold),
        q.stride(0),
        q.stride(1),
        page_table.stride(0),
        PAGE=page_size,
        HEAD_DIM=D,
        GROUP=G,
        BLOCK_GD=next_pow2(G * D),
        AGE=st.reselect_every is not None,
        DRIFT=st.drift_threshold is not None,
        status=seq_lens if status is None else status,
        STATUS=status is not None,
        num_warps=1 if st.drift_threshold is None else 4,
    )
    return st.gate


__all__ = ["ReuseState", "reuse_state", "reuse_gate"]
