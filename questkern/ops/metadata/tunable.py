"""The metadata build's tunable description (:mod:`questkern.ops.tunable`): ``num_warps`` only."""

from __future__ import annotations

from questkern import config as C
from questkern.ops.tunable import Param


class MetadataTunable:
    def params(self, bucket, num_sms: int) -> list[Param]:
        return [Param("num_warps", (1, 2, 4, 8))]

    def default(self, bucket, page_size: int, budget: int | None, num_sms: int) -> dict:
        return {"num_warps": C.default_metadata_config(bucket.head_dim).num_warps}

    def violation(self, bucket, params: dict, page_size: int, budget: int | None) -> str | None:
        return None

    def config(self, params: dict) -> C.MetadataConfig:
        return C.MetadataConfig(num_warps=params["num_warps"])


TUNABLE = MetadataTunable()
