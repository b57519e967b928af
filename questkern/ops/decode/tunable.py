"""Sparse and dense decode's tunable description (:mod:`questkern.ops.tunable`).

``16 <= pages_per_block * page_size <= 256`` tokens per inner step (``tl.dot`` needs 16; beyond
256 the K/V tiles spill); register budget ``2 * tokens * head_dim / (32 * num_warps) <= 256``;
``num_splits`` no more than the blocks of work (``ceil(slots / pages_per_block)``, beyond which
the launcher caps it anyway); ``fuse_combine`` searched only with more than one split,
``combine_warps`` only when a separate combine kernel runs.
"""

from __future__ import annotations

import dataclasses

import torch

from questkern import config as C
from questkern.ops.tunable import REG_BUDGET, Param

POW2_SPLITS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# tolerances of a decode output (input dtype, float32 accumulation) against the float32 reference
TOLERANCES = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=4e-3, rtol=4e-3)}


def _has_field(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(C.DecodeConfig)}


def separate_combine(params: dict) -> bool:
    """Whether a separate combine kernel runs (so that combine_warps matters)."""
    return params["num_splits"] > 1 and not params.get("fuse_combine", False)


def default_splits(bucket, page_size: int, budget: int | None, num_sms: int) -> int:
    """The heuristic's split count for this bucket on a device with ``num_sms`` SMs."""
    cfg = C.default_decode_config(page_size, bucket.head_dim)
    return C.choose_num_splits(cfg, bucket.batch, bucket.head_programs(), bucket.slots(page_size, budget), num_sms)


def kv_tile_violation(page_size: int, pages_per_block: int, head_dim: int, num_warps: int) -> str | None:
    """Why a decode's K/V tile (``pages_per_block`` pages per inner step) cannot work, or None:
    16..256 tokens per step, at most REG_BUDGET operand elements per thread. The fused step's
    stage 2 walks the same tiles."""
    tokens = pages_per_block * page_size
    if not 16 <= tokens <= 256:
        return f"pages_per_block*page_size = {tokens} tokens, must be in 16..256"
    per_thread = 2 * tokens * head_dim / (32 * num_warps)
    if per_thread > REG_BUDGET:
        return f"K/V tiles need {per_thread:.0f} elements/thread > {REG_BUDGET}"
    return None


class DecodeTunable:
    """One description for both decodes: a sparse one walks the selection, a dense one every page
    (``bucket.slots``)."""

    def __init__(self, sparse: bool):
        self.sparse = sparse

    def params(self, bucket, num_sms: int) -> list[Param]:
        combos = [(ps, bud) for ps in bucket.page_sizes for bud in (bucket.budgets or (None,))]
        max_useful = max(bucket.slots(ps, bud) for ps, bud in combos)
        splits = {s for s in POW2_SPLITS if s <= max_useful}
        splits |= {default_splits(bucket, ps, bud, num_sms) for ps, bud in combos}
        params = [
            Param("pages_per_block", (1, 2, 4, 8, 16, 32)),
            Param("num_splits", tuple(sorted(splits))),
            Param("num_warps", (1, 2, 4, 8)),
            Param("num_stages", (1, 2, 3, 4)),
        ]
        if _has_field("fuse_combine"):  # last split merges vs a combine launch
            params.append(Param("fuse_combine", (True, False), active=lambda p: p["num_splits"] > 1))
        params.append(Param("combine_warps", (1, 2, 4, 8), active=separate_combine))
        return params

    def default(self, bucket, page_size: int, budget: int | None, num_sms: int) -> dict:
        cfg = C.default_decode_config(page_size, bucket.head_dim)
        p: dict = {
            "pages_per_block": cfg.pages_per_block,
            "num_splits": default_splits(bucket, page_size, budget, num_sms),
            "num_warps": cfg.num_warps,
            "num_stages": cfg.num_stages,
        }
        if p["num_splits"] > 1 and _has_field("fuse_combine"):
            p["fuse_combine"] = cfg.fuse_combine
        if separate_combine(p):
            p["combine_warps"] = cfg.combine_warps
        return p

    def violation(self, bucket, params: dict, page_size: int, budget: int | None, num_sms: int) -> str | None:
        bad = kv_tile_violation(page_size, params["pages_per_block"], bucket.head_dim, params["num_warps"])
        if bad:
            return bad
        useful = -(-bucket.slots(page_size, budget) // params["pages_per_block"])
        if params["num_splits"] > useful:
            return f"num_splits {params['num_splits']} > {useful} blocks of work"
        return None

    def config(self, params: dict) -> C.DecodeConfig:
        extra = {"fuse_combine": params["fuse_combine"]} if "fuse_combine" in params else {}
        return C.DecodeConfig(
            pages_per_block=params["pages_per_block"],
            num_splits=params["num_splits"],
            num_warps=params["num_warps"],
            num_stages=params["num_stages"],
            combine_warps=params.get("combine_warps", C.DecodeConfig.combine_warps),
            **extra,
        )

    def build(self, bucket, inputs, config, budget):
        from questkern.ops.decode import decode_workspace, paged_decode
        from questkern.ops.decode.kernel import decode_num_splits

        b, w, c, q, dev = bucket, inputs, inputs.cache, inputs.q, inputs.device
        B, Hq, D = q.shape
        if self.sparse:
            selected = w.selection_ref(budget, b.gqa_mode, b.aggregate)
            selected_phys = w.selection_phys_ref(budget, b.gqa_mode, b.aggregate)
            ref_key = ("sparse", budget, b.gqa_mode, b.aggregate)
        else:
            selected, selected_phys, ref_key = None, None, "dense"
        per_head = selected is not None and selected.shape[1] == Hq and Hq != c.num_kv_heads
        n_slots = selected.shape[2] if selected is not None else c.page_table.shape[1]
        S = decode_num_splits(config, B, Hq, c.num_kv_heads, per_head, n_slots, dev)
        ws = decode_workspace(B, Hq, S, D, dev) if S > 1 else None
        out = torch.full_like(q, float("nan"))

        def launch():
            paged_decode(
                q,
                c.k_cache,
                c.v_cache,
                c.page_table,
                c.seq_lens,
                selected,
                None,
                config,
                num_splits=S,
                out=out,
                workspace=ws,
                selected_phys=selected_phys,
            )

        def check():
            ref = w.attention_ref(selected, ref_key)
            torch.testing.assert_close(
                out.float(),
                ref,
                **TOLERANCES[q.dtype],
                msg=lambda m: "output differs from the float32 reference: " + " ".join(m.split()),
            )

        return launch, check


SPARSE = DecodeTunable(sparse=True)
DENSE = DecodeTunable(sparse=False)
