"""The fused Quest step's tunable description (:mod:`questkern.ops.tunable`).

Stage 1's ``chunk_pages`` (as select's: no larger than the context needs) with its
``score_warps`` register budget (``2 * chunk_pages * block_d / (32 * score_warps) <= 256``)
and ``tiles_per_program``; stage 2's ``splits`` (CTAs per selection row, each finding the
row's top-K itself, no more than the blocks of selected pages), ``pages_per_block`` and
``num_warps`` under the decode's token (16..256 per inner step) and register limits,
``num_stages``, ``topk``, ``fuse_combine``/``combine_warps`` as for decode, and
``persistent`` only where the whole stage-2 grid fits on the SMs at once.
"""

from __future__ import annotations

import torch

from questkern import config as C
from questkern.config import next_pow2
from questkern.ops.decode.tunable import POW2_SPLITS, TOLERANCES, kv_tile_violation
from questkern.ops.select.tunable import SELECT_TOPK
from questkern.ops.tunable import REG_BUDGET, Param, pow2_range


def default_splits(bucket, page_size: int, budget: int | None, num_sms: int) -> int:
    """The heuristic's CTAs per selection row for this bucket on ``num_sms`` SMs."""
    step = C.default_step_config(bucket.max_pages(page_size), bucket.head_dim, page_size)
    return C.choose_step_splits(step, bucket.batch, bucket.head_programs(), bucket.k_pages(page_size, budget), num_sms)


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


class StepTunable:
    def params(self, bucket, num_sms: int) -> list[Param]:
        cap = max(max(16, next_pow2(bucket.max_pages(ps) - 1)) for ps in bucket.page_sizes)
        combos = [(ps, bud) for ps in bucket.page_sizes for bud in bucket.budgets]
        max_useful = max(bucket.slots(ps, bud) for ps, bud in combos)
        splits = {s for s in POW2_SPLITS if s <= max_useful}
        splits |= {default_splits(bucket, ps, bud, num_sms) for ps, bud in combos}
        return [
            Param("chunk_pages", pow2_range(16, min(cap, 256))),
            Param("block_d", (min(128, bucket.head_dim),)),  # not searched: stage 1 reads up to 128 channels a tile
            Param("score_warps", (2, 4, 8)),
            Param("tiles_per_program", (1, 2, 4)),
            Param("splits", tuple(sorted(splits))),
            Param("pages_per_block", (1, 2, 4, 8, 16)),
            Param("num_warps", (2, 4, 8)),
            Param("num_stages", (1, 2, 3)),
            Param("topk", SELECT_TOPK),
            Param("fuse_combine", (True, False), active=lambda p: p["splits"] > 1),
            Param("combine_warps", (1, 2, 4, 8), active=lambda p: p["splits"] > 1 and not p.get("fuse_combine", False)),
            Param("persistent", (False, True)),
        ]

    def default(self, bucket, page_size: int, budget: int | None, num_sms: int) -> dict:
        st = C.default_step_config(bucket.max_pages(page_size), bucket.head_dim, page_size)
        p: dict = dict(
            chunk_pages=st.chunk_pages,
            block_d=st.block_d,
            score_warps=st.score_warps,
            tiles_per_program=st.tiles_per_program,
            splits=default_splits(bucket, page_size, budget, num_sms),
            pages_per_block=st.pages_per_block,
            num_warps=st.num_warps,
            num_stages=st.num_stages,
            topk=st.topk,
            persistent=st.persistent,
        )
        if p["splits"] > 1:
            p["fuse_combine"] = st.fuse_combine
            if not st.fuse_combine:
                p["combine_warps"] = st.combine_warps
        return p

    def violation(self, bucket, params: dict, page_size: int, budget: int | None, num_sms: int) -> str | None:
        need = max(16, next_pow2(bucket.max_pages(page_size) - 1))
        if params["chunk_pages"] > need:
            return (
                f"chunk_pages {params['chunk_pages']} > {need}, all a {bucket.max_pages(page_size)}-page context needs"
            )
        per_thread = 2 * params["chunk_pages"] * params["block_d"] / (32 * params["score_warps"])
        if per_thread > REG_BUDGET:
            return f"chunk_pages*block_d score tile needs {per_thread:.0f} elements/thread > {REG_BUDGET}"
        bad = kv_tile_violation(page_size, params["pages_per_block"], bucket.head_dim, params["num_warps"])
        if bad:
            return bad
        assert budget is not None, "quest_step is tuned with a budget"
        useful = -(-bucket.k_pages(page_size, budget) // params["pages_per_block"])
        if params["splits"] > useful:
            return f"splits {params['splits']} > {useful} blocks of selected pages"
        grid = params["splits"] * bucket.batch * bucket.head_programs()
        if params["persistent"] and grid > num_sms:
            return (
                f"persistent needs the whole stage-2 grid ({params['splits']} x "
                f"{bucket.batch * bucket.head_programs()} programs) on the {num_sms} SMs at once"
            )
        return None

    def config(self, params: dict) -> C.StepConfig:
        return C.StepConfig(
            chunk_pages=params["chunk_pages"],
            block_d=params["block_d"],
            score_warps=params["score_warps"],
            tiles_per_program=params["tiles_per_program"],
            splits=params["splits"],
            pages_per_block=params["pages_per_block"],
            num_warps=params["num_warps"],
            num_stages=params["num_stages"],
            topk=params["topk"],
            fuse_combine=params.get("fuse_combine", False),
            combine_warps=params.get("combine_warps", C.StepConfig.combine_warps),
            persistent=params["persistent"],
        )

    def build(self, bucket, inputs, config, budget):
        from questkern.ops.step import quest_step, step_plan, step_workspace

        b, w, c, q, dev = bucket, inputs, inputs.cache, inputs.q, inputs.device
        B, Hq, D = q.shape
        ref = w.selection_ref(budget, b.gqa_mode, b.aggregate)  # [B, rows, K]
        K = ref.shape[2]
        num_sms = _num_sms(dev)
        geo = step_plan(B, ref.shape[1], c.page_table.shape[1], K, config, num_sms)
        ws = step_workspace(B, Hq, ref.shape[1], D, geo, dev)
        out = torch.full_like(q, float("nan"))
        sel = torch.full_like(ref, -7)
        phys = torch.full_like(ref, -7)

        def launch():
            quest_step(
                q,
                c.kmin,
                c.kmax,
                c.k_cache,
                c.v_cache,
                c.page_table,
                c.seq_lens,
                K,
                gqa_mode=b.gqa_mode,
                aggregate=b.aggregate,
                config=config,
                out=out,
                selected=sel,
                selected_phys=phys,
                workspace=ws,
                num_sms=num_sms,
            )

        def check():
            if not torch.equal(sel, ref):
                rows = int((sel != ref).any(-1).sum())
                raise AssertionError(
                    f"selection differs from the reference in {rows} of {ref.shape[0] * ref.shape[1]} rows"
                )
            want = w.attention_ref(ref, ("sparse", budget, b.gqa_mode, b.aggregate))
            torch.testing.assert_close(
                out.float(),
                want,
                **TOLERANCES[q.dtype],
                msg=lambda m: "output differs from the float32 reference: " + " ".join(m.split()),
            )

        return launch, check


TUNABLE = StepTunable()
