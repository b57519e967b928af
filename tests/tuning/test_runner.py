"""The runner's inputs, references and failure handling (interpreter, tiny shapes)."""

from __future__ import annotations

import pytest
import torch

from questkern.ops.metadata import metadata_build_ref
from questkern.ops.metadata import tunable as metadata_tunable
from questkern.tuning.runner import FatalDeviceError, Runner, Shape, Workload, WorkloadPool
from questkern.tuning.space import Bucket, OpSpace

CPU = torch.device("cpu")


def test_workload_references_match_the_naive_ones():
    w = Workload(Shape("bfloat16", 32, 4, 2, 100, 2, 16), CPU)  # partial last page (100 = 6 * 16 + 4)
    c = w.cache
    assert c.lens == [100, 100] and w.q.shape == (2, 4, 32)
    assert torch.equal(w.q.float().round(), w.q.float()) and w.q.abs().max() <= 2  # integer queries
    kmin, kmax = metadata_build_ref(c.k_cache, c.page_table, c.seq_lens)
    rmin, rmax = w.metadata_ref()
    assert torch.equal(rmin, kmin) and torch.equal(rmax, kmax)
    sel = w.selection_ref(32, "shared", "sum")  # [B, Hkv, 2]
    phys = w.selection_phys_ref(32, "shared", "sum")
    assert sel.shape == (2, 2, 2) and bool((sel[..., -1] == 6).all())  # the last page is always selected
    assert torch.equal(phys, torch.gather(c.page_table.long()[:, None, :].expand(-1, 2, -1), 2, sel.long()).int())
    wide = w.selection_ref(4096, "per_head", "sum")  # budget beyond the context: every page, width = pages
    assert wide.shape == (2, 4, 7) and torch.equal(wide[0, 0], torch.arange(7, dtype=torch.int32))


def test_pool_keeps_one_shape_group():
    pool = WorkloadPool(CPU)
    a = pool.get(Shape("bfloat16", 32, 2, 1, 64, 1, 16))
    assert pool.get(Shape("bfloat16", 32, 2, 1, 64, 1, 16)) is a
    b = pool.get(Shape("bfloat16", 32, 2, 1, 64, 1, 32))  # another page size of the same shape: both kept
    assert pool.get(Shape("bfloat16", 32, 2, 1, 64, 1, 16)) is a
    pool.get(Shape("bfloat16", 32, 2, 1, 128, 1, 16))  # another shape: the group is replaced
    assert a not in pool._items.values() and b not in pool._items.values()


@pytest.fixture
def metadata_runner():
    b = Bucket("metadata", "bf16", 32, 2, 1, 64, 1, (16,), ())
    space = OpSpace(b, num_sms=4)
    return space, (lambda timer: Runner(b, WorkloadPool(CPU), timer))


def test_timer_must_return_a_positive_latency(metadata_runner):
    space, make = metadata_runner
    out = make(lambda fn, info: 0.0).evaluate(space.candidate({"num_warps": 2}))
    assert not out.ok and "non-positive latency" in out.fail_reason


def test_broken_cuda_context_stops_the_study(metadata_runner, monkeypatch):
    space, make = metadata_runner

    def boom(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(metadata_tunable, "metadata_build", boom)
    with pytest.raises(FatalDeviceError, match="CUDA context lost"):
        make(lambda fn, info: 1.0).evaluate(space.candidate({"num_warps": 2}))


def test_out_of_memory_is_a_failed_trial(metadata_runner, monkeypatch):
    space, make = metadata_runner

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(metadata_tunable, "metadata_build", oom)
    out = make(lambda fn, info: 1.0).evaluate(space.candidate({"num_warps": 2}))
    assert out.fail_reason == "out of memory: CUDA out of memory. Tried to allocate 80.00 GiB"


@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_quest_step_candidates_are_checked_against_the_references(mode, monkeypatch):
    b = Bucket("quest_step", "bf16", 32, 4, 2, 200, 2, (16,), (64,), mode)  # 13 pages, K = 4
    space = OpSpace(b, num_sms=4)
    run = Runner(b, WorkloadPool(CPU), lambda fn, info: 1.0)
    for p in space.default_points() + [{**space.default_points()[0], "splits": 2, "pages_per_block": 1,
                                        "fuse_combine": True, "topk": "radix"}]:
        assert space.violation(p) is None
        outcome = run.evaluate(space.candidate(p))
        assert outcome.ok, outcome
    # a kernel that selects wrongly is a mismatch, never a fast candidate
    import questkern.ops.step as step_mod  # where the step's tunable description looks it up

    real = step_mod.quest_step

    def wrong(*args, selected=None, **kw):
        out = real(*args, selected=selected, **kw)
        selected[..., 0] = selected[..., 1]
        return out
    monkeypatch.setattr(step_mod, "quest_step", wrong)
    outcome = run.evaluate(space.candidate(space.default_points()[0]))
    assert not outcome.ok and "selection differs" in outcome.fail_reason
