"""questkern command line: one module per subcommand, each with register(subparsers).

Without a CUDA device the kernels run through the Triton interpreter (see
questkern._details.select_backend), which the subcommands report.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys

# subcommand modules under questkern.cli (each defines register(subparsers))
SUBCOMMANDS = ["bench", "profile", "report", "tune", "recheck", "show_config", "quality", "generate"]

DESCRIPTION = """Quest sparse decoding for paged KV caches: Triton kernels, per-GPU tuning, benchmarks and reports.

Without a CUDA GPU the kernels run in the Triton interpreter (slow; timings mean nothing,
results are still checked). Start with `bash scripts/demo.sh`, or:

    questkern bench --check          time and check the decode step on this device
    questkern tune --gpu h100 ...    tune kernel configs for this GPU
    questkern show-config ...        which config a call would use, and why
    questkern report --name NAME     one HTML report of a GPU's measurements

Run `questkern COMMAND --help` for the options of a command."""


def describe(doc: str) -> str:
    """A module docstring as a help description: plain words, no reStructuredText markup."""
    return re.sub(r"``([^`]+)``", r"\1", doc or "").strip()


def build_parser() -> argparse.ArgumentParser:
    from questkern import __version__

    p = argparse.ArgumentParser(
        prog="questkern", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"questkern {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"questkern.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `questkern` alone: the overview, not an error
        parser.print_help()
        return 0
    args.argv = argv  # what was given (not sys.argv: main() is also called from Python)
    return int(args.func(args) or 0)


def invocation(args) -> str:
    """The command line that ran, as ``questkern ...`` (same for ``python -m questkern``)."""
    return "questkern " + shlex.join(getattr(args, "argv", sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
