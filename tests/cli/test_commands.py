"""The command line a new user meets: overview, version, plain help, shapes checked before work,
and the scripts that write committed data say so (--force)."""

import re
from pathlib import Path

import pytest

from questkern import __version__
from questkern.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_questkern_alone_prints_the_overview(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: questkern") and "questkern bench --check" in out and "COMMAND --help" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"questkern {__version__}"


def test_help_texts_are_plain_words(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        parsers = [p] + [c for a in p._actions if a.dest == "quality_command" for c in a.choices.values()]
        for q in parsers:
            text = q.format_help()
            assert "``" not in text and not re.search(r"\bissue \d", text), name
            assert not re.search(r"questkern\.[a-z_]+\.[a-z_]+|\w+/\w+\.py\b", text), (name, text)
            assert "(default [" not in text, name  # defaults as the user types them, not a Python list
            for a in q._actions:
                if a.option_strings and a.dest not in ("help", "version"):
                    assert a.help, (name, a.option_strings)


@pytest.mark.parametrize(
    "argv, what",
    [
        (["show-config", "--op", "select", "--seq", "32k", "--page-size", "12"], "page size must be among 8,16,32,64"),
        (["show-config", "--op", "select", "--seq", "32k", "--head-dim", "96"], "head dim must be among 32,64,128,256"),
        (["bench", "--page-size", "16,24"], "got 24"),
        (["tune", "--gpu", "cpu", "--seq", "1k", "--head-dim", "100"], "head dim must be among"),
        (["profile", "--page-size", "0"], "positive integers"),
    ],
)
def test_shapes_are_checked_before_any_work(argv, what, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and what in capsys.readouterr().err


def test_scripts_that_write_committed_data_pass_force():
    """`questkern bench --out FILE` and `questkern tune --summary FILE` refuse an existing FILE: the scripts
    that document the committed files say --force / --replace-summary."""
    for sh in sorted((ROOT / "scripts").rglob("*.sh")):
        text = sh.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if re.search(r"questkern bench\b", line) and not line.lstrip().startswith("#") and "--out" in line:
                assert "--force" in line, (sh.name, line)
            if re.search(r"questkern tune\b", line) and not line.lstrip().startswith("#") and "--summary" in line:
                assert "--replace-summary" in line, (sh.name, line)
