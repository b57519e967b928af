"""The path checks every subcommand runs before any work (questkern.cli._paths)."""

import pytest

from questkern.cli._paths import check_input_file, check_output_dir, check_output_file, check_sqlite_url


def test_output_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_output_dir("--out", tmp_path) == tmp_path
    check_output_dir("--out", tmp_path / "new" / "deeper")  # creatable
    with pytest.raises(ValueError, match=r"--out .*/f: is a file, expected a directory"):
        check_output_dir("--out", tmp_path / "f")
    with pytest.raises(ValueError, match=r"cannot be created, .*/f is a file"):
        check_output_dir("--out", tmp_path / "f" / "x")


def test_output_file(tmp_path):
    (tmp_path / "f").write_text("x")
    check_output_file("--summary", tmp_path / "f")
    check_output_file("--summary", tmp_path / "new" / "s.json")
    with pytest.raises(ValueError, match="is a directory, expected a file name"):
        check_output_file("--summary", tmp_path)
    with pytest.raises(ValueError, match=r"cannot be created, .*/f is a file, not a directory"):
        check_output_file("--summary", tmp_path / "f" / "s.json")


def test_input_file(tmp_path):
    (tmp_path / "f").write_text("x")
    check_input_file("--apply", tmp_path / "f")
    with pytest.raises(ValueError, match="no such file"):
        check_input_file("--apply", tmp_path / "g")
    with pytest.raises(ValueError, match="is a directory, expected a file"):
        check_input_file("--apply", tmp_path)


def test_sqlite_url(tmp_path):
    import sqlite3

    db = tmp_path / "ok.db"
    sqlite3.connect(db).execute("create table t(x)").connection.close()
    for url in (
        "inmemory",
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{db}",
        f"sqlite:///{tmp_path}/new.db",
        "postgresql://u@h/db",
    ):
        check_sqlite_url("--storage", url)
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ValueError, match="is not an SQLite database"):
        check_sqlite_url("--storage", f"sqlite:///{tmp_path}/t.json")
    with pytest.raises(ValueError, match="is a directory"):
        check_sqlite_url("--storage", f"sqlite:///{tmp_path}")


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["profile", "--steps", "0"], "argument --steps: expected a positive integer"),
        (["profile", "--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
        (["quality", "demo", "--depth", "1.5"], "argument --depth: expected comma-separated depths in [0, 1]"),
        (["quality", "demo", "--page-size", "12"], "argument --page-size: page sizes must be among"),
        (["quality", "demo", "--budget", "-3"], "argument --budget: expected a positive integer"),
        (["quality", "study", "--page-sizes", "16,0"], "argument --page-sizes: expected comma-separated positive"),
        (["quality", "traces", "--texts", "0"], "argument --texts: expected a positive integer"),
        (
            ["tune", "--gpu", "cpu", "--seq", "1k", "--verify-rounds", "-2"],
            "argument --verify-rounds: expected an integer >= 0",
        ),
    ],
)
def test_other_commands_range_check_their_flags(argv, expect, capsys):
    from questkern.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and expect in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["profile", "--dry-run", "--out-dir", "{f}"], ["quality", "study", "--out-dir", "{f}"]]
)
def test_other_commands_check_their_output_dirs_first(tmp_path, argv):
    from questkern.cli import main

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        main([a.format(f=f) for a in argv])
    assert "--out-dir" in str(e.value.code) and "is a file, expected a directory" in str(e.value.code)
