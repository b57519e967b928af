"""Selection reuse across decode steps (issue 19): the rules of reuse_select, step by step (tiny shapes, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from questkern.quality.selection import SuiteHook, Variant, parse_variant, reuse_select, select_mask

SCALE = 1 / math.sqrt(8)


def _steps(S0=70, steps=12, Hq=6, Hkv=2, D=8, seed=0, q_noise=1.0):
    """A decode sequence: keys grow by one token per step; queries a base plus noise."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(Hkv, S0 + steps, D, generator=g)
    base = torch.randn(Hq, D, generator=g)
    qs = [base + q_noise * torch.randn(Hq, D, generator=g) for _ in range(steps)]
    return [(qs[t], k[:, : S0 + t + 1]) for t in range(steps)]


def _run(v, seq, state=None):
    """(masks, need per step) of a decode sequence under reuse_select."""
    masks, needs = [], []
    for q, k in seq:
        m, state, need = reuse_select(v, state, q, k, SCALE)
        masks.append(m)
        needs.append(need)
    return masks, needs, state


@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_every_1_is_todays_rule_at_every_step(mode):
    v = Variant(24, page_size=8, gqa_mode=mode)
    seq = _steps()
    masks, needs, _ = _run(v.with_(reselect_every=1), seq)
    for (q, k), m, need in zip(seq, masks, needs):
        assert torch.equal(m, select_mask(v, q, k, SCALE)) and need.all()


@pytest.mark.parametrize("mode", ["shared", "per_head"])
@pytest.mark.parametrize("N", [2, 4])
def test_every_n_reuses_n_minus_1_steps_then_reselects(mode, N):
    v = Variant(24, page_size=16, gqa_mode=mode, reselect_every=N)
    seq = _steps(S0=64, steps=12)  # S = 65..76: one page of 16 (page 4), no crossing
    masks, needs, _ = _run(v, seq)
    want = [t % N == 0 for t in range(12)]
    assert [bool(n.all()) for n in needs] == want and [bool(n.any()) for n in needs] == want
    for t, m in enumerate(masks):
        last = t - t % N
        assert torch.equal(m, select_mask(v, seq[last][0], seq[last][1], SCALE))
    fresh = [select_mask(v, q, k, SCALE) for q, k in seq]
    assert any(not torch.equal(m, f) for m, f in zip(masks, fresh))  # reuse changes something


def test_a_page_crossing_forces_reselection():
    v = Variant(24, page_size=8, reselect_every=100)
    seq = _steps(S0=70, steps=12)  # S = 71..82: page 9 starts at S=73 (token 72), page 10 at S=81
    _, needs, state = _run(v, seq)
    assert [t for t, n in enumerate(needs) if n.all()] == [0, 2, 10]
    assert not any(n.any() for t, n in enumerate(needs) if t not in (0, 2, 10))
    assert state.pages == 11
    never = Variant(24, page_size=8, reselect_every=None, drift=-1.0)  # drift -1: only forced selections
    _, needs, _ = _run(never, seq)
    assert [t for t, n in enumerate(needs) if n.any()] == [0, 2, 10]


def test_reused_mask_keeps_the_last_page():
    v = Variant(24, page_size=8, reselect_every=8)
    for (_q, k), m in zip(_steps(S0=72, steps=8), _run(v, _steps(S0=72, steps=8))[0]):
        assert m[:, -1].all() and m.shape[1] == -(-k.shape[1] // 8)


def test_a_new_sequence_resets_the_state():
    v = Variant(24, page_size=16, reselect_every=4)
    seq = _steps(S0=64, steps=3)
    _, _, state = _run(v, seq)
    other = _steps(S0=64, steps=3, seed=5)
    _, needs, _ = _run(v, other, state)  # a shorter key length than the state's: a new sequence
    assert needs[0].all() and not needs[1].any()
    _, needs, _ = _run(v, _steps(S0=66, steps=2, seed=6), state)  # same length as the last step: new too
    assert needs[0].all()
    q, k = seq[0]
    m, st, need = reuse_select(v, None, q, k, SCALE)
    assert need.all() and st.step == 0


def test_drift_thresholds():
    v_all = Variant(24, page_size=16, reselect_every=None, drift=1.0)
    seq = _steps(S0=64, steps=8)
    masks, needs, _ = _run(v_all, seq)
    for (q, k), m, n in zip(seq, masks, needs):  # random queries: cosine < 1, every step selects
        assert n.all() and torch.equal(m, select_mask(v_all, q, k, SCALE))
    _, needs, _ = _run(Variant(24, page_size=16, reselect_every=None, drift=-1.0), seq)
    assert needs[0].all() and not any(n.any() for n in needs[1:])  # no crossing: never again


def test_drift_is_per_kv_head_over_the_group_query():
    v = Variant(24, page_size=16, reselect_every=None, drift=0.9)
    seq = _steps(S0=64, steps=2, q_noise=0.0)
    q0, k0 = seq[0]
    q1, k1 = seq[1]
    q1 = q1.clone()
    q1[0] = -q1[0]  # KV head 0's group (query heads 0..2) turns: its cosine drops below 0.9
    _, st, _ = reuse_select(v, None, q0, k0, SCALE)
    assert float(torch.nn.functional.cosine_similarity(q0[:3].flatten(), q1[:3].flatten(), dim=0)) < 0.9
    assert float(torch.nn.functional.cosine_similarity(q0[3:].flatten(), q1[3:].flatten(), dim=0)) > 0.99
    m, st2, need = reuse_select(v, st, q1, k1, SCALE)
    assert need.tolist() == [True, False]
    assert torch.equal(m[0], select_mask(v, q1, k1, SCALE)[0]) and torch.equal(m[1], st.mask[1])
    assert st2.at.tolist() == [1, 0] and torch.equal(st2.q[0], q1[:3].flatten()) and torch.equal(st2.q[1], st.q[1])
    nan = q1.clone()
    nan[3:] = float("nan")  # NaN query: counts as drifted
    _, _, need = reuse_select(v, st, nan, k1, SCALE)
    assert need.tolist() == [True, True]


def test_per_head_group_reselects_together():
    v = Variant(16, page_size=8, gqa_mode="per_head", reselect_every=None, drift=0.99)
    seq = _steps(S0=64, steps=2, q_noise=0.0)
    q1 = seq[1][0].clone()
    q1[4] = q1[4] + 5.0  # one query head of KV head 1
    _, st, _ = reuse_select(v, None, *seq[0], SCALE)
    m, _, need = reuse_select(v, st, q1, seq[1][1], SCALE)
    assert need.tolist() == [False, True]
    fresh = select_mask(v, q1, seq[1][1], SCALE)
    assert torch.equal(m[3:], fresh[3:]) and torch.equal(m[:3], st.mask[:3])


def test_hook_counts_and_resets():
    h = SuiteHook(Variant(24, reselect_every=4))
    h.state[3], h.selections, h.steps = object(), 5, 9
    h.reset()
    assert h.state == {} and h.selections == 0 == h.steps


def test_labels_round_trip():
    for label in (
        "p16 b2048 shared-sum every4",
        "p16 b2048 shared-sum drift0.9",
        "p16 b2048 shared-sum every8 drift0.9",
        "p64 b2048 shared-sum sub16 every16",
        "p16 b1024 per_head rerank2 every2 drift-0.25 dense21-23",
        "p16 b2048 shared-sum drift1",
        "p16 b2048 shared-sum drift-1",
    ):
        v = parse_variant(label)
        assert v.name == label and parse_variant(v.label()) == v
    assert parse_variant("p16 b2048 shared-sum drift0.9") == Variant(2048, reselect_every=None, drift=0.9)
    assert parse_variant("p16 b2048 shared-sum every8 drift0.9") == Variant(2048, reselect_every=8, drift=0.9)
    assert Variant(2048, reselect_every=1).name == "p16 b2048 shared-sum" and not Variant(2048).reuses
    assert Variant(2048, reselect_every=4).reuses


def test_bad_reuse_values_are_rejected_naming_the_argument():
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="reselect_every"):
            Variant(1024, reselect_every=bad)
    for bad in (1.01, -1.5, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="drift"):
            Variant(1024, reselect_every=4, drift=bad)
    with pytest.raises(ValueError, match="reselect_every=None"):
        Variant(1024, reselect_every=None)
    with pytest.raises(ValueError, match="drift with reselect_every=1"):
        Variant(1024, drift=0.9)
    for label in ("p16 b2048 shared-sum every0", "p16 b2048 shared-sum drift1.5", "p16 b2048 shared-sum driftx"):
        with pytest.raises(ValueError, match="drift|reselect_every|variant label"):
            parse_variant(label)
