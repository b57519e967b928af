import argparse

import pytest
import torch

from questkern._shapes import parse_dtype, parse_heads, parse_ints, parse_size, parse_sizes


def test_parse_sizes():
    assert parse_size("32k") == 32768 and parse_size("32768") == 32768 and parse_size("1M") == 1 << 20
    assert parse_sizes("8k,32k,128k") == [8192, 32768, 131072]
    for bad in ("", "32q", "-1", "0", "k"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad) if bad == "" else parse_size(bad)


def test_parse_heads_dtype_ints():
    assert parse_heads("32/32,32/8") == [(32, 32), (32, 8)]
    with pytest.raises(argparse.ArgumentTypeError, match="multiple"):
        parse_heads("32/5")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_heads("32")
    assert parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(argparse.ArgumentTypeError):
        parse_dtype("fp8")
    assert parse_ints("1,8") == [1, 8]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ints("1,x")


def test_parse_positive_int():
    from questkern._shapes import parse_positive_int

    assert parse_positive_int("8") == 8
    for bad in ("0", "-3", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            parse_positive_int(bad)
