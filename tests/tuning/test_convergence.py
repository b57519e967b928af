"""Exhaustive sweep (resumable) and the replayed searches that count trials-to-target."""

from __future__ import annotations

import json

import pytest

from questkern.tuning import convergence
from questkern.tuning.convergence import simulate, summary_lines, sweep, trials_to_target
from questkern.tuning.space import Bucket, OpSpace, params_key

DECODE = Bucket("sparse_decode", "bf16", 128, 32, 8, 32768, 8, (16,), (2048,))


def synthetic_doc(latency, fixed=None, bucket=DECODE, num_sms=132):
    space = OpSpace(bucket, num_sms=num_sms, fixed=fixed)
    pts = space.enumerate()
    return {"gpu_key": "test", "bucket": bucket.to_dict(), "fixed": fixed or {}, "num_sms": num_sms,
            "space_size": len(pts), "complete": True,
            "points": [{"params": p, "latency_us": latency(p), "fail_reason": None} for p in pts]}, space


def test_default_best_needs_one_trial():
    doc, space = synthetic_doc(lambda p: 10.0, fixed={"num_stages": 2, "fuse_combine": True})
    dkey = params_key(space.default_params())
    for p in doc["points"]:
        p["latency_us"] = 5.0 if params_key(p["params"]) == dkey else 50.0
    for sampler in ("tpe", "random"):
        assert trials_to_target(doc, sampler, 0, 1.03) == {"seed": 0, "trials": 1, "distinct_points": 1}


def test_without_default_the_sampler_searches_on_its_own():
    """One good point among many: the sampler alone needs several trials to find it."""
    doc, space = synthetic_doc(lambda p: 50.0, fixed={"num_stages": 2, "fuse_combine": False})
    doc["points"][len(doc["points"]) // 2]["latency_us"] = 5.0
    runs = [trials_to_target(doc, "random", seed, 1.03, with_default=False) for seed in range(3)]
    assert all(r["trials"] is not None for r in runs) and max(r["trials"] for r in runs) > 1
    assert simulate(doc, seeds=1, samplers=("random",), with_default=False)["default_enqueued"] is False


def test_simulation_statistics_on_a_smooth_landscape():
    def lat(p):  # best at 4 pages per block, 8 splits, 4 warps; failures count as failed trials
        if p["num_warps"] == 1 and p["pages_per_block"] == 1:
            return None
        return 20.0 + abs(p["pages_per_block"] - 4) + abs(p["num_splits"] - 8) / 2 + abs(p["num_warps"] - 4)

    doc, space = synthetic_doc(lat, fixed={"num_stages": 2, "fuse_combine": True})
    res = simulate(doc, seeds=4, target=1.03)
    assert res["best_us"] == 20.0 and res["space_size"] == space.size() and res["failed_points"] > 0
    for s in ("tpe", "random"):
        r = res["samplers"][s]
        assert r["never_reached"] == 0 and len(r["runs"]) == 4
        assert all(1 <= x["distinct_points"] <= x["trials"] <= 20 * space.size() for x in r["runs"])
        assert r["median_trials"] <= r["p90_trials"] <= r["max_trials"]
    assert any("trials to within 3%" in line for line in summary_lines(res))
    json.dumps(res, allow_nan=False)  # storable as data


def test_simulate_refuses_an_incomplete_sweep():
    doc, _ = synthetic_doc(lambda p: 1.0, fixed={"num_stages": 2, "fuse_combine": True})
    doc["complete"] = False
    with pytest.raises(ValueError, match="sweep is incomplete"):
        simulate(doc)


def test_sweep_resumes_after_interruption(dirs, monkeypatch):
    monkeypatch.setattr(convergence, "SAVE_EVERY", 1)
    b = Bucket("metadata", "bf16", 32, 2, 1, 64, 1, (16,), ())
    out = dirs["data"] / "sweep.json"
    n = {"calls": 0}

    def clock(fn, info):
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return 10.0 * info.config.num_warps

    with pytest.raises(KeyboardInterrupt):
        sweep(b, out=out, timer=clock, log=lambda m: None)
    doc = json.loads(out.read_text())
    assert len(doc["points"]) == 2 and doc["complete"] is False
    n["calls"] = 10
    doc = sweep(b, out=out, timer=clock, log=lambda m: None)
    assert n["calls"] == 12 and doc["complete"] is True  # only the two missing points were measured
    assert sorted(p["latency_us"] for p in doc["points"]) == [10.0, 20.0, 40.0, 80.0]
    res = simulate(doc, seeds=2)
    assert res["best_us"] == 10.0 and res["default_us"] == 20.0
    other = Bucket("metadata", "bf16", 64, 2, 1, 64, 1, (16,), ())
    with pytest.raises(ValueError, match="another bucket"):
        sweep(other, out=out, timer=clock, log=lambda m: None)
