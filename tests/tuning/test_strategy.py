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
