"""Shared fixture of the report tests: the example report built from the committed data."""

import pytest
from report_fixtures import DATA, PROFILES


@pytest.fixture(scope="session")
def fixture_report(tmp_path_factory):
    """The example report built from the committed fixtures through the CLI: (html path, manifest)."""
    from questkern.cli import main
    from questkern.report import read_manifest

    out = tmp_path_factory.mktemp("report")
    rc = main(
        [
            "report",
            "--name",
            "example",
            "--data",
            str(DATA),
            "--profiles",
            str(PROFILES),
            "--no-tuning",
            "--out-dir",
            str(out),
            "--gpu",
            "fixture-gpu-a",
        ]
    )
    assert rc == 0
    path = out / "example.html"
    return path, read_manifest(path.read_text(encoding="utf-8"))
