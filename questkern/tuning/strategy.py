"""The strategy: Optuna samplers, studies, and the objective that ties a space to a runner.

* One study per :class:`~questkern.tuning.space.Bucket`, named ``<prefix>:<bucket>``,
  in an Optuna storage (SQLite by default), opened with ``load_if_exists`` so an
  interrupted run resumes and several workers can share it. RDB storages get Optuna
  heartbeats, so a trial whose process died is marked failed once its grace period
  passes.
* The heuristic default of every (page size, budget) is enqueued first (once per study).
* The objective suggests a point, prunes it before compiling when it violates a
  constraint, returns the stored value for a point already evaluated (duplicates are
  not re-run), else asks the evaluator (the runner) and records ``config``,
  ``latency_us``, ``quality`` or ``fail_reason`` as trial user attributes. A failed
  evaluation returns NaN, which Optuna records as a FAIL trial, and the study goes on.
* ``--trials N`` is the number of evaluated trials (complete or failed; pruned and
  enqueued-but-unrun ones do not count) the study should hold, so rerunning the same
  command after an interruption finishes the remaining ones.
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from questkern._nvtx import trial_range
from questkern.tuning.runner import FatalDeviceError, Outcome
from questkern.tuning.space import Bucket, Candidate, OpSpace, params_key

SAMPLERS = ("tpe", "random", "grid")
QualityFn = Callable[[int, int, str], float]
Evaluator = Callable[[Candidate, int], Outcome]
HEARTBEAT_S, GRACE_S = 30, 120
PRUNED_PER_TRIAL = 20  # safety: stop after this many constraint-pruned points per wanted trial


def study_name(prefix: str, bucket: Bucket) -> str:
    return f"{prefix}:{bucket.name()}"


def make_sampler(name: str, seed: int, space: OpSpace, study: str, *,
                 constant_liar: bool = False) -> optuna.samplers.BaseSampler:
    """Seeded sampler; the seed is mixed with the study name so buckets explore differently.
    ``constant_liar`` (TPE, for several workers on one study): running trials count as
    bad results, so concurrent workers do not all sample the same region."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    s = (int(seed) + zlib.crc32(study.encode())) % (2**31)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=s)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=s)
    with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna's terms
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=s, multivariate=True, group=True, n_startup_trials=tpe_startup(space),
                                          constant_liar=constant_liar)


def tpe_startup(space: OpSpace) -> int:
    """Random trials before TPE models the space: ~5% of the space, 4..10."""
    return max(4, min(10, space.size() // 20))


def make_storage(url: str | None):
    """Optuna storage for ``url`` (None: in memory). RDB URLs get heartbeats."""
    if url is None or url == "inmemory":
        return optuna.storages.InMemoryStorage()
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        from questkern.configs.paths import ensure_storage_dir

        ensure_storage_dir(url)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    return url  # journal and other URLs: let Optuna decide


def open_study(storage, name: str, bucket: Bucket, space: OpSpace, sampler: optuna.samplers.BaseSampler,
               extra_attrs: dict | None = None) -> optuna.Study:
    """Create or resume the study of ``bucket`` and enqueue the heuristic defaults.

    A stored study made for another bucket or another search space is an error (its
    trials would not be comparable), naming the ``--study`` option to start afresh.
    """
    directions: list = ["minimize", "maximize"] if bucket.multi_objective else ["minimize"]
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    attrs = study.user_attrs
    want = {"bucket": bucket.to_dict(), "space": space.grid()}
    for k, v in want.items():
        if k in attrs and attrs[k] != _jsonable(v):
            raise ValueError(f"study {name!r} in this storage was made for another {k} ({attrs[k]} vs {_jsonable(v)}); "
                             "pass --study NAME to start a separate study")
    if [d.name.lower() for d in study.directions] != directions:
        raise ValueError(f"study {name!r} has objectives {study.directions}, expected {directions}")
    for k, v in {**want, "objectives": ["latency_us", "quality"][:len(directions)], **(extra_attrs or {})}.items():
        if k not in attrs:
            study.set_user_attr(k, _jsonable(v))
    # Enqueue each default unless it already ran (or is queued/running). Not Optuna's
    # skip_if_exists: a default whose trial was interrupted must run again.
    live = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    have = {params_key(t.params or t.system_attrs.get("fixed_params", {}))  # queued trials keep them there
            for t in study.get_trials(deepcopy=False) if t.state in live or evaluated(t)}
    for p in space.default_points():
        if params_key(p) not in have:
            study.enqueue_trial(space.encode(p, grid=isinstance(sampler, optuna.samplers.GridSampler)),
                                user_attrs={"default": True})
    return study


def _jsonable(v):
    """Lists instead of tuples (what the storage hands back)."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def evaluated(t: FrozenTrial) -> bool:
    """Complete, or failed by the objective (not by an interruption or a dead worker)."""
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def find_duplicate(study: optuna.Study, params: dict, number: int) -> FrozenTrial | None:
    key = params_key(params)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.number != number and evaluated(t) and params_key(t.params) == key:
            return t
    return None


def make_objective(space: OpSpace, evaluate: Evaluator, quality_fn: QualityFn | None, *,
                   dedupe: Callable[[optuna.Trial, dict], FrozenTrial | None] | None = None):
    """The Optuna objective: suggest -> constraints -> duplicate -> evaluate -> record.

    ``dedupe(trial, params)`` returns the finished, evaluated trial whose result a
    repeated point copies, or None to evaluate it (default: :func:`find_duplicate`;
    the distributed worker also waits for a point another worker is evaluating)."""
    bucket = space.bucket
    multi = bucket.multi_objective
    nan = (math.nan, math.nan) if multi else math.nan

    def objective(trial: optuna.Trial):
        params = space.suggest(trial)
        why = space.violation(params)
        if why is not None:
            trial.set_user_attr("pruned_reason", why)
            raise optuna.TrialPruned(why)
        dup = dedupe(trial, params) if dedupe else find_duplicate(trial.study, params, trial.number)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup.number)
            for k in ("config", "page_size", "budget", "latency_us", "quality"):
                if k in dup.user_attrs:
                    trial.set_user_attr(k, dup.user_attrs[k])
            if dup.state == TrialState.COMPLETE:
                return tuple(dup.values) if multi else dup.value
            trial.set_user_attr("fail_reason", f"same point as failed trial {dup.number}: {dup.user_attrs['fail_reason']}")
            return nan
        try:
            cand = space.candidate(params)
        except ValueError as exc:
            trial.set_user_attr("fail_reason", f"invalid config: {exc}")
            return nan
        trial.set_user_attr("config", cand.config.to_dict())
        trial.set_user_attr("page_size", cand.page_size)
        trial.set_user_attr("budget", cand.budget)
        with trial_range(trial.number):  # NVTX range questkern.trial carrying the trial number
            try:
                out = evaluate(cand, trial.number)
            except FatalDeviceError as exc:
                trial.set_user_attr("fail_reason", str(exc))
                raise
        if not out.ok:
            trial.set_user_attr("fail_reason", out.fail_reason)
            return nan
        trial.set_user_attr("latency_us", out.latency_us)
        if not multi:
            return out.latency_us
        q = float(quality_fn(cand.page_size, cand.budget, bucket.gqa_mode))
        trial.set_user_attr("quality", q)
        return out.latency_us, q

    return objective


class StopWhen:
    """Optuna callback: stop at ``n_trials`` evaluated trials, when every valid point has
    been evaluated, or after too many constraint-pruned proposals."""

    def __init__(self, n_trials: int | None, space_size: int):
        self.n_trials, self.space_size = n_trials, space_size

    def done(self, study: optuna.Study) -> bool:
        trials = study.get_trials(deepcopy=False)
        ev = [t for t in trials if evaluated(t)]
        unique = {params_key(t.params) for t in ev}
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        if self.n_trials is not None and len(ev) >= self.n_trials:
            return True
        if len(unique) >= self.space_size:
            return True
        return pruned >= PRUNED_PER_TRIAL * max(self.n_trials or self.space_size, 10)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.done(study):
            study.stop()


def run_study(study: optuna.Study, objective, *, n_trials: int | None, timeout: float | None, space_size: int,
              callbacks: list | None = None) -> None:
    """Optimize until ``n_trials`` evaluated trials (resumed count), the timeout, or the
    space is exhausted. With neither ``n_trials`` nor ``timeout`` the whole space runs."""
    stop = StopWhen(n_trials, space_size)
    if stop.done(study):
        return
    study.optimize(objective, n_trials=None, timeout=timeout, callbacks=[stop, *(callbacks or [])],
                   gc_after_trial=False)
