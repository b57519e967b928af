"""``questkern profile`` end to end: a fresh folder, the workload under ncu (or the
PyTorch profiler fallback), ``summary.csv``, ``command.txt`` and ``meta.json``.

Layout: ``profiles/<gpu-key>/<UTC timestamp>-<name>/`` holding

    profile.ncu-rep   Nsight Compute report (open with ncu-ui, or ncu --import)
    raw.csv           ncu --import ... --csv --page raw (every metric, every kernel)
    ncu.log           ncu's own output
    trace.json        torch.profiler fallback only: Chrome trace of the questkern ranges
    summary.csv       per op and kernel (format: questkern.profiling.summary)
    command.txt       the exact command lines, rerunnable by hand from the same folder
    meta.json         shape, plan, device, versions, tool and why
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from questkern._io import write_csv_atomic, write_json_atomic, write_text_atomic
from questkern.profiling.ncu import (
    diagnose_ncu,
    find_tool,
    ncu_command,
    ncu_csv_command,
    nsys_command,
    nsys_stats_command,
    profiled_ranges,
)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOOLS = ("auto", "ncu", "torch")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"--name must be 1-64 characters of letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


def workload_argv(shape: dict, *, python: str | None = None, extra: list[str] | None = None) -> list[str]:
    """``python -m questkern.profiling.workload`` with the shape as flags.

    ``shape`` keys: seq_len, batch, q_heads, kv_heads, head_dim, dtype (bf16|fp16),
    page_size, budget, gqa_mode, mode, warmup, steps, append.
    """
    argv = [
        python or sys.executable,
        "-m",
        "questkern.profiling.workload",
        "--seq",
        str(shape["seq_len"]),
        "--batch",
        str(shape["batch"]),
        "--heads",
        f"{shape['q_heads']}/{shape['kv_heads']}",
        "--head-dim",
        str(shape["head_dim"]),
        "--dtype",
        shape["dtype"],
        "--page-size",
        str(shape["page_size"]),
        "--budget",
        str(shape["budget"]),
        "--gqa-mode",
        shape["gqa_mode"],
        "--mode",
        shape["mode"],
        "--warmup",
        str(shape["warmup"]),
        "--steps",
        str(shape["steps"]),
    ]
    if not shape.get("append", True):
        argv.append("--no-append")
    return argv + list(extra or [])


def new_profile_dir(root: Path, gpu_key: str, name: str, now: _dt.datetime | None = None) -> Path:
    """Create ``root/<gpu_key>/<timestamp>-<name>/``; never reuses an existing folder."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    parent = Path(root) / gpu_key
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        d = parent / (f"{stamp}-{name}" if i == 1 else f"{stamp}-{name}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh profile folder under {parent}")


def shell_line(argv: list[str], env: dict | None = None) -> str:
    pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (pre + " " if pre else "") + shlex.join(argv)


@dataclass
class ProfileResult:
    out_dir: Path
    tool: str  # "ncu" or "torch.profiler", or "none" for a dry run
    reason: str = ""  # why the fallback was taken
    commands: dict = field(default_factory=dict)
    summary: Path | None = None


def _env_prefix() -> dict:
    """Environment a hand rerun needs (the package path, the NVTX switch)."""
    return {k: os.environ[k] for k in ("PYTHONPATH", "QUESTKERN_NVTX") if k in os.environ}


def run_profile(
    shape: dict,
    *,
    name: str,
    root: Path = Path("profiles"),
    tool: str = "auto",
    ncu: str | None = None,
    nsys: str | None = None,
    dry_run: bool = False,
    invocation: str = "",
    echo=print,
) -> ProfileResult:
    """Profile one decode-step workload; see the module docstring for what lands where."""
    import torch

    from questkern.configs.gpus import current_gpu_key

    check_name(name)
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {list(TOOLS)}, got {tool!r}")
    gpu_key = current_gpu_key()
    ncu_bin = ncu or find_tool("ncu")
    nsys_bin = nsys or find_tool("nsys") or "nsys"
    reason = ""
    use_ncu = False
    if tool in ("auto", "ncu"):
        if not torch.cuda.is_available():
            reason = "no CUDA device: Nsight Compute has no kernel to profile"
        elif ncu_bin is None:
            reason = "ncu not found on PATH nor in /usr/local/cuda*/bin or /opt/nvidia/nsight-compute"
        else:
            use_ncu = True
        if not use_ncu and tool == "ncu":
            raise RuntimeError(f"--tool ncu: {reason}")
    else:
        reason = "--tool torch"

    out = Path(root) / gpu_key / f"TIMESTAMP-{name}" if dry_run else new_profile_dir(root, gpu_key, name)
    env = _env_prefix()
    wl = workload_argv(shape, extra=["--meta", str(out / "meta.json")])
    ranges = profiled_ranges(shape["mode"], shape.get("append", True))
    cmds = {
        "ncu": ncu_command(ncu_bin or "ncu", wl, str(out / "profile"), ranges),
        "ncu_csv": ncu_csv_command(ncu_bin or "ncu", str(out / "profile.ncu-rep")),
        "nsys": nsys_command(nsys_bin, workload_argv(shape), str(out / "timeline")),  # leaves meta.json alone
        "nsys_stats": nsys_stats_command(nsys_bin, str(out / "timeline.nsys-rep")),
        "torch": workload_argv(shape, extra=["--torch-trace", str(out), "--meta", str(out / "meta.json")]),
    }
    echo(f"ncu command:  {shell_line(cmds['ncu'], env)}")
    echo(f"ncu export:   {shell_line(cmds['ncu_csv'])} > {out / 'raw.csv'}")
    echo(f"nsys command: {shell_line(cmds['nsys'], env)}")
    echo(f"nsys stats:   {shell_line(cmds['nsys_stats'])}")
    if dry_run:
        echo(f"torch.profiler fallback: {shell_line(cmds['torch'], env)}")
        return ProfileResult(out, "none", reason, cmds)

    result = ProfileResult(out, "ncu" if use_ncu else "torch.profiler", reason, cmds)
    if use_ncu:
        echo(f"profiling with Nsight Compute into {out}/ ...")
        proc = subprocess.run(cmds["ncu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        write_text_atomic(out / "ncu.log", proc.stdout)
        problem = diagnose_ncu(proc.returncode, proc.stdout)
        if problem is None and not (out / "profile.ncu-rep").exists():
            problem = "ncu wrote no report file"
        summary = None
        if problem is None:
            exp = subprocess.run(cmds["ncu_csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if exp.returncode != 0:
                problem = f"ncu --import failed ({exp.returncode}): {exp.stderr.strip()[-300:]}"
            else:
                write_text_atomic(out / "raw.csv", exp.stdout)
                try:
                    from questkern.profiling.summary import summarize_ncu

                    summary = summarize_ncu(exp.stdout, steps=shape["steps"], mode=shape["mode"])
                    if summary.attrs.get("missing_metrics"):
                        echo(f"NOTE: ncu metrics not in this report: {summary.attrs['missing_metrics']}")
                except ValueError as e:
                    problem = str(e)
        if problem is None:
            result.summary = write_csv_atomic(out / "summary.csv", summary)
        elif tool == "ncu":
            raise RuntimeError(f"{problem} (see {out / 'ncu.log'})")
        else:
            echo(f"NOTE: {problem}; falling back to the PyTorch profiler (see {out / 'ncu.log'})")
            result.tool, result.reason = "torch.profiler", problem
    if result.tool == "torch.profiler":
        if result.reason and not use_ncu:
            echo(f"NOTE: {result.reason}; using the PyTorch profiler (torch.profiler) instead of Nsight Compute")
        proc = subprocess.run(cmds["torch"], text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"the profiling workload failed with status {proc.returncode}: {shell_line(cmds['torch'])}"
            )
        result.summary = out / "summary.csv"

    lines = [
        f"# questkern profile '{name}' ({result.tool}), run from: {os.getcwd()}",
        "# Every line below is rerunnable by hand from that folder.",
        f"# this invocation:\n{invocation}" if invocation else "",
        "# Nsight Compute: collect, then export the CSV that summary.csv is built from",
        shell_line(cmds["ncu"], env),
        f"{shell_line(cmds['ncu_csv'])} > {shlex.quote(str(out / 'raw.csv'))}",
        "# Nsight Systems timeline of the same workload (not run by questkern profile)",
        shell_line(cmds["nsys"], env),
        shell_line(cmds["nsys_stats"]),
        "# PyTorch profiler (the fallback without ncu): Chrome trace + summary.csv",
        shell_line(cmds["torch"], env),
    ]
    if result.reason:
        lines.insert(1, f"# used {result.tool} because: {result.reason}")
    write_text_atomic(out / "command.txt", "\n".join(ln for ln in lines if ln) + "\n")
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"schema": "questkern.profile.meta"}
    meta.update(
        name=name,
        tool=result.tool,
        fallback_reason=result.reason,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        commands={k: shlex.join(v) for k, v in cmds.items()},
    )
    write_json_atomic(meta_path, meta, default=str)
    echo(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return result
