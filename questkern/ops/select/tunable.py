"""Page selection's tunable description (:mod:`questkern.ops.tunable`).

``block_d <= head_dim`` (by the choices); ``chunk_pages`` no larger than the context needs
(``max(16, next_pow2(pages - 1))``: a larger tile is the same one-stage launch with more masked
lanes); register budget ``2 * chunk_pages * block_d / (32 * num_warps) <= 256`` elements per
thread for the kmin/kmax tiles (more spills). ``num_stages`` and ``tiles_per_program`` are
searched only for the score stream (two stages with tiles smaller than K, whose programs loop
over tiles); elsewhere the only loop (over head-dim slices) is unrolled at compile time and
num_stages stays 1. ``merge_warps`` is searched only when the launch is two-stage; ``topk``
(bisection or radix select, both exact) always.
"""

from __future__ import annotations

import dataclasses

import torch

from questkern import config as C
from questkern.config import next_pow2
from questkern.ops.tunable import REG_BUDGET, Param, page_budget, pow2_range

SELECT_TOPK = ("bisect", "radix")  # SelectConfig.topk choices (searched when the field exists)


def _has_field(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(C.SelectConfig)}


def one_stage(bucket, params: dict) -> bool:
    """Whether select runs as one launch (then merge_warps is unused); asks the launcher."""
    from questkern.ops.select.kernel import select_plan

    ps, bud = page_budget(bucket, params)
    n_chunks, _ = select_plan(
        bucket.max_pages(ps), bucket.k_pages(ps, bud), C.SelectConfig(chunk_pages=params["chunk_pages"])
    )
    return n_chunks == 1


def score_stream(bucket, params: dict) -> bool:
    """Whether select's stage 1 is the score stream (two stages, tiles smaller than K),
    where tiles_per_program and num_stages apply; asks the launcher."""
    from questkern.ops.select.kernel import stream_scores

    ps, bud = page_budget(bucket, params)
    return (not one_stage(bucket, params)) and stream_scores(
        C.SelectConfig(chunk_pages=params["chunk_pages"]), bucket.k_pages(ps, bud)
    )


class SelectTunable:
    def params(self, bucket, num_sms: int) -> list[Param]:
        cap = max(max(16, next_pow2(bucket.max_pages(ps) - 1)) for ps in bucket.page_sizes)
        params = [
            Param("chunk_pages", pow2_range(16, min(cap, 1024))),
            Param("block_d", pow2_range(16, min(bucket.head_dim, 128))),
            Param("num_warps", (2, 4, 8, 16)),
            Param("merge_warps", (1, 2, 4, 8, 16), active=lambda p: not one_stage(bucket, p)),
        ]
        if _has_field("topk"):  # top-K algorithm (bisection / radix select)
            params.append(Param("topk", SELECT_TOPK))
        if _has_field("tiles_per_program"):  # the score stream (tiles < K)
            params += [
                Param("tiles_per_program", (1, 2, 4), active=lambda p: score_stream(bucket, p)),
                Param("num_stages", (1, 2, 3), active=lambda p: score_stream(bucket, p)),
            ]
        return params

    def default(self, bucket, page_size: int, budget: int | None, num_sms: int) -> dict:
        cfg = C.default_select_config(bucket.max_pages(page_size), bucket.head_dim)
        at = {"page_size": page_size, "budget": budget}  # where the launcher is asked
        p: dict = {"chunk_pages": cfg.chunk_pages, "block_d": cfg.block_d, "num_warps": cfg.num_warps}
        if not one_stage(bucket, {**at, **p}):
            p["merge_warps"] = cfg.merge_warps
        if _has_field("topk"):
            p["topk"] = cfg.topk
        if _has_field("tiles_per_program") and score_stream(bucket, {**at, **p}):
            p.update(tiles_per_program=cfg.tiles_per_program, num_stages=cfg.num_stages)
        return p

    def violation(self, bucket, params: dict, page_size: int, budget: int | None, num_sms: int) -> str | None:
        need = max(16, next_pow2(bucket.max_pages(page_size) - 1))
        if params["chunk_pages"] > need:
            return (
                f"chunk_pages {params['chunk_pages']} > {need}, all a {bucket.max_pages(page_size)}-page context needs"
            )
        if params["block_d"] > bucket.head_dim:
            return f"block_d {params['block_d']} > head_dim {bucket.head_dim}"
        per_thread = 2 * params["chunk_pages"] * params["block_d"] / (32 * params["num_warps"])
        if per_thread > REG_BUDGET:
            return f"chunk_pages*block_d tile needs {per_thread:.0f} elements/thread > {REG_BUDGET}"
        return None

    def config(self, params: dict) -> C.SelectConfig:
        extra = {"topk": params["topk"]} if "topk" in params else {}
        extra.update({k: params[k] for k in ("tiles_per_program",) if k in params})
        return C.SelectConfig(
            chunk_pages=params["chunk_pages"],
            block_d=params["block_d"],
            num_warps=params["num_warps"],
            num_stages=params.get("num_stages", 1),
            merge_warps=params.get("merge_warps", C.SelectConfig.merge_warps),
            **extra,
        )

    def build(self, bucket, inputs, config, budget):
        from questkern.ops.select import select_pages, select_workspace

        b, w, c, q = bucket, inputs, inputs.cache, inputs.q
        ref = w.selection_ref(budget, b.gqa_mode, b.aggregate)  # [B, Hsel, K]
        phys_ref = w.selection_phys_ref(budget, b.gqa_mode, b.aggregate)
        K = ref.shape[2]
        out = torch.full_like(ref, -7)
        phys = torch.full_like(ref, -7)
        ws = select_workspace(q.shape[0], ref.shape[1], c.page_table.shape[1], K, config, inputs.device)

        def launch():  # as QuestDecode.run launches it: logical and physical ids
            select_pages(
                q,
                c.kmin,
                c.kmax,
                c.page_table,
                c.seq_lens,
                c.page_size,
                K,
                b.gqa_mode,
                b.aggregate,
                config,
                out=out,
                out_phys=phys,
                workspace=ws,
            )

        def check():
            for got, want, what in ((out, ref, "selection"), (phys, phys_ref, "physical page ids")):
                if not torch.equal(got, want):
                    rows = int((got != want).any(-1).sum())
                    raise AssertionError(
                        f"{what} differ from the reference in {rows} of {ref.shape[0] * ref.shape[1]} rows"
                    )

        return launch, check


TUNABLE = SelectTunable()
