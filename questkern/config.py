"""Launch parameters of every kernel, as plain data.

Each op takes one frozen dataclass. The tuner searches their fields; the runtime
looks them up in a per-GPU table (:mod:`questkern.tuning`) and falls back to the
documented heuristics below when no table entry matches.

Heuristics (used when no tuning table matches):

* ``metadata``: one program per (page, kv head); ``num_warps`` 2 for d=64, 4 for d=128.
* ``select``: tiles of 64 pages per program (fewer when the context is shorter); one
  stage when a single tile covers the context, else a score stream (tiles smaller
  than K keep every page) or per-tile top-K (tiles of at least K pages), then a merge
  kernel with 4 warps up to 2048 pages, 8 beyond.
* ``decode``: ``pages_per_block`` so that one iteration covers 64 tokens, and enough
  splits that ``batch x head programs x splits`` is about twice the SM count, capped so
  that every split has at least one block of work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


class _ConfigBase:
    """Shared helpers: dict round trip with unknown-key checks."""

    op: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {sorted(unknown)}; expected a subset of {sorted(names)}"
            )
        return cls(**d)


@dataclass(frozen=True)
class MetadataConfig(_ConfigBase):
    op: ClassVar[str] = "metadata"
    num_warps: int = 4

    def __post_init__(self):
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"MetadataConfig.num_warps must be one of 1,2,4,8,16, got {self.num_warps}")


@dataclass(frozen=True)
class SelectConfig(_ConfigBase):
    """Fused estimate + top-K.

    chunk_pages: pages scored per program (power of two). A context of at most
        ``chunk_pages + 1`` pages runs in one launch; longer contexts run per-chunk
        top-K and then a merge launch (the two-stage path).
    block_d: head-dim slice loaded per step (power of two, <= head_dim).
    topk: top-K algorithm, ``"bisect"`` (bitwise threshold search by reductions) or
        ``"radix"`` (8-bit radix select with histograms); both exact, same tie rule.
    tiles_per_program: two-stage path with tiles smaller than K (no tile top-K: stage 1
        only scores pages): tiles each program streams, software-pipelined over
        ``num_stages`` tiles. 1 = one program per tile.
    fused_merge: in the two-stage path the last program of a row to finish merges that
        row (no merge launch; one row's merge overlaps other rows' tiles). Off by default:
        on the H100 it was slower at every shape measured (runs/009 with tile top-K;
        runs/015 in the score stream: 1-11 us slower).
    """

    op: ClassVar[str] = "select"
    chunk_pages: int = 256
    block_d: int = 64
    num_warps: int = 4
    num_stages: int = 1
    merge_warps: int = 4
    topk: str = "bisect"
    fused_merge: bool = False
    tiles_per_program: int = 1

    def __post_init__(self):
        if not isinstance(self.fused_merge, bool):
            raise ValueError(f"SelectConfig.fused_merge must be a bool, got {self.fused_merge!r}")
        if self.topk not in ("bisect", "radix"):
            raise ValueError(f"SelectConfig.topk must be 'bisect' or 'radix', got {self.topk!r}")
        if self.tiles_per_program not in (1, 2, 4, 8, 16, 32):
            raise ValueError(
                f"SelectConfig.tiles_per_program must be one of 1,2,4,8,16,32, got {self.tiles_per_program}"
            )
        for name in ("chunk_pages", "block_d"):
            v = getattr(self, name)
            if not _is_pow2(v) or v < 16:
                raise ValueError(f"SelectConfig.{name} must be a power of two >= 16, got {v}")
        for name in ("num_warps", "merge_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16):
                raise ValueError(f"SelectConfig.{name} must be one of 1,2,4,8,16, got {getattr(self, name)}")
        if not 1 <= self.num_stages <= 5:
            raise ValueError(f"SelectConfig.num_stages must be in 1..5, got {self.num_stages}")


@dataclass(frozen=True)
class DecodeConfig(_ConfigBase):
    """Split-K decode over pages (sparse: the selected ones; dense: all).

    pages_per_block: pages loaded per inner iteration (power of two).
    num_splits: programs along the page axis per (sequence, head group); 0 means
        "choose from the SM count at plan time" (the heuristic).
    fuse_combine: the last split to finish merges the splits (one launch fewer) instead
        of a separate combine kernel. Off by default: on the H100 the arrival atomic
        costs about what the launch saves (runs/007: GQA 32K 18.0 us fused vs 15.2 us).
    """

    op: ClassVar[str] = "decode"
    pages_per_block: int = 4
    num_splits: int = 0
    num_warps: int = 4
    num_stages: int = 2
    combine_warps: int = 4
    fuse_combine: bool = False

    def __post_init__(self):
        if not isinstance(self.fuse_combine, bool):
            raise ValueError(f"DecodeConfig.fuse_combine must be a bool, got {self.fuse_combine!r}")
        if not _is_pow2(self.pages_per_block):
            raise ValueError(f"DecodeConfig.pages_per_block must be a power of two, got {self.pages_per_block}")
        if self.num_splits < 0 or self.num_splits > 1024:
            raise ValueError(f"DecodeConfig.num_splits must be in 0..1024 (0 = heuristic), got {self.num_splits}")
        for name in ("num_warps", "combine_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16):
                raise ValueError(f"DecodeConfig.{name} must be one of 1,2,4,8,16, got {getattr(self, name)}")
        if not 1 <= self.num_stages <= 5:
            raise ValueError(f"DecodeConfig.num_stages must be in 1..5, got {self.num_stages}")


@dataclass(frozen=True)
class StepConfig(_ConfigBase):
    """The fused Quest step (``questkern.ops.step``): two launches instead of four.

    Stage 1 is select's score stream (every page but the last scored into a
    ``[B, rows, pages]`` row, by programs of ``chunk_pages`` pages, ``tiles_per_program``
    tiles each, ``score_warps`` warps, ``score_stages`` deep). Stage 2 runs ``splits``
    programs per selection row (0 = about one wave of the SMs): each finds its row's exact
    top-K from the scores itself (all of a row's programs in parallel, ``topk`` as in
    :class:`SelectConfig`), writes its share of the selection and attends to that share
    (``pages_per_block`` pages per step, ``num_warps`` warps, ``num_stages`` deep); the
    splits are merged by the last one to finish (``fuse_combine``) or by a combine launch.
    ``persistent``: stage 1 and stage 2 in one launch with a grid-wide barrier between
    them (only when the whole grid fits on the GPU at once; else two launches).
    """

    op: ClassVar[str] = "quest_step"
    chunk_pages: int = 64
    block_d: int = 128
    score_warps: int = 4
    score_stages: int = 1
    tiles_per_program: int = 1
    splits: int = 0
    pages_per_block: int = 4
    num_warps: int = 4
    num_stages: int = 2
    topk: str = "bisect"
    fuse_combine: bool = False
    combine_warps: int = 4
    persistent: bool = False

    def __post_init__(self):
        for name in ("fuse_combine", "persistent"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"StepConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.topk not in ("bisect", "radix"):
            raise ValueError(f"StepConfig.topk must be 'bisect' or 'radix', got {self.topk!r}")
        for name in ("chunk_pages", "block_d"):
            v = getattr(self, name)
            if not _is_pow2(v) or v < 16:
                raise ValueError(f"StepConfig.{name} must be a power of two >= 16, got {v}")
        if not _is_pow2(self.pages_per_block):
            raise ValueError(f"StepConfig.pages_per_block must be a power of two, got {self.pages_per_block}")
        if self.tiles_per_program not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"StepConfig.tiles_per_program must be one of 1,2,4,8,16,32, got {self.tiles_per_program}")
        if self.splits < 0 or self.splits > 1024:
            raise ValueError(f"StepConfig.splits must be in 0..1024 (0 = heuristic), got {self.splits}")
        for name in ("score_warps", "num_warps", "combine_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16):
                raise ValueError(f"StepConfig.{name} must be one of 1,2,4,8,16, got {getattr(self, name)}")
        for name in ("score_stages", "num_stages"):
            if not 1 <= getattr(self, name) <= 5:
                raise ValueError(f"StepConfig.{name} must be in 1..5, got {getattr(self, name)}")


CONFIG_TYPES: dict[str, Any] = {
    "metadata": MetadataConfig,
    "select": SelectConfig,
    "sparse_decode": DecodeConfig,
    "dense_decode": DecodeConfig,
    "quest_step": StepConfig,
}


def kernel_violation(op: str, config, *, page_size: int, head_dim: int) -> str | None:
    """Why ``config`` cannot run ``op``'s kernels at this page size and head dim (a hard
    constraint, not a slow choice), or None. The fields' own ranges are checked by the
    dataclasses; this is what depends on the shape: the decode and fused-step K/V tiles
    feed ``tl.dot``, which needs ``pages_per_block * page_size >= 16`` tokens."""
    want = CONFIG_TYPES.get(op)
    if want is None:
        return f"unknown op {op!r}"
    if not isinstance(config, want):
        return f"expected a {want.__name__}, got {type(config).__name__}"
    if op in ("sparse_decode", "dense_decode", "quest_step"):
        tokens = config.pages_per_block * page_size
        if tokens < 16:
            return (
                f"pages_per_block * page_size = {config.pages_per_block} x {page_size} = {tokens} tokens, "
                f"the kernel needs >= 16 (tl.dot)"
            )
    return None


# ----------------------------------------------------------------------------- heuristics


def default_metadata_config(head_dim: int) -> MetadataConfig:
    return MetadataConfig(num_warps=2 if head_dim <= 64 else 4)


def default_select_config(max_pages: int, head_dim: int) -> SelectConfig:
    # H100 exploration (reports/data/nvidia-h100-80gb-hbm3/runs/003..006): 64-page
    # tiles without a tile top-K keep many programs streaming metadata; a tile top-K
    # (larger tiles) costs more than the bigger merge it saves, except at GQA 128K.
    # Merge: its top-K over every candidate page is one CTA per row; with the prefix
    # search (runs/012) 4 warps are best up to 2048 candidates and 8 at 8192.
    chunk = max(16, min(64, next_pow2(max(1, max_pages - 1))))
    merge_warps = 4 if max_pages <= 2048 else 8
    return SelectConfig(chunk_pages=chunk, block_d=min(128, head_dim), num_warps=4, merge_warps=merge_warps)


def default_decode_config(page_size: int, head_dim: int) -> DecodeConfig:
    return DecodeConfig(pages_per_block=max(1, 64 // page_size), num_splits=0, num_warps=4, num_stages=2)


def choose_num_splits(cfg: DecodeConfig, batch: int, head_programs: int, max_slots: int, num_sms: int) -> int:
    """Splits along the page axis: the config's value, or ~2 waves of programs.

    Capped so that every split owns at least one block of ``pages_per_block`` pages.
    """
    max_useful = max(1, -(-max_slots // cfg.pages_per_block))
    if cfg.num_splits > 0:
        return min(cfg.num_splits, max_useful)
    want = -(-2 * num_sms // max(1, batch * head_programs))
    return int(max(1, min(want, max_useful, 256)))


def default_step_config(max_pages: int, head_dim: int, page_size: int = 16) -> StepConfig:
    # stage 1 as select's score stream (64-page tiles, runs/003..006 on the H100); stage 2
    # 64 tokens per inner step like the decode, its splits sized per call by choose_step_splits
    chunk = max(16, min(64, next_pow2(max(1, max_pages - 1))))
    return StepConfig(chunk_pages=chunk, block_d=min(128, head_dim), pages_per_block=max(1, 64 // page_size))


def choose_step_splits(cfg: StepConfig, batch: int, rows: int, k_pages: int, num_sms: int) -> int:
    """Stage-2 programs per selection row: the config's value, or about one wave of the
    SMs (every program also finds its row's top-K, so more waves buy little), capped so
    that every split owns at least one block of ``pages_per_block`` slots."""
    max_useful = max(1, -(-k_pages // cfg.pages_per_block))
    if cfg.splits > 0:
        return min(cfg.splits, max_useful)
    want = -(-num_sms // max(1, batch * rows))
    return int(max(1, min(want, max_useful, 256)))
