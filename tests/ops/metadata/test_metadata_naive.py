"""Safe rounding of narrow metadata (the reference the fp8 metadata kernels follow)."""

from __future__ import annotations

import pytest
import torch

from questkern.ops.metadata.naive import round_safe

NARROW = [torch.bfloat16, torch.float16, torch.float8_e5m2]


@pytest.mark.parametrize("dt", NARROW)
def test_round_safe_bounds_and_tightness(dt):
    g = torch.Generator().manual_seed(1)
    x = torch.cat(
        [
            torch.randn(4000, generator=g) * 10 ** torch.randint(-9, 6, (4000,), generator=g).float(),
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, 7e4, -7e4, 1e6, -1e6]),
        ]
    )
    lo, hi = round_safe(x, dt, "down"), round_safe(x, dt, "up")
    assert (lo <= x).all() and (hi >= x).all()
    assert torch.equal(lo.to(dt).float(), lo) and torch.equal(hi.to(dt).float(), hi)  # representable
    # tight: no representable value of dt lies strictly between the bound and x
    between = x.to(dt).float()
    assert not ((between > lo) & (between < x)).any() and not ((between < hi) & (between > x)).any()
    exact = x.to(dt).float()
    assert torch.equal(round_safe(exact, dt, "down"), exact) and torch.equal(round_safe(exact, dt, "up"), exact)


def test_round_safe_float32_is_identity_and_bad_arguments():
    x = torch.tensor([1.0000001, -3.3])
    assert torch.equal(round_safe(x, torch.float32, "down"), x)
    with pytest.raises(ValueError, match="direction"):
        round_safe(torch.zeros(1), torch.float16, "nearest")
    with pytest.raises(ValueError, match="dtype must be one of"):
        round_safe(torch.zeros(1), torch.int8, "up")
