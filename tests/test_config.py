import pytest

from questkern.config import (
    DecodeConfig,
    MetadataConfig,
    SelectConfig,
    choose_num_splits,
    default_decode_config,
    default_select_config,
)


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (SelectConfig, dict(chunk_pages=48), "chunk_pages"),
        (SelectConfig, dict(block_d=8), "block_d"),
        (SelectConfig, dict(num_warps=3), "num_warps"),
        (SelectConfig, dict(topk="sort"), "topk"),
        (DecodeConfig, dict(pages_per_block=3), "pages_per_block"),
        (DecodeConfig, dict(num_splits=-1), "num_splits"),
        (DecodeConfig, dict(num_stages=0), "num_stages"),
        (MetadataConfig, dict(num_warps=5), "num_warps"),
    ],
)
def test_invalid_configs_raise(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_dict_round_trip_and_unknown_keys():
    cfg = SelectConfig(chunk_pages=128, topk="radix")
    assert SelectConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        DecodeConfig.from_dict({"pages_per_block": 4, "bogus": 1})


def test_heuristics():
    assert default_select_config(2048, 128).chunk_pages == 64
    assert default_select_config(8192, 128).chunk_pages == 64
    assert default_select_config(8192, 128).merge_warps == 8
    assert default_select_config(2048, 128).merge_warps == 4
    assert default_select_config(3, 64).chunk_pages == 16
    assert default_decode_config(16, 128).pages_per_block == 4
    assert default_decode_config(64, 128).pages_per_block == 1


def test_choose_num_splits():
    cfg = DecodeConfig(pages_per_block=4)
    assert choose_num_splits(cfg, 1, 8, 128, 132) == 32  # about two waves, capped by 128 / 4 blocks
    assert choose_num_splits(cfg, 64, 8, 128, 132) == 1
    assert choose_num_splits(DecodeConfig(pages_per_block=4, num_splits=7), 1, 8, 128, 132) == 7
    assert choose_num_splits(DecodeConfig(pages_per_block=4, num_splits=100), 1, 8, 16, 132) == 4
