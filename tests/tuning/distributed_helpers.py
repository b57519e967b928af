"""Helpers of the distributed-tuning tests (test_distributed.py, test_postgres.py):
the timing log the workers' test clock writes, and the consistency check of a study
that several worker processes shared."""

from __future__ import annotations

import json
import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from questkern.configs.gpus import CPU_KEY
from questkern.tuning.space import Bucket, OpSpace, decode_params, params_key
from questkern.tuning.storage import driver_url
from questkern.tuning.worker import ENV_TEST_TIMER, fake_latency

# one select bucket: a 16-point space, ~0.3 s per interpreter trial
TINY = ["--seq", "128", "--batch", "1", "--heads", "2/1", "--head-dim", "32", "--page-size", "16", "--budget", "32",
        "--ops", "select"]
BUCKET = Bucket("select", "bfloat16", 32, 2, 1, 128, 1, (16,), (32,))
STUDY = f"{CPU_KEY}:{BUCKET.name()}"


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=driver_url(url))


def timer_env(monkeypatch, tmp_path, sleep_s: float, hang_once: bool = False):
    """Switch the workers (separate processes: they read the environment) to the test
    clock; ``hang_once``: the first trial timed (by any worker) never ends (to be killed)."""
    log = tmp_path / "timings.jsonl"
    opts = {"sleep_s": sleep_s, "log": str(log), "hang_once": str(tmp_path / "hang.token") if hang_once else None}
    monkeypatch.setenv(ENV_TEST_TIMER, json.dumps(opts))
    return log


def timings(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def check_consistent(url: str, log, n_trials: int) -> list:
    """The study holds exactly ``n_trials`` evaluated trials and none running or queued;
    no point was evaluated by two trials; every evaluated trial was timed exactly once
    (by its own worker, per the timing log) and duplicates were never timed. Returns the trials."""
    trials = load(url).get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    ev = [t for t in trials if t.state == TrialState.COMPLETE or "fail_reason" in t.user_attrs]
    assert len(ev) == n_trials
    run = [t for t in ev if "duplicate_of" not in t.user_attrs]
    keys = [params_key(t.params) for t in run]
    assert len(keys) == len(set(keys)), "a point was evaluated by two trials"
    timed = Counter(x["trial"] for x in timings(log) if x["trial"] is not None)
    by = {x["trial"]: x["worker"] for x in timings(log) if x["trial"] is not None}
    space = OpSpace(BUCKET, num_sms=4)
    for t in run:
        assert timed[t.number] == 1, f"trial {t.number} timed {timed[t.number]} times"
        assert by[t.number] == t.user_attrs["worker"]
        assert t.value == fake_latency(space.candidate(decode_params(t.params)).config)
    assert all(timed[t.number] == 0 for t in ev if "duplicate_of" in t.user_attrs)
    return trials
