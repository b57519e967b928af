"""``questkern generate`` on CPU: a local model directory (offline) and the random-config mode."""

from __future__ import annotations

import csv

import pytest
import torch

from questkern.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:questkern attention on cpu", "ignore:.*past_key_values.*deprecated")


def _local_model(d):
    """A tiny random Llama and a word-level tokenizer saved as a local model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", pad_token="w0").save_pretrained(d)


def test_local_model_dense_and_quest_in_one_run(tmp_path, capsys):
    d = tmp_path / "model"
    _local_model(d)
    files = []
    for i, n in enumerate((21, 9)):
        f = tmp_path / f"p{i}.txt"
        f.write_text(" ".join(f"w{(7 * j + i) % 90 + 3}" for j in range(n)))
        files += ["--prompt-file", str(f)]
    out = tmp_path / "gen.csv"
    rc = main(
        [
            "generate",
            "--model",
            str(d),
            *files,
            "--new-tokens",
            "4",
            "--attention",
            "sdpa,quest",
            "--budget",
            "4096",
            "--dense-layers",
            "1",
            "--modes",
            "eager,static",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["attention"], r["mode"]) for r in rows] == [
        ("sdpa", "eager"),
        ("sdpa", "static"),
        ("quest", "eager"),
        ("quest", "static"),
    ]
    for r in rows:
        assert r["error"] == "" and float(r["tokens_per_s"]) > 0 and r["batch"] == "2" and r["prompt_tokens"] == "21"
        assert float(r["same_tokens_as_sdpa"]) == 1.0  # a budget covering the context: the dense tokens
    assert text.count("[sdpa] prompt 0:") == 1 and text.count("[quest] prompt 1:") == 1
    sd = [line.split(":", 1)[1] for line in text.splitlines() if "[sdpa] prompt" in line]
    qu = [line.split(":", 1)[1] for line in text.splitlines() if "[quest] prompt" in line]
    assert sd == qu and all(s.strip() not in ("''", "") for s in sd)


def test_random_config_rows_and_errors(tmp_path, capsys):
    out = tmp_path / "r.csv"
    rc = main(
        [
            "generate",
            "--random-config",
            "tiny",
            "--prompt-tokens",
            "24",
            "--batch",
            "1,2",
            "--new-tokens",
            "3",
            "--attention",
            "paged,quest",
            "--budget",
            "16",
            "--dense-layers",
            "1",
            "--modes",
            "static",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["batch"], r["attention"]) for r in rows] == [
        ("1", "paged"),
        ("1", "quest"),
        ("2", "paged"),
        ("2", "quest"),
    ]
    assert all(r["error"] == "" and r["model"] == "random:tiny" and r["speedup_vs_sdpa"] == "" for r in rows)
    assert rows[1]["budget"] == "16" and rows[0]["budget"] == ""
    for argv, match in [
        (["--random-config", "tiny", "--modes", "graph"], "CUDA"),
        (["--random-config", "tiny", "--memory-check"], "GPU"),
        (["--model", str(tmp_path)], "prompt-file"),
        (["--random-config", "tiny", "--prompt-file", str(out)], "--model"),
        (["--random-config", "llama3-70b-tp8"], "tensor-parallel"),
        (["--random-config", "tiny", "--temperature", "-1"], "temperature"),
    ]:
        with pytest.raises(SystemExit, match=match):
            main(["generate", *argv, "--out", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit):
        main(["generate", "--random-config", "llama9", "--out", str(tmp_path / "x.csv")])
    assert "llama9" in capsys.readouterr().err


def test_out_is_checked_like_bench_before_any_model_loads(tmp_path):
    """One --out rule for bench and generate (questkern.cli._out.output_file): a directory
    or an existing file (or its _memory.csv companion) is refused, unless --force."""
    base = ["generate", "--random-config", "tiny", "--prompt-tokens", "8", "--new-tokens", "1", "--modes", "static"]
    with pytest.raises(SystemExit, match="is a directory, expected a file name"):
        main([*base, "--out", str(tmp_path)])
    out = tmp_path / "g.csv"
    (tmp_path / "g_memory.csv").write_text("kept")
    with pytest.raises(SystemExit, match="g_memory.csv exists; pass --force"):
        main([*base, "--out", str(out)])
    assert not out.exists() and (tmp_path / "g_memory.csv").read_text() == "kept"
