"""The whole pipeline on the CPU interpreter at a tiny size, with injected timing:
space -> study -> checked trials -> table -> runtime lookup, plus failures, resume and
duplicates. Kernels really run (through the interpreter) and are checked against the
float32 references; only the clock is fake."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

import questkern
from questkern.ops.decode import paged_attention_ref
from questkern.configs import paths
from questkern.ops.metadata import tunable as metadata_tunable
from questkern.configs.gpus import CPU_KEY
from questkern.configs.runtime import TuningTableWarning
from questkern.configs.schema import validate_pareto
from questkern.tuning.space import decode_params, params_key
from questkern.configs.table import load_table
from questkern.tuning.tuner import TuneSpec, tune

TINY = dict(gpu_key=CPU_KEY, device_name=CPU_KEY, seqs=(128,), batches=(1,), heads=((2, 1),), head_dims=(32,),
            dtypes=("bf16",), page_sizes=(16,), budgets=(32,), verify_rounds=1, verify_top=2)


def fake_latency(cfg) -> float:
    """Deterministic 'latency' of a config (not minimized by the heuristic default)."""
    vals = [v if isinstance(v, int) else len(v) for v in cfg.to_dict().values()]
    return 10.0 + sum((i + 1) * (v % 7) for i, v in enumerate(vals))


class Clock:
    """Injected timer: never calls fn (the runner already ran and checked it)."""

    def __init__(self, fn=fake_latency):
        self.fn, self.calls = fn, []

    def __call__(self, fn, info):
        self.calls.append(info)
        return self.fn(info.config)


def spec(dirs, **kw):
    return TuneSpec(**{**TINY, "storage": f"sqlite:///{dirs['data'] / 'studies.db'}", "out_dir": dirs["env"], **kw})


def load_study(dirs, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{dirs['data'] / 'studies.db'}")


def test_pipeline_space_to_runtime(dirs):
    clock = Clock()
    rep = tune(spec(dirs, ops=("select", "sparse_decode", "dense_decode"), n_trials=3, verify_top=1), timer=clock)
    assert [b.error for b in rep.buckets] == [None, None, None]
    doc = load_table(paths.table_path(dirs["env"], CPU_KEY))
    assert sorted(e["op"] for e in doc["entries"]) == ["dense_decode", "select", "sparse_decode"]
    for br in rep.buckets:
        study = load_study(dirs, br.study_name)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert trials[0].number == 0 and trials[0].user_attrs["default"] is True  # the heuristic ran first
        best = min(t.value for t in trials)
        e = [e for e in doc["entries"] if e["op"] == br.bucket.op][0]
        assert e["latency_us"] == pytest.approx(best)
        assert e["latency_us"] <= e["default_latency_us"] == pytest.approx(trials[0].value)
        assert e["trials"] == br.n_evaluated == len(study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL)))
    # every timed trial was a distinct point (duplicates are not re-run)
    timed = [params_key(i.params) for i in clock.calls if i.trial is not None]
    assert len(timed) == len(set(timed))

    # the next lookup uses the new table, and the tuned configs compute the right thing
    cache = questkern.PagedKVCache(1, 128, 1, 32, page_size=16, dtype=torch.bfloat16, shuffle=True)
    g = torch.Generator().manual_seed(3)
    with pytest.warns(TuningTableWarning, match="no entry for metadata"):  # metadata was not tuned: one warning
        cache.append(torch.randn(1, 128, 1, 32, generator=g).to(torch.bfloat16),
                     torch.randn(1, 128, 1, 32, generator=g).to(torch.bfloat16))
    q = torch.randn(1, 2, 32, generator=g).to(torch.bfloat16)
    for budget, op in ((32, "sparse_decode"), (None, "dense_decode")):
        w = questkern.QuestDecode(budget)
        plan = w.plan(cache, num_q_heads=2)
        assert plan.sources[op].startswith("table cpu-interpreter.json") and plan.sources[op].endswith("(exact)")
        out, sel = w.run(q, return_selected=True)
        ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens, sel)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    assert plan.decode_config.to_dict() == [e for e in doc["entries"] if e["op"] == "dense_decode"][0]["config"]


def test_wrong_and_crashing_candidates_fail_never_win(dirs, monkeypatch):
    real = metadata_tunable.metadata_build

    def flaky(k_cache, kmin, kmax, page_table, seq_lens, first, n, cfg):
        if cfg.num_warps == 8:
            raise RuntimeError("triton compile failed: out of resources")
        real(k_cache, kmin, kmax, page_table, seq_lens, first, n, cfg)
        if cfg.num_warps == 1:
            kmin[0, 0, 0] += 1  # a wrong result

    monkeypatch.setattr(metadata_tunable, "metadata_build", flaky)
    clock = Clock(lambda cfg: {1: 1.0, 8: 2.0, 2: 30.0, 4: 20.0}[cfg.num_warps])  # the broken ones look fastest
    rep = tune(spec(dirs, ops=("metadata",), n_trials=10), timer=clock)
    br = rep.buckets[0]
    study = load_study(dirs, br.study_name)
    fails = study.get_trials(states=(TrialState.FAIL,))
    failed = {decode_params(t.params)["num_warps"]: t.user_attrs["fail_reason"] for t in fails
              if "duplicate_of" not in t.user_attrs}
    assert set(failed) == {1, 8}
    assert failed[1].startswith("mismatch: AssertionError: page metadata differs from the reference on 1 pages")
    assert failed[8] == "RuntimeError: triton compile failed: out of resources"
    for t in fails:  # a repeated proposal of a failed point is failed again without a run
        if "duplicate_of" in t.user_attrs:
            assert t.user_attrs["fail_reason"].startswith(f"same point as failed trial {t.user_attrs['duplicate_of']}")
    assert br.n_distinct == 4  # the whole 4-point space, then it stopped
    assert {i.config.num_warps for i in clock.calls} == {2, 4}  # failed candidates were never timed
    (e,) = load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"]
    assert e["config"] == {"num_warps": 4} and e["latency_us"] == 20.0 and e["default_latency_us"] == 30.0


def test_resume_after_interruption_continues_the_count(dirs):
    n = {"timed": 0}

    def interrupt_first(cfg):  # Ctrl-C while the heuristic default (trial 0) is being timed
        n["timed"] += 1
        if n["timed"] == 1:
            raise KeyboardInterrupt
        return fake_latency(cfg)

    s = spec(dirs, ops=("metadata",), n_trials=3, verify_rounds=0)
    with pytest.raises(KeyboardInterrupt):
        tune(s, timer=Clock(interrupt_first))
    name = f"{CPU_KEY}:metadata:bfloat16:d32:h2-1:s128:b1:p16"
    (t0,) = load_study(dirs, name).get_trials()
    assert t0.state == TrialState.FAIL and "fail_reason" not in t0.user_attrs  # interrupted, not a failed config
    assert not paths.table_path(dirs["env"], CPU_KEY).exists()

    clock = Clock()
    rep = tune(s, timer=clock)
    trials = load_study(dirs, name).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # the count continues from trial 1
    assert trials[1].params == t0.params and trials[1].state == TrialState.COMPLETE  # the default ran again first
    assert trials[1].user_attrs["default"] is True
    assert rep.buckets[0].n_evaluated == 3  # the interrupted trial does not count
    assert len(clock.calls) == rep.buckets[0].n_distinct  # each distinct point timed once
    (e,) = load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"]
    assert e["trials"] == 3 and e["default_latency_us"] == fake_latency(questkern.MetadataConfig(**decode_params(t0.params)))

    rep = tune(s, timer=Clock())  # already done: no new trial
    assert len(load_study(dirs, name).get_trials()) == len(trials)


def test_multi_objective_writes_pareto_front(dirs):
    quality = lambda page, budget, mode: {16: 0.5, 32: 0.8}[budget]  # noqa: E731
    # budget 32 costs more in this fake clock, so both points are on the front
    clock = Clock(lambda cfg: 5.0 + cfg.num_warps + cfg.pages_per_block)
    rep = tune(spec(dirs, ops=("sparse_decode",), budgets=(16, 32), n_trials=3, verify_rounds=0,
                    fixed={"num_stages": 1, "num_splits": 1}),
               timer=clock, quality_fn=lambda p, b, m: quality(p, b, m))
    br = rep.buckets[0]
    assert br.bucket.multi_objective and br.error is None
    study = load_study(dirs, br.study_name)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert {(g.budget, g.quality) for g in br.groups} == {(16, 0.5), (32, 0.8)}
    doc = load_table(paths.table_path(dirs["env"], CPU_KEY))
    assert sorted(e["budget"] for e in doc["entries"]) == [16, 32]
    pareto = json.loads(paths.pareto_path(dirs["env"], CPU_KEY).read_text())
    validate_pareto(pareto)
    (front,) = pareto["fronts"]
    assert front["study"] == br.study_name and front["points"]
    assert {p["quality"] for p in front["points"]} <= {0.5, 0.8}


def test_study_of_another_space_is_not_mixed_in(dirs):
    tune(spec(dirs, ops=("metadata",), n_trials=1, verify_rounds=0), timer=Clock())
    rep = tune(spec(dirs, ops=("metadata",), n_trials=1, verify_rounds=0, fixed={"num_warps": 2}), timer=Clock())
    assert "was made for another space" in rep.buckets[0].error and "--study" in rep.buckets[0].error


def test_fixed_param_no_op_searches_is_an_error(dirs):
    with pytest.raises(ValueError, match=r"fixed parameter\(s\) \['chunk_pages'\] are searched by none"):
        tune(spec(dirs, ops=("metadata",), fixed={"chunk_pages": 16}), timer=Clock())


def test_verification_keeps_a_measured_value_not_the_mean_of_two():
    """Two rounds, one of them cold: the low median (12), not the mean (39.5)."""
    from questkern.tuning.runner import Outcome
    from questkern.tuning.space import Bucket, OpSpace
    from questkern.tuning.tuner import _verify

    space = OpSpace(Bucket("metadata", "bf16", 64, 8, 8, 4096, 1, (16,), ()), num_sms=132)
    seq = iter([67.0, 12.0])

    class Cold:
        def evaluate(self, cand):
            return Outcome(next(seq))

    (v,) = _verify(Cold(), space, [{"num_warps": 2}], rounds=2).values()
    assert v == 12.0
