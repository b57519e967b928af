"""Search spaces: what the tuner varies for each op, which combinations are invalid, and
the heuristic default expressed as a point of the space.

A :class:`Bucket` is one study: one op at one shape (dtype, head dim, heads, sequence
length, batch); page size and token budget are searched too when several are given.
:class:`OpSpace` turns a bucket into Optuna parameters. Parameters are the fields of the
op's config dataclass (:mod:`questkern.config`), with static choice lists per bucket so
that Optuna's distributions never change within a study; combinations that cannot work
or that duplicate another point are rejected by :meth:`OpSpace.violation` *before*
anything is compiled (the trial is pruned, not failed):

What each op searches, its constraints and its default come from the op's own tunable
description (``questkern/ops/<op>/tunable.py``, protocol in :mod:`questkern.ops.tunable`);
this module is generic over ops. Page size and budget are searched here, for every op that
has several.

The heuristic default (``questkern.config.default_*``) always lies in the space and
satisfies the constraints (tests check this), so it can be enqueued as trial 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from questkern.configs.keys import BUDGET_OPS, EntryKey, check_op, dtype_name
from questkern.ops.tunable import Param, Tunable, page_budget, tunable


@dataclass(frozen=True)
class Bucket:
    """One study: ``op`` at one shape; several page sizes / budgets become search params."""

    op: str
    dtype: str
    head_dim: int
    num_q_heads: int
    num_kv_heads: int
    seq_len: int
    batch: int
    page_sizes: tuple[int, ...] = (16,)
    budgets: tuple[int, ...] = (2048,)
    gqa_mode: str = "shared"
    aggregate: str = "sum"

    def __post_init__(self):
        check_op(self.op)
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "page_sizes", tuple(sorted(set(self.page_sizes))))
        object.__setattr__(self, "budgets", tuple(sorted(set(self.budgets))) if self.op in BUDGET_OPS else ())
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads = {self.num_q_heads} must be a multiple of num_kv_heads = {self.num_kv_heads}")
        if not self.page_sizes:
            raise ValueError("page_sizes must not be empty")
        if self.op in BUDGET_OPS and not self.budgets:
            raise ValueError(f"{self.op} needs at least one budget")

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def per_head(self) -> bool:
        """Whether selection and sparse decode run one row per query head."""
        return self.gqa_mode == "per_head" and self.group > 1 and self.op in BUDGET_OPS

    @property
    def multi_objective(self) -> bool:
        """Latency and quality, when page size or budget vary for an op that selects pages."""
        return self.op in BUDGET_OPS and (len(self.page_sizes) > 1 or len(self.budgets) > 1)

    def max_pages(self, page_size: int) -> int:
        return -(-self.seq_len // page_size)

    def k_pages(self, page_size: int, budget: int) -> int:
        return min(-(-budget // page_size), self.max_pages(page_size))

    def slots(self, page_size: int, budget: int | None) -> int:
        """Page slots a decode walks: the selection width with a budget (sparse), else every page (dense)."""
        return self.k_pages(page_size, budget) if budget is not None else self.max_pages(page_size)

    def head_programs(self) -> int:
        return self.num_q_heads if self.per_head else self.num_kv_heads

    def entry_key(self, page_size: int, budget: int | None) -> EntryKey:
        return EntryKey.for_call(self.op, dtype=self.dtype, head_dim=self.head_dim, group=self.group,
                                 page_size=page_size, seq_len=self.seq_len, batch=self.batch, budget=budget,
                                 gqa_mode=self.gqa_mode)

    def name(self) -> str:
        """Stable study-name suffix (no '/': it also names NVTX ranges and files)."""
        s = (f"{self.op}:{self.dtype}:d{self.head_dim}:h{self.num_q_heads}-{self.num_kv_heads}:"
             f"s{self.seq_len}:b{self.batch}:p{'-'.join(map(str, self.page_sizes))}")
        if self.op in BUDGET_OPS:
            s += f":k{'-'.join(map(str, self.budgets))}:{self.gqa_mode}"
            if self.gqa_mode == "shared" and self.group > 1:
                s += f"-{self.aggregate}"
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["page_sizes"], d["budgets"] = list(self.page_sizes), list(self.budgets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Bucket":
        d = dict(d)
        d["page_sizes"], d["budgets"] = tuple(d["page_sizes"]), tuple(d["budgets"])
        return cls(**d)


@dataclass(frozen=True)
class Candidate:
    """A point of the space, decoded: the op's config plus the algorithm knobs."""

    config: Any
    page_size: int
    budget: int | None
    params: dict = field(hash=False, compare=False)


class OpSpace:
    """The search space of one bucket on a device with ``num_sms`` SMs.

    ``fixed`` pins parameters to one value each (``{"num_stages": 2}``); a name the op
    does not search is an error.
    """

    def __init__(self, bucket: Bucket, *, num_sms: int, fixed: dict | None = None):
        self.bucket = bucket
        self.num_sms = int(num_sms)
        self.tunable: Tunable = tunable(bucket.op)  # what the op searches (ops/<op>/tunable.py)
        self.params: list[Param] = self._with_defaults(self._build())
        fixed = dict(fixed or {})
        names = [p.name for p in self.params]
        unknown = set(fixed) - set(names)
        if unknown:
            raise ValueError(f"cannot fix {sorted(unknown)} for op {bucket.op}: it searches {names}")
        self.params = [Param(p.name, (fixed[p.name],), p.active) if p.name in fixed else p for p in self.params]
        self.fixed = fixed

    # ------------------------------------------------------------------ definition
    def _build(self) -> list[Param]:
        b = self.bucket
        params: list[Param] = []
        if len(b.page_sizes) > 1:
            params.append(Param("page_size", b.page_sizes))
        if len(b.budgets) > 1:
            params.append(Param("budget", b.budgets))
        return params + self.tunable.params(b, self.num_sms)

    def _with_defaults(self, params: list[Param]) -> list[Param]:
        """Add any heuristic default value missing from a choice list, so the default is
        always a point of the space (the heuristics in config.py evolve)."""
        self.params, self.fixed = params, {}
        extra: dict[str, set] = {}
        for point in self.default_points():
            for name, v in point.items():
                extra.setdefault(name, set()).add(v)
        out = []
        for p in params:
            missing = [v for v in extra.get(p.name, ()) if v not in p.choices]
            choices = p.choices + tuple(missing)
            if missing and all(isinstance(v, int) and not isinstance(v, bool) for v in choices):
                choices = tuple(sorted(choices))
            out.append(Param(p.name, choices, p.active))
        return out

    def _page_budget(self, params: dict) -> tuple[int, int | None]:
        return page_budget(self.bucket, params)

    # ------------------------------------------------------------------ points
    def default_params(self, page_size: int | None = None, budget: int | None = None) -> dict:
        """The heuristic default config as a point of this space (for one page size/budget)."""
        b = self.bucket
        ps = page_size if page_size is not None else b.page_sizes[0]
        bud = (budget if budget is not None else b.budgets[0]) if b.budgets else None
        p: dict = {}
        if len(b.page_sizes) > 1:
            p["page_size"] = ps
        if len(b.budgets) > 1:
            p["budget"] = bud
        p.update(self.tunable.default(b, ps, bud, self.num_sms))
        for name, v in self.fixed.items():  # a pinned parameter overrides the heuristic's value
            if name in p:
                p[name] = v
        return p

    def default_points(self) -> list[dict]:
        """One heuristic default per (page size, budget) combination."""
        b = self.bucket
        return [self.default_params(ps, bud) for ps in b.page_sizes for bud in (b.budgets or (None,))]

    def suggest(self, trial) -> dict:
        """Ask an Optuna trial for a point (conditional params only when active).

        A parameter with more than two ordered integer choices (tile sizes, warps,
        stages, splits, ...) is asked as the index into its sorted choices, under the
        self-describing name ``name@c0/c1/...`` (:func:`decode_params` maps it back), so
        TPE models it as ordered and learns that neighbours behave alike; unordered or
        two-valued ones stay categorical, and so does everything for the grid sampler.
        On the H100 sparse-decode sweep (106 points) TPE without the default enqueued
        then needs a median 7 trials to come within 3% of the best, 6.6% of the sweep
        (13.5 with every parameter categorical; ``tuning/runs/*convergence*``).
        """
        grid = isinstance(getattr(getattr(trial, "study", None), "sampler", None), optuna.samplers.GridSampler)
        p: dict = {}
        for prm in self.params:
            if prm.active is None or prm.active(p):
                if not grid and _ordinal(prm.choices):
                    srt = sorted(prm.choices)
                    p[prm.name] = srt[trial.suggest_int(_ordinal_name(prm.name, srt), 0, len(srt) - 1)]
                else:
                    p[prm.name] = trial.suggest_categorical(prm.name, list(prm.choices))
        return p

    def encode(self, params: dict, *, grid: bool = False) -> dict:
        """A point as :meth:`suggest` asks for it (for ``enqueue_trial``); ``grid``: for
        the grid sampler (every parameter categorical)."""
        out = {}
        for prm in self.params:
            if prm.name in params:
                v = params[prm.name]
                if not grid and _ordinal(prm.choices):
                    srt = sorted(prm.choices)
                    out[_ordinal_name(prm.name, srt)] = srt.index(v)
                else:
                    out[prm.name] = v
        return out

    def violation(self, params: dict) -> str | None:
        """Why ``params`` is invalid or redundant (pruned before compiling), or None."""
        ps, bud = self._page_budget(params)
        return self.tunable.violation(self.bucket, params, ps, bud, self.num_sms)

    def candidate(self, params: dict) -> Candidate:
        """Decode a point into the op's config (raises ValueError for an invalid config)."""
        ps, bud = self._page_budget(params)
        return Candidate(self.tunable.config(params), ps, bud, dict(params))

    def grid(self) -> dict[str, list]:
        """Every parameter with all its choices (for Optuna's GridSampler)."""
        return {p.name: list(p.choices) for p in self.params}

    def enumerate(self) -> list[dict]:
        """Every valid point (conditional params only where active), in a fixed order."""
        out: list[dict] = []

        def rec(i: int, p: dict) -> None:
            if i == len(self.params):
                if self.violation(p) is None:
                    out.append(dict(p))
                return
            prm = self.params[i]
            if prm.active is not None and not prm.active(p):
                rec(i + 1, p)
                return
            for v in prm.choices:
                p[prm.name] = v
                rec(i + 1, p)
                del p[prm.name]

        rec(0, {})
        return out

    def size(self) -> int:
        return len(self.enumerate())


ORDINAL_SEP = "@"  # "<name>@<c0>/<c1>/...": an ordered choice asked as its index


def _ordinal(choices) -> bool:
    return len(choices) > 2 and all(isinstance(c, int) and not isinstance(c, bool) for c in choices)


def _ordinal_name(name: str, sorted_choices: list) -> str:
    return f"{name}{ORDINAL_SEP}{'/'.join(str(c) for c in sorted_choices)}"


def decode_params(params: dict) -> dict:
    """Trial params -> the point: ordinal indices (``name@c0/c1/...``) back to their
    values; plain names (categorical, or studies made before the ordinal encoding) as is."""
    out = {}
    for k, v in params.items():
        if ORDINAL_SEP in k:
            name, choices = k.split(ORDINAL_SEP, 1)
            out[name] = int(choices.split("/")[int(v)])
        else:
            out[k] = v
    return out


def params_key(params: dict) -> tuple:
    """Hashable identity of a point (for duplicates), whichever way its params are encoded."""
    return tuple(sorted(decode_params(params).items()))


def product_size(space: OpSpace) -> int:
    """Size of the unconstrained Cartesian product (for reports)."""
    return math.prod(len(p.choices) for p in space.params)
