"""Headless Chromium (Debian's ``chromium``) against a report file: a load check and screenshots.

:func:`check_page` opens a copy of the page with two small scripts injected — one at
the top of <head> that records JavaScript errors (uncaught exceptions, failed resource
loads, unhandled rejections, console.error), one at the end of <body> that, after load,
writes into the DOM, as JSON, the errors, every plotly div with its trace and point
counts, every resource the page fetched, and what the reader sees (the first section, the
summary's text, tables and plots, the page's text) — and reads it back with ``--dump-dom``.
No network is involved: the page is a local file and host resolution is disabled.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV_BROWSER = "QUESTKERN_CHROMIUM"
CHECK_ID = "qk-check"

_HEAD = """<script>
window.__qkErrors = [];
window.addEventListener('error', function (e) {
  if (e && e.target && e.target !== window && (e.target.src || e.target.href)) {
    window.__qkErrors.push('resource failed: ' + (e.target.src || e.target.href));
  } else {
    window.__qkErrors.push(String((e && e.message) || 'error') + ' @ ' + ((e && e.filename) || '') + ':' + ((e && e.lineno) || ''));
  }
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__qkErrors.push('unhandled rejection: ' + String(e.reason)); });
(function () { var ce = console.error; console.error = function () {
  window.__qkErrors.push('console.error: ' + Array.prototype.slice.call(arguments).join(' ')); return ce.apply(console, arguments); }; })();
</script>"""

_TAIL = (
    """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {errors: window.__qkErrors, plots: {}, resources: []};
  document.querySelectorAll('.plotly-graph-div').forEach(function (d) {
    var fd = d._fullData || [], pts = 0;
    fd.forEach(function (t) { var a = t.x || t.y || t.values || []; pts += (a.length || 0); });
    out.plots[d.id] = {drawn: !!(d._fullLayout && d.querySelector('.main-svg')), traces: fd.length, points: pts,
                       svg_traces: d.querySelectorAll('g.trace').length,
                       title: (d._fullLayout && d._fullLayout.title && d._fullLayout.title.text) || ''};
  });
  (performance.getEntriesByType('resource') || []).forEach(function (r) { out.resources.push(r.name); });
  try {
  var h2 = document.querySelector('h2[id]'), sum = document.getElementById('summary'), sumEls = [];
  for (var el = sum && sum.nextElementSibling; el && el.tagName !== 'H2'; el = el.nextElementSibling) { sumEls.push(el); }
  out.page = {first_section: h2 ? h2.id : null, text: document.body.innerText,
              summary_text: sumEls.map(function (e) { return e.innerText; }).join(' '),
              summary_tables: sumEls.reduce(function (n, e) { return n + e.querySelectorAll('table').length; }, 0),
              summary_plots: sumEls.reduce(function (a, e) {
                return a.concat(Array.prototype.map.call(e.querySelectorAll('.plotly-graph-div'), function (g) { return g.id; }));
              }, [])};
  } catch (err) { out.errors.push('check script: ' + String(err)); }
  var pre = document.createElement('pre'); pre.id = '%s'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 300); });
</script>"""
    % CHECK_ID
)


def find_chromium() -> str:
    """$QUESTKERN_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get(ENV_BROWSER)
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise FileNotFoundError(f"${ENV_BROWSER}={env!r} is not an executable file")
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        hit = shutil.which(name)
        if hit:
            return hit
    raise FileNotFoundError(
        "no Chromium found: install Debian's package (apt-get install -y chromium) "
        f"or set ${ENV_BROWSER} to a Chrome/Chromium binary"
    )


def base_flags(user_data_dir: str) -> list[str]:
    """Headless, sandbox-free (CI runs as root), no GPU, no network besides file://."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--mute-audio",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={user_data_dir}",
    ]


def _inject(page: str, head: str, tail: str) -> str:
    """``head`` right after <head ...>, ``tail`` right before the last </body>."""
    m = re.search(r"<head[^>]*>", page, re.IGNORECASE)
    j = page.rfind("</body>")
    if m is None or j < 0:
        raise ValueError("the page has no <head> or no </body>: not a report written by questkern report")
    return page[: m.end()] + head + page[m.end() : j] + tail + page[j:]


def _run(browser: str, args: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="qk-chromium-") as profile:
        cmd = [browser, *base_flags(profile), *args, url]
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def check_page(
    path: str | os.PathLike, *, browser: str | None = None, budget_ms: int = 20000, timeout: float = 180
) -> dict:
    """Load the report in headless Chromium; return {errors, plots: {id: {...}}, resources}."""
    browser = browser or find_chromium()
    page = Path(path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="qk-page-") as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(_inject(page, _HEAD, _TAIL), encoding="utf-8")
        proc = _run(browser, ["--dump-dom", f"--virtual-time-budget={budget_ms}"], probe.as_uri(), timeout)
    dom = proc.stdout
    start = dom.find(f'<pre id="{CHECK_ID}">')
    if start < 0:
        raise RuntimeError(
            f"Chromium produced no check result (exit {proc.returncode}); stderr tail:\n"
            + "\n".join(proc.stderr.strip().splitlines()[-15:])
        )
    start += len(f'<pre id="{CHECK_ID}">')
    return json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))


def screenshot_plot(
    path: str | os.PathLike,
    plot_id: str,
    png: str | os.PathLike,
    *,
    width: int = 1200,
    height: int = 560,
    browser: str | None = None,
    budget_ms: int = 15000,
    timeout: float = 180,
) -> Path:
    """PNG of one plot of the report (the page reduced to that plot), written atomically."""
    browser = browser or find_chromium()
    page = Path(path).read_text(encoding="utf-8")
    if f'id="{plot_id}"' not in page:
        raise ValueError(f"plot id {plot_id!r} is not in {path}")
    only = (
        "<script>window.addEventListener('load', function () {"
        f"var el = document.getElementById({json.dumps(plot_id)}); var box = el.closest('.plot') || el;"
        "document.body.innerHTML = ''; document.body.style.margin = '0'; document.body.style.padding = '8px';"
        "document.body.style.maxWidth = 'none'; document.body.appendChild(box);"
        "if (window.Plotly) { Plotly.Plots.resize(el); } window.scrollTo(0, 0); });</script>"
    )
    hide_toolbar = "<style>.modebar-container, .modebar { display: none !important; }</style>"
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qk-shot-") as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(_inject(page, hide_toolbar, only), encoding="utf-8")
        out = Path(tmp) / "shot.png"
        proc = _run(
            browser,
            [f"--screenshot={out}", f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}"],
            probe.as_uri(),
            timeout,
        )
        if not out.exists() or out.stat().st_size == 0:
            raise RuntimeError(
                f"Chromium wrote no screenshot (exit {proc.returncode}): "
                + " | ".join(proc.stderr.strip().splitlines()[-5:])
            )
        from questkern._io import write_bytes_atomic

        write_bytes_atomic(png, out.read_bytes())
    return png
