"""Kernels compile for sm_90 (H100) on this CPU-only machine, with the GPU compiler.

The interpreter runs code that the compiler rejects: a named constexpr reassigned when
``tl.static_range`` unrolls a loop passed every interpreter test and failed on the GPU
(fp8 metadata, block_d < head_dim). So the fp8-metadata paths are also compiled here,
in a subprocess without the interpreter (the kernels are decorated at import), with
unrolled loops (block_d < head_dim, several stages), both score paths of select
(float32 products for one query head, tl.dot for a group) and the decode kernel."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from questkern.ops.decode import kernel as dk
from questkern.ops.metadata import kernel as mk
from questkern.ops.select import kernel as sk
from questkern.ops.step import kernel as stk
from questkern.ops.select import adaptive as ak
from questkern.ops.select import reuse as rk

kernel_name, types, consts = json.loads(sys.argv[1])  # types: pointers "*bf16", scalars "fp32"; others i32
fn = (getattr(mk, kernel_name, None) or getattr(sk, kernel_name, None) or getattr(stk, kernel_name, None)
      or getattr(ak, kernel_name, None) or getattr(rk, kernel_name, None) or getattr(dk, kernel_name))
for prm in fn.params:  # constexpr arguments a case leaves out take their defaults, as in a launch (e.g. SUB=1)
    if prm.is_constexpr and prm.name not in consts and prm.default is not inspect.Parameter.empty:
        consts[prm.name] = prm.default
sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("compiled", kernel_name)
"""

SELECT_PTRS = dict(
    q="*bf16",
    kmin="*fp8e5",
    kmax="*fp8e5",
    page_table="*i32",
    seq_lens="*i32",
    cand_idx="*i32",
    cand_score="*fp32",
    cand_phys="*i32",
    out_idx="*i32",
    out_score="*fp32",
    out_phys="*i32",
    final_idx="*i32",
    final_phys="*i32",
    counters="*i32",
    status="*i32",
    gate="*i32",
)
STREAM = dict(
    PAGE=16,
    HEAD_DIM=128,
    SHARED=True,
    AGG_MAX=False,
    IEEE=False,
    WRITE_PHYS=True,
    FUSED_MERGE=False,
    BLOCK_M=2048,
    FILL=128,
    RADIX=False,
    TRIGGER=False,
    STATUS=True,
)
TILE = dict(
    PAGE=16,
    HEAD_DIM=128,
    SHARED=False,
    AGG_MAX=False,
    CHUNK=256,
    KC=128,
    ONE_STAGE=False,
    FILL=128,
    IEEE=False,
    TOPK=True,
    WRITE_PHYS=True,
    RADIX=False,
    FUSED_MERGE=False,
    BLOCK_M=1024,
    TRIGGER=False,
    STATUS=True,
)
META_PTRS = dict(
    k_cache="*bf16",
    v_cache="*bf16",
    k_new="*bf16",
    v_new="*bf16",
    kmin="*fp8e5",
    kmax="*fp8e5",
    page_table="*i32",
    seq_lens="*i32",
    first_page="*i32",
    active="*i32",
)
DECODE_PTRS = dict(
    q="*bf16",
    k_cache="*bf16",
    v_cache="*bf16",
    page_table="*i32",
    seq_lens="*i32",
    sel="*i32",
    sel_phys="*i32",
    o_part="*fp32",
    lse_part="*fp32",
    out="*bf16",
    counters="*i32",
    qk_scale="fp32",
    status="*i32",
)
DECODE = dict(
    PAGE=16,
    HEAD_DIM=128,
    BLOCK_D=128,
    PER_HEAD=False,
    SINGLE_SPLIT=False,
    FUSE_COMBINE=False,
    BLOCK_S=16,
    DENSE=False,
    HAS_PHYS=True,
    UPCAST=False,
    PDL=True,
    STATUS=False,
)
STEP_PTRS = dict(
    q="*bf16",
    kmin="*bf16",
    kmax="*bf16",
    k_cache="*bf16",
    v_cache="*bf16",
    page_table="*i32",
    seq_lens="*i32",
    scores="*fp32",
    sel="*i32",
    sel_phys="*i32",
    o_part="*fp32",
    lse_part="*fp32",
    out="*bf16",
    counters="*i32",
    barrier="*i32",
    qk_scale="fp32",
    status="*i32",
)
STEP = dict(
    PAGE=16,
    HEAD_DIM=128,
    BLOCK_D=128,
    GROUP=4,
    BLOCK_H=16,
    PER_HEAD=False,
    KV_GROUP=4,
    PAGES_PER_BLOCK=4,
    SLOTS=8,
    BLOCK_SLOTS=8,
    BLOCK_W=2048,
    PHYS_UPFRONT=True,
    SINGLE_SPLIT=False,
    FUSE_COMBINE=False,
    BLOCK_S=16,
    RADIX=False,
    UPCAST=False,
    PDL=True,
    PERSISTENT=False,
    SCORE_BLOCK_D=128,
    SCORE_BLOCK_G=16,
    SHARED=True,
    AGG_MAX=False,
    CHUNK=64,
    IEEE=False,
    STATUS=True,
)
REUSE_PTRS = dict(
    q="*bf16",
    page_table="*i32",
    seq_lens="*i32",
    gate="*i32",
    state="*i32",
    force="*i32",
    q_sel="*fp32",
    threshold="fp32",
    status="*i32",
)
ADAPTIVE_PTRS = dict(SELECT_PTRS, aux="*fp32", threshold="fp32", zscale="fp32")
ADAPTIVE = dict(
    PAGE=16,
    HEAD_DIM=128,
    BLOCK_D=64,
    SHARED=True,
    AGG_MAX=False,
    CHUNK=64,
    KC=64,
    NC=4,
    FILL=64,
    IEEE=False,
    WRITE_PHYS=True,
    STATUS=True,
)
CASES = {
    "metadata-build-fp8": ("_metadata_build_kernel", META_PTRS, dict(PAGE=16, HEAD_DIM=128, BLOCK_D=64, META_FP8=True)),
    "metadata-append-fp8": (
        "_append_kernel",
        META_PTRS,
        dict(NUM_KV_HEADS=8, PAGE=16, HEAD_DIM=128, BLOCK_H=8, BLOCK_D=128, META_FP8=True),
    ),
    "score-stream-mha-fp8": (
        "_select_score_kernel",
        SELECT_PTRS,
        dict(STREAM, BLOCK_D=32, GROUP=1, BLOCK_G=1, CHUNK=64, NUM_STAGES=2),
    ),
    "score-stream-gqa-fp8": (
        "_select_score_kernel",
        SELECT_PTRS,
        dict(STREAM, BLOCK_D=64, GROUP=4, BLOCK_G=16, CHUNK=32, NUM_STAGES=3),
    ),
    "tile-gqa-fp8": ("_select_tile_kernel", SELECT_PTRS, dict(TILE, BLOCK_D=32, GROUP=8, BLOCK_G=16)),
    "tile-mha-bf16": (
        "_select_tile_kernel",
        dict(SELECT_PTRS, kmin="*bf16", kmax="*bf16"),
        dict(TILE, BLOCK_D=64, GROUP=1, BLOCK_G=1),
    ),
    "decode-sparse-unrolled": (
        "_decode_split_kernel",
        DECODE_PTRS,
        dict(DECODE, GROUP=1, BLOCK_H=16, KV_GROUP=1, PAGES_PER_BLOCK=4, STATIC_ITERS=2),
    ),
    "decode-dense-group": (
        "_decode_split_kernel",
        DECODE_PTRS,
        dict(DECODE, GROUP=4, BLOCK_H=16, KV_GROUP=4, PAGES_PER_BLOCK=2, STATIC_ITERS=0, DENSE=True, STATUS=True),
    ),
    "decode-combine": ("_combine_kernel", DECODE_PTRS, dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_S=16, PDL=True)),
    "select-merge": (
        "_select_merge_kernel",
        SELECT_PTRS,
        dict(PAGE=16, BLOCK_N=2048, FILL=128, WRITE_PHYS=True, RADIX=False, TRIGGER=False),
    ),
    "reuse-gate-drift": (
        "_reuse_gate_kernel",
        REUSE_PTRS,
        dict(PAGE=16, HEAD_DIM=128, GROUP=4, BLOCK_GD=512, AGE=True, DRIFT=True, STATUS=True),
    ),
    "reuse-gate-age": (
        "_reuse_gate_kernel",
        REUSE_PTRS,
        dict(PAGE=16, HEAD_DIM=64, GROUP=1, BLOCK_GD=64, AGE=True, DRIFT=False, STATUS=False),
    ),
    "score-stream-gated": (
        "_select_score_kernel",
        SELECT_PTRS,
        dict(STREAM, BLOCK_D=64, GROUP=4, BLOCK_G=16, CHUNK=32, NUM_STAGES=3, GATED=True),
    ),
    "tile-gated-one-stage": (
        "_select_tile_kernel",
        dict(SELECT_PTRS, kmin="*bf16", kmax="*bf16"),
        dict(TILE, BLOCK_D=64, GROUP=4, BLOCK_G=16, ONE_STAGE=True, GATED=True),
    ),
    "select-merge-gated": (
        "_select_merge_kernel",
        SELECT_PTRS,
        dict(PAGE=16, BLOCK_N=2048, FILL=128, WRITE_PHYS=True, RADIX=False, TRIGGER=False, GATE_DIV=4, GATED=True),
    ),
    "adaptive-tile-gqa-fp8": (
        "_adaptive_tile_kernel",
        ADAPTIVE_PTRS,
        dict(ADAPTIVE, GROUP=4, BLOCK_G=16, ONE_STAGE=False),
    ),
    "adaptive-merge": (
        "_adaptive_merge_kernel",
        ADAPTIVE_PTRS,
        dict(PAGE=16, NC=4, BLOCK_NC=4, BLOCK_N=256, FILL=64, WRITE_PHYS=True),
    ),
    "step-gqa-bisect": ("_topk_decode_kernel", STEP_PTRS, STEP),
    "step-mha-radix-fused-combine": (
        "_topk_decode_kernel",
        STEP_PTRS,
        dict(
            STEP,
            GROUP=1,
            KV_GROUP=1,
            RADIX=True,
            FUSE_COMBINE=True,
            SLOTS=32,
            BLOCK_SLOTS=32,
            BLOCK_W=8192,
            PHYS_UPFRONT=False,
            SCORE_BLOCK_G=1,
        ),
    ),
    "step-per-head-persistent-fp8": (
        "_topk_decode_kernel",
        dict(STEP_PTRS, kmin="*fp8e5", kmax="*fp8e5"),
        dict(
            STEP,
            GROUP=1,
            PER_HEAD=True,
            PERSISTENT=True,
            PDL=False,
            SHARED=False,
            SINGLE_SPLIT=True,
            SCORE_BLOCK_D=64,
            SLOTS=12,
            BLOCK_SLOTS=16,
        ),
    ),
    # hierarchical pages (metadata [P, Hkv, SUB, D]): sub-page loops in build, append and both score paths
    "metadata-build-hier-fp8": (
        "_metadata_build_kernel",
        META_PTRS,
        dict(PAGE=64, HEAD_DIM=128, BLOCK_D=64, META_FP8=True, SUB=4),
    ),
    "metadata-append-hier-fp8": (
        "_append_kernel",
        META_PTRS,
        dict(NUM_KV_HEADS=8, PAGE=32, HEAD_DIM=128, BLOCK_H=8, BLOCK_D=128, META_FP8=True, SUB=4),
    ),
    "tile-hier-gqa-fp8": (
        "_select_tile_kernel",
        SELECT_PTRS,
        dict(TILE, PAGE=64, BLOCK_D=32, GROUP=4, BLOCK_G=16, SUB=4),
    ),
    "tile-hier-mha-one-stage": (
        "_select_tile_kernel",
        dict(SELECT_PTRS, kmin="*bf16", kmax="*bf16"),
        dict(TILE, PAGE=32, BLOCK_D=64, GROUP=1, BLOCK_G=1, ONE_STAGE=True, SUB=4),
    ),
    "score-stream-hier-gqa": (
        "_select_score_kernel",
        dict(SELECT_PTRS, kmin="*bf16", kmax="*bf16"),
        dict(STREAM, PAGE=64, BLOCK_D=64, GROUP=8, BLOCK_G=16, CHUNK=32, NUM_STAGES=3, SUB=4),
    ),
    "step-shared-persistent-fused-combine": (
        "_topk_decode_kernel",
        STEP_PTRS,
        dict(STEP, PERSISTENT=True, PDL=False, FUSE_COMBINE=True),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiles_for_sm90(name, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}  # a real compile, no cache
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES[name])], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"compiled {CASES[name][0]}" in r.stdout
