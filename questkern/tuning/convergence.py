"""How many trials does the tuner need? Exhaustive sweep of one bucket vs simulated searches.

1. ``sweep`` times every valid point of one bucket's space on this GPU (through the
   same runner: reference check, CUDA-graph ``do_bench`` median) and stores the
   latencies as JSON. It is resumable: rerun the same command and it continues with the
   points not yet measured (the file is rewritten atomically every few points).
2. ``simulate`` replays the tuner's own strategy (sampler, default enqueued as trial 0,
   constraint pruning, duplicate skipping) on that table for many seeds, with the sweep
   as the evaluator (Kernel Tuner's "simulation mode"), and counts the evaluated
   trials until the best found is within ``target`` (1.03 = 3%) of the sweep's best.
   Random search is replayed too, as the baseline.

    python -m questkern.tuning.convergence sweep --op sparse_decode --seq 32k --batch 8 \
        --heads 32/8 --head-dim 128 --page-size 16 --budget 2048 --fix num_stages=2 --out sweep.json
    python -m questkern.tuning.convergence simulate --sweep sweep.json --seeds 50 --out convergence.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna

from questkern._details import default_device
from questkern.configs.keys import BUDGET_OPS, OPS
from questkern.tuning.runner import Outcome
from questkern.tuning.space import Bucket, OpSpace, params_key
from questkern.tuning.strategy import evaluated, make_objective, make_sampler, open_study
from questkern.configs.table import atomic_write_json, current_versions, now_iso, read_json

SAVE_EVERY = 8  # points between atomic rewrites of the sweep file


def sweep(bucket: Bucket, *, out: Path, fixed: dict | None = None, max_time: float | None = None,
          timer=None, rep_ms: int = 100, warmup_ms: int = 25, seed: int = 0, log=print) -> dict:
    """Time every valid point of ``bucket`` (resuming from ``out``); returns the sweep document."""
    from questkern.configs.gpus import current_gpu_key, current_gpu_name
    from questkern.tuning.runner import Runner, WorkloadPool, default_timer
    from questkern.tuning.tuner import num_sms

    device = default_device()
    sms = num_sms(device)
    space = OpSpace(bucket, num_sms=sms, fixed=fixed)
    points = space.enumerate()
    doc: dict = {"gpu_key": current_gpu_key(), "device_name": current_gpu_name(), "versions": current_versions(),
           "bucket": bucket.to_dict(), "fixed": dict(fixed or {}), "num_sms": sms, "space_size": len(points),
           "rep_ms": rep_ms, "started": now_iso(), "complete": False, "points": []}
    if Path(out).exists():
        old = read_json(Path(out))
        if (old.get("bucket"), old.get("fixed"), old.get("gpu_key"), old.get("num_sms")) != \
                (doc["bucket"], doc["fixed"], doc["gpu_key"], doc["num_sms"]):
            raise ValueError(f"{out} holds a sweep of another bucket/GPU/--fix; choose another --out")
        doc["points"] = old["points"]
    done = {params_key(p["params"]) for p in doc["points"]}
    runner = Runner(bucket, WorkloadPool(device, seed=seed), timer or default_timer(device, rep_ms, warmup_ms))
    deadline = time.monotonic() + max_time if max_time else None
    todo = [p for p in points if params_key(p) not in done]
    log(f"sweep of {bucket.name()}: {len(points)} points, {len(done)} already measured, {len(todo)} to go")
    for i, p in enumerate(todo, 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        o = runner.evaluate(space.candidate(p))
        doc["points"].append({"params": p, "latency_us": o.latency_us, "fail_reason": o.fail_reason})
        if i % SAVE_EVERY == 0:
            atomic_write_json(Path(out), doc)
            log(f"  {len(doc['points'])}/{len(points)} measured")
    doc["complete"] = len({params_key(p["params"]) for p in doc["points"]}) >= len(points)
    doc["finished"] = now_iso()
    atomic_write_json(Path(out), doc)
    return doc


def _lookup_evaluator(doc: dict):
    table = {params_key(p["params"]): p for p in doc["points"]}

    def evaluate(cand, trial=None) -> Outcome:
        p = table[params_key(cand.params)]
        return Outcome(p["latency_us"], p["fail_reason"]) if p["latency_us"] else Outcome(None, p["fail_reason"] or "failed")

    return evaluate


def trials_to_target(doc: dict, sampler: str, seed: int, target: float, with_default: bool = True) -> dict:
    """Replay one seeded search on the sweep; evaluated trials (and distinct points)
    until the best is within ``target`` of the sweep's best. ``with_default=False``
    replays the sampler alone, without the heuristic default enqueued as trial 0
    (its own search efficiency, when the default is already near the best)."""
    bucket = Bucket.from_dict(doc["bucket"])
    space = OpSpace(bucket, num_sms=doc["num_sms"], fixed=doc["fixed"])
    best = min(p["latency_us"] for p in doc["points"] if p["latency_us"])
    name = f"sim:{bucket.name()}"
    if with_default:
        study = open_study(optuna.storages.InMemoryStorage(), name, bucket, space, make_sampler(sampler, seed, space, name))
    else:
        study = optuna.create_study(sampler=make_sampler(sampler, seed, space, name), direction="minimize")
    objective = make_objective(space, _lookup_evaluator(doc), lambda *a: 1.0)
    state: dict = {"n": 0, "unique": set(), "hit": None}

    def cb(study, t):
        if not evaluated(t):
            return
        state["n"] += 1
        state["unique"].add(params_key(t.params))
        if t.state == optuna.trial.TrialState.COMPLETE and t.value <= target * best and state["hit"] is None:
            state["hit"] = (state["n"], len(state["unique"]))
            study.stop()
        elif len(state["unique"]) >= space.size() or state["n"] >= 20 * space.size():
            study.stop()

    study.optimize(objective, callbacks=[cb])
    n, u = state["hit"] if state["hit"] else (None, None)
    return {"seed": seed, "trials": n, "distinct_points": u}


def simulate(doc: dict, *, seeds: int = 50, target: float = 1.03, samplers=("tpe", "random"),
             with_default: bool = True) -> dict:
    """Trials-to-target statistics over ``seeds`` replays per sampler."""
    if not doc.get("complete"):
        raise ValueError("the sweep is incomplete: rerun the sweep command to finish it first")
    lat = [p["latency_us"] for p in doc["points"] if p["latency_us"]]
    best = min(lat)
    default_lat = None
    bucket = Bucket.from_dict(doc["bucket"])
    space = OpSpace(bucket, num_sms=doc["num_sms"], fixed=doc["fixed"])
    dkey = params_key(space.default_params())
    for p in doc["points"]:
        if params_key(p["params"]) == dkey:
            default_lat = p["latency_us"]
    within = sum(x <= target * best for x in lat)
    res = {"gpu_key": doc["gpu_key"], "bucket": doc["bucket"], "fixed": doc["fixed"], "space_size": doc["space_size"],
           "failed_points": sum(1 for p in doc["points"] if not p["latency_us"]), "best_us": best,
           "default_us": default_lat, "points_within_target": within, "target": target,
           "default_enqueued": with_default, "samplers": {}}
    with _quiet():
        for s in samplers:
            runs = [trials_to_target(doc, s, seed, target, with_default) for seed in range(seeds)]
            ns = sorted(r["trials"] if r["trials"] is not None else float("inf") for r in runs)
            fin = lambda x: x if x != float("inf") else None  # noqa: E731 - JSON has no infinity
            med = statistics.median(ns)
            res["samplers"][s] = {
                "median_trials": fin(med), "p90_trials": fin(ns[int(0.9 * (len(ns) - 1))]), "max_trials": fin(ns[-1]),
                "never_reached": sum(r["trials"] is None for r in runs),
                "median_fraction_of_space": fin(med / doc["space_size"]), "runs": runs}
    return res


class _quiet:
    def __enter__(self):
        import warnings

        self._level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        optuna.logging.set_verbosity(self._level)


def summary_lines(res: dict) -> list[str]:
    lines = [f"exhaustive sweep: {res['space_size']} points ({res['failed_points']} failed), best {res['best_us']:.2f} us"
             + (f", default {res['default_us']:.2f} us ({res['default_us'] / res['best_us']:.3f}x slower)"
                if res["default_us"] else "")
             + f"; {res['points_within_target']} points within {100 * (res['target'] - 1):.0f}% of the best"]
    for s, r in res["samplers"].items():
        frac = r["median_fraction_of_space"]
        lines.append(f"{s:>6}: trials to within {100 * (res['target'] - 1):.0f}%: median {r['median_trials']}, "
                     f"p90 {r['p90_trials']}, max {r['max_trials']} "
                     f"= {'-' if frac is None else f'{100 * frac:.1f}%'} of the sweep "
                     f"(over {len(r['runs'])} seeds; {r['never_reached']} never reached it)")
    return lines


def main(argv: list[str] | None = None) -> int:
    from questkern._details import select_backend

    select_backend()
    from questkern._shapes import add_shape_args, parse_fix

    ap = argparse.ArgumentParser(prog="python -m questkern.tuning.convergence", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sw = sub.add_parser("sweep", help="time every valid point of one bucket (resumable)")
    sw.add_argument("--op", choices=OPS, required=True)
    add_shape_args(sw, lists=(), required=("seq",), defaults={"batch": "1", "heads": "32/8"})
    sw.add_argument("--fix", type=parse_fix, default={})
    sw.add_argument("--max-time", type=float, default=None, help="stop after this many seconds (rerun to continue)")
    sw.add_argument("--rep-ms", type=int, default=100)
    sw.add_argument("--warmup-ms", type=int, default=25)
    sw.add_argument("--out", type=Path, required=True)
    si = sub.add_parser("simulate", help="replay TPE and random search on a finished sweep")
    si.add_argument("--sweep", type=Path, required=True)
    si.add_argument("--seeds", type=int, default=50)
    si.add_argument("--target", type=float, default=1.03)
    si.add_argument("--out", type=Path, default=None)
    si.add_argument("--without-default", action="store_true",
                    help="replay the samplers without the heuristic default enqueued as trial 0")
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        hq, hkv = args.heads
        b = Bucket(args.op, args.dtype, args.head_dim, hq, hkv, args.seq, args.batch, (args.page_size,),
                   (args.budget,) if args.op in BUDGET_OPS else (), args.gqa_mode)
        with _quiet():
            doc = sweep(b, out=args.out, fixed=args.fix, max_time=args.max_time, rep_ms=args.rep_ms,
                        warmup_ms=args.warmup_ms)
        n_ok = sum(1 for p in doc["points"] if p["latency_us"])
        print(f"wrote {args.out}: {len(doc['points'])}/{doc['space_size']} points ({n_ok} passed the check)"
              + ("" if doc["complete"] else "; INCOMPLETE: rerun the same command to continue"))
        return 0 if doc["complete"] else 3
    doc = read_json(args.sweep)
    try:
        res = simulate(doc, seeds=args.seeds, target=args.target, with_default=not args.without_default)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    for line in summary_lines(res):
        print(line)
    if args.out:
        atomic_write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
