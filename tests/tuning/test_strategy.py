"""Studies: defaults enqueued once, samplers seeded, foreign studies refused."""

from __future__ import annotations

import optuna
import pytest

from questkern.tuning.space import Bucket, OpSpace, decode_params
from questkern.tuning.strategy import make_sampler, open_study, study_name

B = Bucket("sparse_decode", "bf16", 128, 32, 8, 32768, 8, (16, 32), (1024, 2048))


def test_defaults_enqueued_once_per_page_and_budget():
    space = OpSpace(B, num_sms=132)
    storage = optuna.storages.InMemoryStorage()
    for _ in range(3):  # reopening (a resumed run) does not queue them again
        study = open_study(storage, "s", B, space, make_sampler("tpe", 0, space, "s"))
    queued = [decode_params(t.system_attrs["fixed_params"]) for t in study.get_trials()]
    assert queued == space.default_points() and len(queued) == 4
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.user_attrs["bucket"]["budgets"] == [1024, 2048]


def test_a_study_of_another_bucket_is_refused():
    storage = optuna.storages.InMemoryStorage()
    space = OpSpace(B, num_sms=132)
    open_study(storage, "s", B, space, make_sampler("random", 0, space, "s"))
    other = Bucket("sparse_decode", "bf16", 128, 32, 8, 65536, 8, (16, 32), (1024, 2048))
    with pytest.raises(ValueError, match="made for another bucket.*--study"):
        open_study(storage, "s", other, OpSpace(other, num_sms=132), make_sampler("random", 0, space, "s"))


def test_samplers():
    space = OpSpace(Bucket("metadata", "bf16", 64, 8, 8, 4096, 1, (16,), ()), num_sms=132)
    assert isinstance(make_sampler("tpe", 1, space, "a"), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("grid", 1, space, "a"), optuna.samplers.GridSampler)
    with pytest.raises(ValueError, match="sampler must be one of tpe, random, grid"):
        make_sampler("cmaes", 1, space, "a")
    assert study_name("nvidia-h100-80gb-hbm3", B).startswith("nvidia-h100-80gb-hbm3:sparse_decode:")


def test_grid_sampler_runs_the_whole_space():
    from questkern.tuning.runner import Outcome
    from questkern.tuning.strategy import make_objective, run_study

    b = Bucket("metadata", "bf16", 64, 8, 8, 4096, 1, (16,), ())
    space = OpSpace(b, num_sms=132)
    study = open_study(optuna.storages.InMemoryStorage(), "g", b, space, make_sampler("grid", 0, space, "g"))
    run_study(study, make_objective(space, lambda cand, n: Outcome(float(cand.config.num_warps)), None),
              n_trials=None, timeout=None, space_size=space.size())
    trials = study.get_trials()
    assert {t.params["num_warps"] for t in trials} == {1, 2, 4, 8}
    assert trials[0].params == {"num_warps": 2} and trials[0].user_attrs["default"]  # the enqueued heuristic
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]  # the grid's own visit of it was not re-run
    assert len(trials) == 4 + len(dups) and all(t.params == {"num_warps": 2} for t in dups)
    assert study.best_trial.params == {"num_warps": 1}


def test_a_study_from_before_the_ordinal_encoding_resumes_without_repeating_points(monkeypatch):
    """Trials stored with plain categorical names, then more with ordinal ones: one study,
    the old default is not enqueued again, and no point is evaluated twice."""
    from questkern.tuning.runner import Outcome
    from questkern.tuning.space import decode_params, params_key
    from questkern.tuning.strategy import evaluated, make_objective, run_study

    b = Bucket("sparse_decode", "bf16", 128, 32, 8, 32768, 8, (16,), (2048,))
    space = OpSpace(b, num_sms=132)
    storage = optuna.storages.InMemoryStorage()
    seen: list[tuple] = []

    def evaluate(cand, n):
        seen.append(params_key(cand.params))
        return Outcome(float(cand.config.pages_per_block * 10 + cand.config.num_warps))

    def categorical(self, trial):  # what suggest() did before
        p = {}
        for prm in self.params:
            if prm.active is None or prm.active(p):
                p[prm.name] = trial.suggest_categorical(prm.name, list(prm.choices))
        return p

    with monkeypatch.context() as m:
        m.setattr(OpSpace, "suggest", categorical)
        m.setattr(OpSpace, "encode", lambda self, p, grid=False: dict(p))
        study = open_study(storage, "s", b, space, make_sampler("random", 0, space, "s"))
        run_study(study, make_objective(space, evaluate, None), n_trials=6, timeout=None, space_size=space.size())
    old = [t for t in study.get_trials() if evaluated(t)]
    assert old and not any("@" in k for t in old for k in t.params)
    study = open_study(storage, "s", b, space, make_sampler("tpe", 0, space, "s"))  # the new code resumes it
    assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]  # default already ran
    study.enqueue_trial(space.encode(decode_params(old[-1].params)))  # an old point, asked the new way
    run_study(study, make_objective(space, evaluate, None), n_trials=20, timeout=None, space_size=space.size())
    again = [t for t in study.get_trials() if "duplicate_of" in t.user_attrs]
    assert [t.user_attrs["duplicate_of"] for t in again] == [old[-1].number]  # copied, not re-timed
    new = [t for t in study.get_trials() if evaluated(t) and any("@" in k for k in t.params)
           and "duplicate_of" not in t.user_attrs]
    study.enqueue_trial(space.encode(decode_params(new[0].params)))  # a new-encoding point, again
    run_study(study, make_objective(space, evaluate, None), n_trials=21, timeout=None, space_size=space.size())
    assert study.get_trials()[-1].user_attrs.get("duplicate_of") == new[0].number
    assert new and len(seen) == len(set(seen))  # each distinct point timed once across both encodings
    assert all(decode_params(t.params) in [dict(k) for k in seen] for t in new)
