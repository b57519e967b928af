"""``questkern`` command line: one module per subcommand, each with ``register(subparsers)``.

Without a CUDA device the kernels run through the Triton interpreter (see
``questkern._details.select_backend``), which the subcommands report.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# subcommand modules under questkern.cli (each defines register(subparsers))
SUBCOMMANDS = ["bench", "profile", "report", "tune", "recheck", "show_config", "quality", "generate"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="questkern", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"questkern.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what was given (not sys.argv: main() is also called from Python)
    return int(args.func(args) or 0)


def invocation(args) -> str:
    """The command line that ran, as ``questkern ...`` (same for ``python -m questkern``)."""
    return "questkern " + shlex.join(getattr(args, "argv", sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
