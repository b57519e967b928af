"""Exploration of the fused Quest step (questkern.ops.step) and of dense decode at small batch.

  python3 scripts/gpu/step_explore.py [step] [dense] [model]   (all three by default)

step:  per case (batch 1/8, GQA 32/8 and MHA 32/32, 32K/128K; bf16, d 128, page 16, budget
       2048, integer keys so that selections compare exactly): SDPA, the classic step with
       the tuning table's configs, the fused step's heuristic default, then one knob at a
       time around it (warps, splits, fused combine, radix top-K, persistent, pages per
       block, stage-1 tile and warps); every fused variant's selection must equal the
       classic one and its output agree within bf16 tolerance. Also stage 1 alone.
dense: in-house dense decode configs around the table's vs SDPA (batch 1/8, 32K).
model: llama3-8b, batch 1, 32K: SDPA / none / dense / Quest fused / Quest classic.
CUDA graphs + do_bench median, L2 flushed; CSV and log to $OUT (or /tmp/step_explore).
"""

import csv
import dataclasses
import os
import sys
import time

import torch

from questkern.api import QuestDecode
from questkern.bench.core import Case, _contiguous_kv, build_cache
from questkern._timing import copy_bandwidth_gbps, device_info, graph_floor_us, time_fn
from questkern.config import DecodeConfig, default_step_config

OUT = os.environ.get("OUT", "/tmp/step_explore")
os.makedirs(OUT, exist_ok=True)
parts = set(sys.argv[1:]) or {"step", "dense", "model"}
gpu = torch.cuda.is_available()
dev = torch.device("cuda" if gpu else "cpu")
REP = int(os.environ.get("REP_MS", "60" if gpu else "1"))
T0 = time.time()
info = device_info()
copy_gbps = copy_bandwidth_gbps()
floor = graph_floor_us(REP)
print(f"{info} copy {copy_gbps:.0f} GB/s floor {floor:.2f} us", flush=True)
rows = []


def emit(**r):
    r.update(elapsed_s=round(time.time() - T0, 1))
    rows.append(r)
    keys = sorted({k for x in rows for k in x})
    with open(f"{OUT}/step_explore.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def t(fn):
    return time_fn(fn, graph=gpu, rep_ms=REP)


if gpu:
    CASES = [
        (1, 32, 8, 32768),
        (1, 32, 32, 32768),
        (1, 32, 8, 131072),
        (1, 32, 32, 131072),
        (8, 32, 8, 32768),
        (8, 32, 32, 32768),
        (8, 32, 8, 131072),
    ]
else:
    CASES = [(1, 4, 2, 1000), (2, 4, 4, 700)]
BUDGET = 2048 if gpu else 128
D = 128 if gpu else 64

if "step" in parts:
    for B, hq, hkv, L in CASES:
        case = Case(B, hq, hkv, D, torch.bfloat16, L, 16, BUDGET)
        cache = build_cache(case, dev, integer_keys=True)
        g = torch.Generator(device=dev).manual_seed(1)
        q = torch.randint(-4, 5, (B, hq, D), generator=g, device=dev).to(torch.bfloat16)
        tag = dict(batch=B, hq=hq, hkv=hkv, seq=L)
        k_c, v_c = _contiguous_kv(cache, L)
        q4 = q[:, :, None]
        sdpa = t(lambda: torch.nn.functional.scaled_dot_product_attention(q4, k_c, v_c, enable_gqa=hq != hkv))
        del k_c, v_c
        emit(**tag, kind="sdpa", us=sdpa)
        classic = QuestDecode(BUDGET, path="classic")
        classic.plan(cache, num_q_heads=hq)
        ref_out, ref_sel = (x.clone() for x in classic.run(q, return_selected=True))
        us_c = t(lambda: classic.run(q))
        emit(**tag, kind="classic", us=us_c, vs_sdpa=sdpa / us_c)
        print(f"B={B} {hq}/{hkv} L={L}: sdpa {sdpa:.1f} classic {us_c:.1f} ({sdpa / us_c:.2f}x)", flush=True)
        base = default_step_config(cache.page_table.shape[1], D, 16)
        fused0 = QuestDecode(BUDGET, path="fused")
        p0 = fused0.plan(cache, num_q_heads=hq)
        S0 = p0.num_splits
        variants = [("default", {})]
        for w in (1, 2, 8):
            variants.append((f"warps{w}", dict(num_warps=w)))
        for s in sorted({max(1, S0 // 2), S0 * 2, max(1, S0 // 4)} - {S0}):
            variants.append((f"splits{s}", dict(splits=s)))
        variants += [
            ("fuse_combine", dict(fuse_combine=True)),
            ("radix", dict(topk="radix")),
            ("persistent", dict(persistent=True)),
            ("ppb2", dict(pages_per_block=2)),
            ("ppb8", dict(pages_per_block=8)),
            ("chunk32", dict(chunk_pages=32)),
            ("score_warps8", dict(score_warps=8)),
            ("stages3", dict(num_stages=3)),
            ("warps8_fuse", dict(num_warps=8, fuse_combine=True)),
        ]
        best = None
        for name, kw in variants:
            cfg = dataclasses.replace(base, **kw)
            w = QuestDecode(BUDGET, path="fused", configs={"quest_step": cfg})
            try:
                pl = w.plan(cache, num_q_heads=hq)
                out, sel = w.run(q, return_selected=True)
                ok_sel = bool(torch.equal(sel, ref_sel))
                err = (out.float() - ref_out.float()).abs().max().item()
                us = t(lambda: w.run(q))
                out2, sel2 = w.run(q, return_selected=True)  # after replays: still right (counters rearmed)
                ok2 = bool(torch.equal(sel2, ref_sel)) and (out2.float() - ref_out.float()).abs().max().item() < 5e-2
            except Exception as e:  # a variant that fails is recorded, the run goes on
                print(f"    {name}: FAILED {str(e).splitlines()[0][:300]}", flush=True)
                emit(**tag, kind="fused", variant=name, error=str(e).splitlines()[0][:300])
                continue
            emit(
                **tag,
                kind="fused",
                variant=name,
                splits=pl.num_splits,
                us=us,
                vs_sdpa=sdpa / us,
                vs_classic=us_c / us,
                sel_ok=ok_sel and ok2,
                maxerr=err,
                config=str(cfg),
            )
            print(
                f"    {name:<14} S={pl.num_splits:<3} {us:7.1f} us  {sdpa / us:5.2f}x sdpa  {us_c / us:5.2f}x classic"
                f"  sel_ok={ok_sel and ok2} err={err:.3g}",
                flush=True,
            )
            if ok_sel and ok2 and err < 5e-2 and (best is None or us < best[1]):
                best = (name, us)
            del w
        # stage 1 alone (the score stream of the default config), for the breakdown
        from questkern.ops.step.kernel import quest_step  # noqa: F401  (import check)
        from questkern.ops.select.kernel import _select_score_kernel, select_block_g

        ws = fused0._step_ws
        sc = ws["scores"]
        n_chunks = -(-max(1, cache.page_table.shape[1] - 1) // base.chunk_pages)
        G = hq // hkv

        def stage1():
            _select_score_kernel[(n_chunks, hkv, B)](
                q,
                cache.kmin,
                cache.kmax,
                cache.page_table,
                cache.seq_lens,
                ws["cand_idx"],
                sc,
                ws["cand_idx"],
                fused0._selected,
                fused0._selected_phys,
                ws["counters"],
                p0.k_pages,
                cache.page_table.shape[1],
                cache.kmin.shape[0],
                n_chunks,
                q.stride(0),
                q.stride(1),
                cache.kmin.stride(0),
                cache.kmin.stride(1),
                cache.page_table.stride(0),
                sc.stride(0),
                sc.stride(1),
                0,
                0,
                PAGE=16,
                HEAD_DIM=D,
                BLOCK_D=base.block_d,
                GROUP=G,
                BLOCK_G=select_block_g(G),
                SHARED=True,
                AGG_MAX=False,
                CHUNK=base.chunk_pages,
                IEEE=False,
                WRITE_PHYS=False,
                NUM_STAGES=1,
                FUSED_MERGE=False,
                BLOCK_M=16,
                FILL=16,
                RADIX=False,
                TRIGGER=False,
                num_warps=base.score_warps,
            )

        us1 = t(stage1)
        meta_bytes = 2 * B * cache.page_table.shape[1] * hkv * D * 2
        emit(**tag, kind="stage1", us=us1, gbps=meta_bytes / us1 / 1e3)
        print(f"    stage1 alone {us1:.1f} us ({meta_bytes / us1 / 1e3:.0f} GB/s); best fused {best}", flush=True)
        del cache, classic, fused0
        torch.cuda.empty_cache() if gpu else None

if "dense" in parts:
    for B, hq, hkv, L in (
        [(1, 32, 8, 32768), (1, 32, 32, 32768), (8, 32, 8, 32768), (1, 32, 8, 131072)] if gpu else [(1, 4, 2, 500)]
    ):
        case = Case(B, hq, hkv, D, torch.bfloat16, L, 16, BUDGET)
        cache = build_cache(case, dev)
        q = torch.randn(B, hq, D, device=dev).to(torch.bfloat16)
        k_c, v_c = _contiguous_kv(cache, L)
        q4 = q[:, :, None]
        sdpa = t(lambda: torch.nn.functional.scaled_dot_product_attention(q4, k_c, v_c, enable_gqa=hq != hkv))
        ref = torch.nn.functional.scaled_dot_product_attention(q4, k_c, v_c, enable_gqa=hq != hkv)[:, :, 0].float()
        del k_c, v_c
        tag = dict(batch=B, hq=hq, hkv=hkv, seq=L)
        emit(**tag, kind="dense_sdpa", us=sdpa)
        table = QuestDecode(None)
        pt = table.plan(cache, num_q_heads=hq)
        base = pt.decode_config
        us_t = t(lambda: table.run(q))
        emit(**tag, kind="dense", variant="table", us=us_t, vs_sdpa=sdpa / us_t, splits=pt.num_splits, config=str(base))
        print(
            f"dense B={B} {hq}/{hkv} L={L}: sdpa {sdpa:.1f} table {us_t:.1f} ({sdpa / us_t:.3f}x) {base} S={pt.num_splits}",
            flush=True,
        )
        S = pt.num_splits
        grid = [
            dict(pages_per_block=p, num_warps=w, num_stages=s, num_splits=sp, fuse_combine=fc)
            for p, w, s, sp, fc in [
                (8, 4, 2, S, False),
                (8, 8, 3, S, False),
                (4, 4, 3, S, False),
                (4, 4, 4, S, False),
                (16, 8, 2, S, False),
                (8, 4, 3, S, False),
                (4, 4, 2, 2 * S, False),
                (4, 4, 2, max(1, S // 2), False),
                (8, 4, 3, 2 * S, False),
                (4, 4, 2, S, True),
                (8, 8, 2, S, False),
            ]
        ]
        for kw in grid:
            cfg = DecodeConfig(**kw)
            w = QuestDecode(None, configs={"dense_decode": cfg})
            try:
                pl = w.plan(cache, num_q_heads=hq)
                err = (w.run(q).float() - ref).abs().max().item()
                us = t(lambda: w.run(q))
            except Exception as e:
                print(f"    {kw}: FAILED {str(e).splitlines()[0][:200]}", flush=True)
                continue
            emit(**tag, kind="dense", variant=str(kw), us=us, vs_sdpa=sdpa / us, splits=pl.num_splits, maxerr=err)
            print(f"    {kw} S={pl.num_splits}: {us:.1f} us {sdpa / us:.3f}x sdpa err {err:.3g}", flush=True)
        del cache
        torch.cuda.empty_cache() if gpu else None

if "model" in parts:
    from questkern.bench.model import ModelCase, run_model_case, summarize
    from questkern.bench.models import PRESETS

    shape = PRESETS["llama3-8b"] if gpu else PRESETS["tiny"]
    for B, L in [(1, 32768)] if gpu else [(1, 200)]:
        case = ModelCase(shape, B, L, budget=BUDGET, dense_layers=2 if gpu else 1, path="fused")
        times = run_model_case(
            case, dev, rep_ms=REP * 3, attentions=("sdpa", "none", "dense", "quest", "quest_classic")
        )
        for r in summarize(case, times, copy_gbps):
            emit(kind="model", **{k: v for k, v in r.items()})
            print(
                f"  model {r['attention']:<13} {r['ms_per_token']:.3f} ms/token {r['speedup_vs_sdpa']:.3f}x "
                f"(ceiling {r['ceiling_speedup']:.3f}x, bound {r['bound_speedup']:.3f}x)",
                flush=True,
            )
print(f"done in {time.time() - T0:.0f} s; {len(rows)} rows in {OUT}/step_explore.csv")
