"""Search spaces: the heuristic default is always a valid point, constraints prune what
cannot work, conditional parameters appear only where they matter."""

from __future__ import annotations

import itertools

import pytest

from questkern import config as C
from questkern.tuning.space import Bucket, OpSpace, params_key


def bucket(op="select", seq=32768, batch=8, hq=32, hkv=8, d=128, pages=(16,), budgets=(2048,), mode="shared"):
    return Bucket(op, "bf16", d, hq, hkv, seq, batch, pages, budgets, mode)


SHAPES = list(itertools.product(["select", "sparse_decode", "dense_decode", "metadata"], [64, 128],
                                [8, 16, 32, 64], [1000, 4096, 32768, 131072], [1, 8, 32], [(32, 32), (32, 8)]))


@pytest.mark.parametrize("op,d,page,seq,batch,heads", SHAPES)
def test_default_is_a_valid_point_equal_to_the_heuristic(op, d, page, seq, batch, heads):
    b = bucket(op, seq, batch, *heads, d, (page,), (1024, 4096))
    space = OpSpace(b, num_sms=132)
    for p in space.default_points():
        assert space.violation(p) is None, (p, space.violation(p))
        for prm in space.params:
            if prm.name in p:
                assert p[prm.name] in prm.choices
        cfg = space.candidate(p).config
        if op == "metadata":
            assert cfg == C.default_metadata_config(d)
        elif op == "select":
            assert cfg == C.default_select_config(-(-seq // page), d)
        else:  # the heuristic's split count made concrete for this device
            h = C.default_decode_config(page, d)
            assert (cfg.pages_per_block, cfg.num_warps, cfg.num_stages) == (h.pages_per_block, h.num_warps, h.num_stages)
            progs = b.head_programs()
            assert cfg.num_splits == C.choose_num_splits(h, batch, progs, b.slots(page, space.candidate(p).budget), 132)


def test_select_constraints():
    space = OpSpace(bucket("select", seq=4096, d=64), num_sms=132)  # 256 pages
    assert max(space.grid()["block_d"]) == 64
    assert "chunk_pages 512 > 256" in space.violation({"chunk_pages": 512, "block_d": 16, "num_warps": 4})
    assert "elements/thread" in space.violation({"chunk_pages": 256, "block_d": 64, "num_warps": 2,
                                                 "merge_warps": 4})
    assert space.violation({"chunk_pages": 256, "block_d": 64, "num_warps": 8}) is None


def test_select_merge_warps_only_for_two_stage():
    space = OpSpace(bucket("select", seq=4096), num_sms=132)  # 256 pages: chunk 256 is one stage
    pts = space.enumerate()
    assert all(("merge_warps" in p) == (p["chunk_pages"] < 255) for p in pts)
    assert len({params_key(p) for p in pts}) == len(pts)
    assert all(space.violation(p) is None for p in pts)


def test_decode_constraints():
    space = OpSpace(bucket("sparse_decode", seq=32768, batch=8, budgets=(1024,)), num_sms=132)  # 64 slots
    base = {"num_warps": 4, "num_stages": 2, "combine_warps": 4}
    assert "must be in 16..256" in space.violation({**base, "pages_per_block": 32, "num_splits": 1})
    assert "> 16 blocks of work" in space.violation({**base, "pages_per_block": 4, "num_splits": 32})
    assert "elements/thread" in space.violation({**base, "pages_per_block": 16, "num_splits": 2, "num_warps": 4})
    assert space.violation({**base, "pages_per_block": 4, "num_splits": 16}) is None
    pts = space.enumerate()
    assert all(("fuse_combine" in p) == (p["num_splits"] > 1) for p in pts)
    assert all(("combine_warps" in p) == (p["num_splits"] > 1 and not p["fuse_combine"]) for p in pts)


def test_page_size_and_budget_become_params_and_objectives():
    b = bucket("sparse_decode", pages=(16, 32), budgets=(1024, 2048, 4096))
    assert b.multi_objective and not bucket("dense_decode", pages=(16, 32)).multi_objective
    space = OpSpace(b, num_sms=132)
    assert space.grid()["page_size"] == [16, 32] and space.grid()["budget"] == [1024, 2048, 4096]
    assert len(space.default_points()) == 6
    assert "pages_per_block*page_size = 512" in space.violation(
        {"page_size": 32, "budget": 1024, "pages_per_block": 16, "num_splits": 1, "num_warps": 8, "num_stages": 2})
    cand = space.candidate({"page_size": 32, "budget": 4096, "pages_per_block": 2, "num_splits": 4, "num_warps": 4,
                            "num_stages": 3, "fuse_combine": False, "combine_warps": 2})
    assert (cand.page_size, cand.budget) == (32, 4096)
    assert cand.config == C.DecodeConfig(2, 4, 4, 3, 2, fuse_combine=False)


def test_fixed_params():
    space = OpSpace(bucket("sparse_decode"), num_sms=132, fixed={"num_stages": 2, "fuse_combine": True})
    assert space.grid()["num_stages"] == [2] and space.grid()["fuse_combine"] == [True]
    assert all(p["num_stages"] == 2 for p in space.enumerate())
    full = OpSpace(bucket("sparse_decode"), num_sms=132)
    assert space.size() < full.size()
    with pytest.raises(ValueError, match=r"cannot fix \['chunk_pages'\] for op sparse_decode"):
        OpSpace(bucket("sparse_decode"), num_sms=132, fixed={"chunk_pages": 64})


def test_bucket_checks_and_name():
    b = bucket("select")
    assert b.name() == "select:bfloat16:d128:h32-8:s32768:b8:p16:k2048:shared-sum"
    assert "/" not in b.name() and Bucket.from_dict(b.to_dict()) == b
    assert bucket("dense_decode").budgets == ()
    with pytest.raises(ValueError, match="must be a multiple of num_kv_heads"):
        bucket(hq=12, hkv=8)
    with pytest.raises(ValueError, match="op must be one of"):
        bucket("topk")


def test_a_changed_heuristic_stays_in_the_space(monkeypatch):
    monkeypatch.setattr(C, "default_metadata_config", lambda d: C.MetadataConfig(num_warps=16))
    space = OpSpace(bucket("metadata"), num_sms=132)
    assert space.grid()["num_warps"] == [1, 2, 4, 8, 16]
    assert space.default_points() == [{"num_warps": 16}]


def test_ordered_choices_are_suggested_as_indices_and_decoded_back():
    """TPE sees tile sizes/warps/splits as ordered (an index under 'name@c0/c1/...');
    the point, params_key and enqueued defaults are the same whichever encoding stored them."""
    import optuna

    from questkern.tuning.space import decode_params, params_key

    space = OpSpace(Bucket("sparse_decode", "bf16", 128, 32, 8, 32768, 8, (16,), (2048,)), num_sms=132)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    default = space.default_params()
    study.enqueue_trial(space.encode(default))
    t = study.ask()
    assert space.suggest(t) == default
    assert any("@" in k for k in t.params) and "fuse_combine" in t.params  # two-valued: categorical
    assert decode_params(t.params) == default and params_key(t.params) == params_key(default)
    assert t.params["pages_per_block@1/2/4/8/16/32"] == [1, 2, 4, 8, 16, 32].index(default["pages_per_block"])
    for _ in range(20):
        t = study.ask()
        p = space.suggest(t)
        assert decode_params(t.params) == p and all(p[k] in dict((q.name, q.choices) for q in space.params)[k] for k in p)
    grid = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid()))
    grid.enqueue_trial(space.encode(default, grid=True))
    t = grid.ask()
    assert space.suggest(t) == default and t.params == default  # the grid sampler keeps plain names


@pytest.mark.parametrize("d,page,seq,batch,heads", list(itertools.product(
    [64, 128], [8, 16, 32, 64], [1000, 32768, 131072], [1, 8, 32], [(32, 32), (32, 8)])))
def test_quest_step_default_is_the_heuristic_made_concrete(d, page, seq, batch, heads):
    b = bucket("quest_step", seq, batch, *heads, d, (page,), (1024, 4096))
    space = OpSpace(b, num_sms=132)
    for p in space.default_points():
        assert space.violation(p) is None, (p, space.violation(p))
        cand = space.candidate(p)
        h = C.default_step_config(b.max_pages(page), d, page)
        want_splits = C.choose_step_splits(h, batch, b.head_programs(), b.k_pages(page, cand.budget), 132)
        assert cand.config == C.StepConfig(**{**h.to_dict(), "splits": want_splits})


def test_quest_step_constraints():
    b = bucket("quest_step", seq=32768, batch=1, budgets=(2048,))  # 2048 pages, K = 128, 8 rows
    space = OpSpace(b, num_sms=132)
    base = dict(chunk_pages=64, block_d=128, score_warps=4, tiles_per_program=1, splits=16, pages_per_block=4, num_warps=4,
                num_stages=2, topk="bisect", fuse_combine=True, persistent=False)
    assert space.violation(base) is None
    assert "must be in 16..256" in space.violation({**base, "pages_per_block": 32})
    assert "> 32 blocks" in space.violation({**base, "splits": 64})
    assert "score tile" in space.violation({**base, "chunk_pages": 256, "score_warps": 2})
    assert "persistent needs" in space.violation({**base, "persistent": True, "splits": 32})
    assert space.violation({**base, "persistent": True, "splits": 16}) is None  # 16 x 8 = 128 programs <= 132 SMs
    assert "chunk_pages 4096 > 2048" in space.violation({**base, "chunk_pages": 4096})
    pts = [p for p in space.enumerate() if p["chunk_pages"] == 64 and p["score_warps"] == 4
           and p["tiles_per_program"] == 1 and p["num_stages"] == 2 and p["topk"] == "bisect"]
    assert pts and all(("fuse_combine" in p) == (p["splits"] > 1) for p in pts)
    assert all(("combine_warps" in p) == (p["splits"] > 1 and not p["fuse_combine"]) for p in pts)
