"""The README's usage snippet runs as it stands (on CPU: the Triton interpreter) and prints what it says,
and its install lines name the extras pyproject.toml defines, the way a clone installs them."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _usage_snippet() -> str:
    section = README.split("## Using it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_usage_snippet_runs_and_prints_its_comment(tmp_path):
    code = _usage_snippet()
    want = re.search(r"^print\(.*#\s*(.+)$", code, re.M).group(1).strip()
    (tmp_path / "snippet.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == want


def test_install_lines_name_real_extras_from_a_clone():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set(re.findall(r"pip install -e '\.\[(\w+)\]'", README))
    assert named == extras
    assert "pip install 'questkern[" not in README  # not on an index: the clone's path, never the name


def test_commands_in_the_docs_parse():
    """Every `questkern ...` line of the READMEs' shell blocks is a command line questkern accepts as written."""
    import shlex

    from questkern.cli import build_parser

    seen = 0
    for doc in (ROOT / "README.md", ROOT / "reports" / "README.md", ROOT / "tuning" / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("questkern "):
                    build_parser().parse_args(shlex.split(line)[1:])  # SystemExit (a test error) when it does not
                    seen += 1
    assert seen >= 2
