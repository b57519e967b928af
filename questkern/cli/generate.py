"""questkern generate: a transformers model generating with SDPA, the in-house dense paged
decode and Quest in one run — the texts and tokens/s of each.

    questkern generate --model ~/models/Llama-3.2-1B --prompt-file a.txt --prompt-file b.txt
    questkern generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt-file passkey.txt --budget 256
    questkern generate --random-config llama3-8b --prompt-tokens 32k --batch 1,4 --memory-check

--model: a local model directory or a GGUF file (offline; nothing is downloaded). One
prompt per --prompt-file (a batch of them, left-padded). --random-config: a
decoder shape of questkern bench --model (e.g. llama3-8b) with random weights and
random prompts of --prompt-tokens (no weights needed; texts are not printed).

Attentions (--attention): sdpa (transformers' caches + SDPA, the baseline),
paged (QuestCache, dense paged decode), quest (QuestCache, Quest past the first
--dense-layers). Modes (--modes): eager (a forward per token), static
(fixed buffers, the graph's step run eagerly), graph (the step in a CUDA graph; GPU).
tokens/s = sequences x decode steps / their time (the first step, which compiles and
captures, and the prefill excluded). --memory-check (GPU) compares the peak memory of
model.generate() with QuestCache and with DynamicCache (limit x(1 + 1/16 + 5%)).
Rows go to --out (CSV; default reports/data/<gpu-key>/generate.csv).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import torch

from questkern.cli import invocation
from questkern._shapes import parse_dtype, parse_ints, parse_nonnegative_int, parse_positive_int, parse_size
from questkern.cli.bench import parse_model_arg

COLUMNS = [
    "gpu",
    "gpu_name",
    "torch",
    "transformers",
    "model",
    "dtype",
    "batch",
    "prompt_tokens",
    "new_tokens",
    "attention",
    "mode",
    "budget",
    "page_size",
    "dense_layers",
    "prefill_s",
    "decode_s",
    "timed_steps",
    "tokens_per_s",
    "ms_per_step",
    "speedup_vs_sdpa",
    "same_tokens_as_sdpa",
    "peak_gib",
    "error",
    "timestamp",
    "command",
]
MEMORY_COLUMNS = [
    "gpu",
    "gpu_name",
    "torch",
    "transformers",
    "model",
    "dtype",
    "batch",
    "prompt_tokens",
    "new_tokens",
    "budget",
    "page_size",
    "dynamic_peak_gib",
    "quest_peak_gib",
    "quest_cache_gib",
    "limit_gib",
    "dynamic_total_peak_gib",
    "quest_total_peak_gib",
    "ok",
    "timestamp",
    "command",
]


def _choices(allowed):
    def parse(text: str) -> list[str]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in parts if p not in allowed]
        if not parts or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {list(allowed)}, got {text!r}")
        return parts

    return parse


def register(sub) -> None:
    from questkern.integrations.hf_bench import ATTENTIONS
    from questkern.integrations.hf_generate import MODES

    p = sub.add_parser(
        "generate",
        help="a transformers model generating with SDPA, dense paged and Quest: texts, tokens/s",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", type=Path, help="local model directory or .gguf file (offline; this or --random-config is required)"
    )
    src.add_argument(
        "--random-config",
        type=parse_model_arg,
        metavar="SHAPE",
        help="random weights of a decoder shape: llama3-8b, qwen2.5-7b, tiny or custom:... (no weights)",
    )
    p.add_argument("--prompt-file", type=Path, action="append", default=[], help="one prompt per file (with --model)")
    p.add_argument("--prompt-tokens", type=parse_size, default=None, help="random prompt length (with --random-config)")
    p.add_argument("--batch", type=parse_ints, default=[1], help="batch sizes (with --random-config), e.g. 1,4")
    p.add_argument(
        "--max-new-tokens",
        "--new-tokens",
        dest="new_tokens",
        type=parse_positive_int,
        default=64,
        help="tokens generated per prompt (default %(default)s)",
    )
    p.add_argument("--budget", type=parse_positive_int, default=2048, help="Quest token budget (default %(default)s)")
    p.add_argument(
        "--page-size", type=int, choices=(8, 16, 32, 64), default=16, help="tokens per page (default %(default)s)"
    )
    p.add_argument(
        "--dense-layers",
        type=parse_nonnegative_int,
        default=2,
        help="first N layers stay dense under Quest (default %(default)s)",
    )
    p.add_argument(
        "--gqa-mode", choices=("shared", "per_head"), default="shared", help="GQA selection mode (default %(default)s)"
    )
    p.add_argument(
        "--attention",
        type=_choices(ATTENTIONS),
        default=list(ATTENTIONS),
        help="comma-separated, from %s (default all)" % ",".join(ATTENTIONS),
    )
    p.add_argument(
        "--modes",
        type=_choices(MODES),
        default=None,
        help="comma-separated, from %s (default eager,graph on CUDA, eager elsewhere)" % ",".join(MODES),
    )
    p.add_argument(
        "--dtype",
        type=parse_dtype,
        default=None,
        help="bf16 or fp16 (default: bf16 on CUDA; on CPU --model keeps its own dtype)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument(
        "--top-k", type=parse_positive_int, default=None, help="sample from the k most likely tokens (default: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="random prompts and sampling seed (default %(default)s)")
    p.add_argument(
        "--memory-check",
        action="store_true",
        help="also compare generate()'s peak memory with QuestCache vs DynamicCache (GPU)",
    )
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV path (default: a new reports/data/<gpu-key>/generate-<UTC time>.csv)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the --out file (and its _memory.csv) if it exists (default: refuse)",
    )
    p.set_defaults(func=run)


def _write(path: Path, rows: list[dict], columns: list[str]) -> None:
    from questkern.cli.bench import _write_csv

    _write_csv(path, rows, columns)


def run(args) -> int:
    import transformers

    from questkern.integrations.hf_bench import Settings, load_local, memory_check, random_llama, run_rows
    from questkern.configs.gpus import current_gpu_key

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    modes = args.modes or (["eager", "graph"] if on_gpu else ["eager"])
    if "graph" in modes and not on_gpu:
        raise SystemExit(
            "questkern generate: --modes graph needs a CUDA device (use static to run the same step eagerly)"
        )
    if args.memory_check and not on_gpu:
        raise SystemExit("questkern generate: --memory-check measures CUDA memory; run it on a GPU")
    from questkern.cli._out import OutputExists, output_file

    try:  # before any model is loaded
        out = output_file(
            args.out,
            force=args.force,
            companions=("_memory.csv",),
            folder=Path("reports") / "data" / (current_gpu_key() if on_gpu else "cpu"),
            stem="generate",
        )
    except (ValueError, OutputExists) as e:
        raise SystemExit(f"questkern generate: error: {e}") from None
    if args.dense_layers < 0:
        raise SystemExit(f"questkern generate: --dense-layers must be >= 0, got {args.dense_layers}")
    if not args.temperature >= 0:
        raise SystemExit(f"questkern generate: --temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.random_config is not None and args.random_config.tp != 1:
        raise SystemExit(
            f"questkern generate: --random-config {args.random_config.name} is one GPU's shard of a "
            "tensor-parallel model, not a whole model; use llama3-8b, qwen2.5-7b, tiny or custom:..."
        )
    s = Settings(
        budget=args.budget,
        page_size=args.page_size,
        dense_layers=args.dense_layers,
        gqa_mode=args.gqa_mode,
        temperature=args.temperature,
        top_k=args.top_k,
    )
    torch.manual_seed(args.seed)
    tok = None
    if args.model is not None:
        if not args.prompt_file:
            raise SystemExit("questkern generate: --model needs at least one --prompt-file")
        if args.prompt_tokens is not None:
            raise SystemExit("questkern generate: --prompt-tokens goes with --random-config (prompts come from files)")
        missing = [str(f) for f in args.prompt_file if not f.is_file()]
        if missing:
            raise SystemExit(f"questkern generate: prompt file(s) not found: {', '.join(missing)}")
        dtype = args.dtype or (torch.bfloat16 if on_gpu else None)
        model, tok = load_local(args.model, dtype, device)
        texts = [f.read_text() for f in args.prompt_file]
        batches = [[tok(t)["input_ids"] for t in texts]]
        name = args.model.name
    else:
        if args.prompt_file:
            raise SystemExit("questkern generate: --prompt-file goes with --model (random prompts here)")
        n = args.prompt_tokens or (32768 if on_gpu else 64)
        dtype = args.dtype or torch.bfloat16
        model = random_llama(args.random_config, dtype, device, n + args.new_tokens)
        g = torch.Generator().manual_seed(args.seed)
        vocab = args.random_config.vocab
        batches = [[torch.randint(1, vocab, (n,), generator=g).tolist() for _ in range(b)] for b in args.batch]
        name = f"random:{args.random_config.name}"
    gpu = current_gpu_key() if on_gpu else "cpu"
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if on_gpu else "cpu"
    common = dict(
        gpu=gpu,
        gpu_name=gpu_name,
        torch=torch.__version__,
        transformers=transformers.__version__,
        model=name,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=invocation(args),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"model {name} ({common['dtype']}, {model.config.num_hidden_layers} layers) on {gpu_name}, "
        f"transformers {transformers.__version__}; attentions {','.join(args.attention)}, modes {','.join(modes)}"
    )
    rows, mem_rows = [], []
    for prompts in batches:
        print(
            f"batch {len(prompts)}, prompt tokens {max(map(len, prompts))}, new tokens {args.new_tokens}:", flush=True
        )
        got = run_rows(model, prompts, args.new_tokens, args.attention, modes, s)
        for r in got:
            toks = r.pop("_tokens")
            r.update(common)
            rows.append(r)
            if tok is not None and toks is not None and r["mode"] == modes[0]:
                for b, t in enumerate(toks.tolist()):
                    text = tok.decode(t, skip_special_tokens=True)
                    print(f"    [{r['attention']}] prompt {b}: {text!r}")
        _write(out, rows, COLUMNS)
        if args.memory_check:
            m = memory_check(model, prompts, min(args.new_tokens, 16), s)
            m.update(
                common,
                batch=len(prompts),
                prompt_tokens=max(map(len, prompts)),
                new_tokens=min(args.new_tokens, 16),
                budget=s.budget,
                page_size=s.page_size,
            )
            mem_rows.append(m)
            _write(out.with_name(out.stem + "_memory.csv"), mem_rows, MEMORY_COLUMNS)
    print(
        f"wrote {len(rows)} rows to {out}"
        + (f" and the memory check to {out.with_name(out.stem + '_memory.csv')}" if mem_rows else "")
    )
    failed = [r for r in rows if r["error"]]
    if failed:
        print(f"{len(failed)} row(s) failed: see the error column", file=sys.stderr)
    if not on_gpu:
        print("NOTE: CPU timings (float32 torch references for QuestCache) say nothing about the GPU.")
    return 1 if failed or (mem_rows and not all(m["ok"] for m in mem_rows)) else 0
