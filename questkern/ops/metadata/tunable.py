"""The metadata build's tunable description (:mod:`questkern.ops.tunable`): ``num_warps`` only."""

from __future__ import annotations

import torch

from questkern import config as C
from questkern.ops.metadata import metadata_build
from questkern.ops.tunable import Param


class MetadataTunable:
    def params(self, bucket, num_sms: int) -> list[Param]:
        return [Param("num_warps", (1, 2, 4, 8))]

    def default(self, bucket, page_size: int, budget: int | None, num_sms: int) -> dict:
        return {"num_warps": C.default_metadata_config(bucket.head_dim).num_warps}

    def violation(self, bucket, params: dict, page_size: int, budget: int | None, num_sms: int) -> str | None:
        return None

    def config(self, params: dict) -> C.MetadataConfig:
        return C.MetadataConfig(num_warps=params["num_warps"])

    def build(self, bucket, inputs, config, budget):
        c, w = inputs.cache, inputs
        kmin = torch.zeros_like(c.kmin)
        kmax = torch.zeros_like(c.kmax)
        first = torch.zeros(inputs.q.shape[0], dtype=torch.int32, device=inputs.device)

        def launch():
            metadata_build(c.k_cache, kmin, kmax, c.page_table, c.seq_lens, first, None, config)

        def check():
            rmin, rmax = w.metadata_ref()
            if not (torch.equal(kmin.float(), rmin) and torch.equal(kmax.float(), rmax)):
                bad = int(((kmin.float() != rmin) | (kmax.float() != rmax)).any(-1).any(-1).sum())
                raise AssertionError(f"page metadata differs from the reference on {bad} pages")

        return launch, check


TUNABLE = MetadataTunable()
