"""The decode-step workload that ``questkern profile`` runs under a profiler.

    python -m questkern.profiling.workload --seq 32k --batch 1 --heads 32/32 --head-dim 128 \\
        --dtype bf16 --page-size 16 --budget 2048 --gqa-mode shared --steps 3

It is its own process (ncu and nsys launch a command line), and it does, in order:

1. fill a :class:`questkern.PagedKVCache` with random keys/values (shuffled pages),
2. ``QuestDecode.plan()`` (Quest, or dense with ``--mode dense``),
3. ``--warmup`` decode steps with NVTX switched off, so JIT compilation and the
   prefill's metadata build never match the profiler's NVTX filter,
4. ``--steps`` decode steps with NVTX on: each appends one token per sequence
   (``questkern.metadata``, unless ``--no-append``) then runs ``run(q)``
   (``questkern.select`` + ``questkern.sparse_decode``, or ``questkern.dense_decode``).

With ``--torch-trace DIR`` step 4 runs under ``torch.profiler`` with the questkern ranges
mirrored as ``record_function`` ranges: DIR gets ``trace.json`` (Chrome trace, filtered
to the questkern ranges) and ``summary.csv``. ``--meta PATH`` writes what ran (shape,
plan, device, versions) as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from questkern._details import default_device
from questkern._dtypes import short_name

WORKLOAD_VERSION = 1


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Single-valued shape flags (same syntax as ``questkern bench``) plus the run's knobs."""
    from questkern._shapes import add_shape_args

    add_shape_args(p, lists=(), defaults={"seq": "32768", "batch": "1", "heads": "32/32"})
    p.add_argument(
        "--mode",
        choices=["quest", "dense"],
        default="quest",
        help="quest: select + sparse decode; dense: the in-house dense decode (default quest)",
    )
    p.add_argument("--warmup", type=int, default=2, help="un-annotated warm-up steps (default 2)")
    p.add_argument("--steps", type=int, default=3, help="annotated, profiled steps (default 3)")
    p.add_argument(
        "--no-append",
        dest="append",
        action="store_false",
        help="do not append a token (metadata update) before each step",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def shape_dict(args) -> dict:
    """The workload's shape as plain JSON values."""
    hq, hkv = args.heads
    return {
        "seq_len": args.seq,
        "batch": args.batch,
        "q_heads": hq,
        "kv_heads": hkv,
        "head_dim": args.head_dim,
        "dtype": short_name(args.dtype),
        "page_size": args.page_size,
        "budget": args.budget if args.mode == "quest" else None,
        "gqa_mode": args.gqa_mode,
        "mode": args.mode,
        "warmup": args.warmup,
        "steps": args.steps,
        "append": args.append,
    }


def validate(args) -> None:
    for name in ("batch", "head_dim", "page_size", "budget", "steps"):
        v = getattr(args, name)
        if v <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0, got {v}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")


class ProfiledDecode:
    """A filled cache, a plan, and ``step()`` = one decode step (append + run)."""

    def __init__(self, args):
        import torch

        from questkern import PagedKVCache, QuestDecode
        from questkern.cache import prefill_chunked

        self.args = args
        self.device = default_device()
        hq, hkv = args.heads
        B, D, L = args.batch, args.head_dim, args.seq
        capacity = L + args.warmup + args.steps
        self.cache = PagedKVCache(
            B,
            capacity,
            hkv,
            D,
            page_size=args.page_size,
            dtype=args.dtype,
            device=self.device,
            shuffle=True,
            seed=args.seed,
        )
        gen = torch.Generator(device=self.device).manual_seed(args.seed)
        prefill_chunked(
            self.cache,
            [L] * B,
            lambda shape: (
                torch.randn(shape, generator=gen, device=self.device).to(args.dtype),
                torch.randn(shape, generator=gen, device=self.device).to(args.dtype),
            ),
        )
        self.q = torch.randn(B, hq, D, generator=gen, device=self.device).to(args.dtype)  # [B, Hq, D]
        self.k_new = torch.randn(B, hkv, D, generator=gen, device=self.device).to(args.dtype)  # [B, Hkv, D]
        self.v_new = torch.randn(B, hkv, D, generator=gen, device=self.device).to(args.dtype)
        budget = args.budget if args.mode == "quest" else None
        self.decode = QuestDecode(budget, gqa_mode=args.gqa_mode)
        self.plan = self.decode.plan(self.cache, num_q_heads=hq, max_seq_len=capacity)

    def step(self):
        if self.args.append:
            self.cache.append_decode(self.k_new, self.v_new)
        return self.decode.run(self.q)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()


def run_steps(w: ProfiledDecode, n: int) -> None:
    for _ in range(n):
        w.step()
    w.sync()


def device_meta() -> dict:
    """Device and software versions (same fields as the bench CSV)."""
    import platform

    import torch
    import triton

    from questkern.configs.gpus import current_gpu_key

    meta = {
        "gpu": current_gpu_key(),
        "gpu_name": "cpu (Triton interpreter)",
        "driver": "",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        meta["gpu_name"] = torch.cuda.get_device_name()
        try:
            from questkern._timing import device_info

            meta["driver"] = device_info().get("driver", "")
        except Exception as e:  # driver is informational; never fail a profile on it
            meta["driver"] = f"unknown ({e})"
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m questkern.profiling.workload", description=__doc__.splitlines()[0])
    add_workload_args(p)
    p.add_argument(
        "--torch-trace",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the steps with torch.profiler; write DIR/trace.json and DIR/summary.csv",
    )
    p.add_argument("--meta", type=Path, default=None, metavar="PATH", help="write what ran as JSON to PATH")
    args = p.parse_args(argv)
    validate(args)

    from questkern._details import select_backend

    note = select_backend()
    if note:
        print(f"NOTE: {note}", file=sys.stderr)
    from questkern import _nvtx as nvtx

    user_switch = nvtx.nvtx_switched_on()
    nvtx.set_nvtx_enabled(False)  # prefill + warm-up stay outside every NVTX filter
    w = ProfiledDecode(args)
    run_steps(w, args.warmup)
    nvtx.set_nvtx_enabled(user_switch)

    if args.torch_trace is not None:
        from questkern.profiling.torch_fallback import profile_steps

        profile_steps(
            lambda: run_steps(w, args.steps),
            args.torch_trace,
            steps=args.steps,
            cuda=w.device.type == "cuda",
            mode=args.mode,
        )
    else:
        run_steps(w, args.steps)

    if args.meta is not None:
        from questkern._io import write_json_atomic

        pl = w.plan
        meta = {
            "schema": "questkern.profile.meta",
            "version": WORKLOAD_VERSION,
            "shape": shape_dict(args),
            "plan": {
                "k_pages": pl.k_pages,
                "num_splits": pl.num_splits,
                "sources": pl.sources,
                "select_config": repr(pl.select_config),
                "decode_config": repr(pl.decode_config),
            },
            "device": device_meta(),
            "nvtx": {"switched_on": user_switch, "tool_attached": nvtx.nvtx_enabled()},
        }
        write_json_atomic(args.meta, meta, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
