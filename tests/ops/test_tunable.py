"""Every tuned op describes itself to the tuner (questkern.ops.tunable); the tuner's own
behaviour over these descriptions is tested in tests/tuning/test_space.py and test_runner.py."""

from __future__ import annotations

import pytest

from questkern.configs.keys import OPS
from questkern.ops.tunable import Tunable, tunable


@pytest.mark.parametrize("op", OPS)
def test_every_table_op_has_a_tunable_description(op):
    t = tunable(op)
    for name in [m for m in vars(Tunable) if not m.startswith("_")]:
        assert callable(getattr(t, name, None)), f"{op}'s description lacks {name}"


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="op must be one of .*; got 'topk'"):
        tunable("topk")
