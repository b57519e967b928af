"""The report in headless Chromium (Debian's chromium; scripts/test.sh installs it):
no JavaScript error, nothing fetched from the network, every expected plot drawn with data."""

import struct

from report_fixtures import EXPECTED_PLOTS, OTHER_GPU

from questkern.report.browser import check_page, find_chromium, screenshot_plot


def test_report_loads_and_draws_every_plot(fixture_report):
    path, manifest = fixture_report
    assert find_chromium()
    result = check_page(path)
    assert result["errors"] == []
    assert all(r.startswith("file:") for r in result["resources"]), result["resources"]
    assert sorted(result["plots"]) == sorted(EXPECTED_PLOTS) == sorted(manifest["plots"])
    for pid, st in result["plots"].items():
        assert st["drawn"] and st["traces"] > 0 and st["points"] > 0 and st["svg_traces"] > 0, (pid, st)
        assert st["title"], pid
        assert OTHER_GPU not in st["title"] and "GPU B" not in st["title"], pid  # one GPU per report


def test_summary_is_what_the_reader_sees_first(fixture_report):
    """As rendered: the summary section is the first, holds the headline table and its figure, and the
    text of the whole page names no other GPU."""
    result = check_page(fixture_report[0])
    page = result["page"]
    assert page["first_section"] == "summary"
    assert page["summary_tables"] >= 1 and "summary-fixture-gpu-a" in page["summary_plots"]
    assert "speedup vs SDPA (×)" in page["summary_text"] and "Best case" in page["summary_text"]
    assert OTHER_GPU not in page["text"] and "GPU B" not in page["text"]


def test_check_catches_errors_and_empty_plots(fixture_report, tmp_path):
    """The check can fail: a script error and a plot div without data are reported."""
    page = fixture_report[0].read_text(encoding="utf-8")
    broken = page.replace(
        "</body>",
        '<div id="empty-plot" class="plotly-graph-div"></div><script>throw new Error("boom from test")</script></body>',
    )
    bad = tmp_path / "broken.html"
    bad.write_text(broken, encoding="utf-8")
    result = check_page(bad)
    assert any("boom from test" in e for e in result["errors"])
    assert result["plots"]["empty-plot"]["traces"] == 0 and not result["plots"]["empty-plot"]["drawn"]


def test_screenshot_of_main_plot(fixture_report, tmp_path):
    path, manifest = fixture_report
    png = screenshot_plot(path, manifest["main"], tmp_path / "main.png", width=1000, height=540)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1000, 540)
    assert len(data) > 20_000  # a drawn plot, not a blank page
