"""The observer: progress while a study runs and the final report of a tuning run.

Kept apart from the strategy and the runner so that other front ends (the distributed
launcher, a notebook) can show progress their own way. :class:`ConsoleObserver`
draws one progress bar per bucket on a terminal (one summary line per bucket when the
output is a file or pipe), then a table of the best configs with their speedup over the
heuristic default and the geometric mean.
"""

from __future__ import annotations

import math
import sys
import time

from optuna.trial import FrozenTrial, TrialState

from questkern._dtypes import short_name


class Observer:
    """No-op base: subclasses override what they show."""

    def note(self, msg: str) -> None:
        pass

    def bucket_started(self, index: int, total: int, name: str, space_size: int, target: int | None,
                       timeout: float | None) -> None:
        pass

    def trial_done(self, study, trial: FrozenTrial) -> None:
        pass

    def bucket_done(self, result) -> None:
        pass

    def run_done(self, report) -> None:
        pass


def geomean(xs) -> float:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def format_config(cfg: dict) -> str:
    short = {"chunk_pages": "chunk", "block_d": "bd", "num_warps": "w", "num_stages": "st", "merge_warps": "mw",
             "pages_per_block": "ppb", "num_splits": "splits", "combine_warps": "cw"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in cfg.items())


def report_lines(report) -> list[str]:
    """The final table (one row per written entry) and the geometric-mean speedup."""
    rows = []
    for br in report.buckets:
        for g in br.groups:
            dt = short_name(br.bucket.dtype)
            rows.append((br.bucket.op, f"{dt} d{br.bucket.head_dim} "
                         f"{br.bucket.num_q_heads}/{br.bucket.num_kv_heads}", br.bucket.seq_len, br.bucket.batch,
                         g.page_size, g.budget if g.budget is not None else "-", g.latency_us, g.default_latency_us,
                         g.speedup, br.n_evaluated, format_config(g.config)))
    head = ("op", "shape", "seq", "batch", "page", "budget", "best_us", "default_us", "speedup", "trials", "config")
    out = ["  ".join(f"{h:>9}" if i in (2, 3, 4, 5, 6, 7, 8, 9) else f"{h:<14}" for i, h in enumerate(head))]
    for r in rows:
        cells = [f"{r[0]:<14}", f"{r[1]:<14}", f"{r[2]:>9}", f"{r[3]:>9}", f"{r[4]:>9}", f"{r[5]:>9}",
                 f"{r[6]:>9.2f}", f"{r[7]:>9.2f}" if r[7] else f"{'-':>9}",
                 f"{r[8]:>8.3f}x" if r[8] else f"{'-':>9}", f"{r[9]:>9}", r[10]]
        out.append("  ".join(cells))
    sp = [g.speedup for br in report.buckets for g in br.groups if g.speedup]
    out.append(f"geometric mean speedup over the heuristic default: {geomean(sp):.3f}x over {len(sp)} entries "
               f"(tuned and default timed back to back in this run)")
    failed = [br for br in report.buckets if br.error]
    for br in failed:
        out.append(f"bucket {br.study_name}: {br.error}")
    return out


class ConsoleObserver(Observer):
    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._t0 = time.monotonic()
        self._target = None
        self._size = 0

    def _print(self, msg: str = "") -> None:
        print(msg, file=self.stream, flush=True)

    def note(self, msg: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")
        self._print(msg)

    def bucket_started(self, index, total, name, space_size, target, timeout) -> None:
        self._t0, self._target, self._size = time.monotonic(), target, space_size
        lim = []
        if target is not None:
            lim.append(f"{target} trials")
        if timeout is not None:
            lim.append(f"{timeout:.0f} s")
        self._print(f"[{index}/{total}] {name}  (space {space_size} points; {' or '.join(lim) or 'whole space'})")

    def trial_done(self, study, trial) -> None:
        if trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs and "duplicate_of" not in trial.user_attrs:
            self.note(f"    trial {trial.number} failed: {trial.user_attrs['fail_reason']}")
        if not self.live:
            return
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
        fails = sum(t.state == TrialState.FAIL for t in trials)
        lat = [t.user_attrs["latency_us"] for t in trials if t.state == TrialState.COMPLETE and "latency_us" in t.user_attrs]
        total = self._target or self._size
        width = 30
        fill = min(width, int(width * done / max(1, total)))
        best = f"best {min(lat):.2f} us" if lat else "best -"
        self.stream.write(f"\r\x1b[2K  [{'#' * fill}{'.' * (width - fill)}] {done}/{total}  {best}  "
                          f"failed {fails}  {time.monotonic() - self._t0:.0f} s")
        self.stream.flush()

    def bucket_done(self, result) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")
        if result.error:
            self._print(f"    FAILED: {result.error}")
            return
        parts = [f"{g.latency_us:.2f} us vs default {g.default_latency_us:.2f} us ({g.speedup:.3f}x)"
                 if g.speedup else f"{g.latency_us:.2f} us (no default)" for g in result.groups]
        self._print(f"    {result.n_evaluated} trials ({result.n_distinct} distinct, {result.n_failed} failed, "
                    f"{result.n_pruned} pruned) in "
                    f"{result.seconds:.0f} s: " + "; ".join(parts))

    def run_done(self, report) -> None:
        self._print()
        for line in report_lines(report):
            self._print(line)
        for path in report.written:
            self._print(f"wrote {path}")
