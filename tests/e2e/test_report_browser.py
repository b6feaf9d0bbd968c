"""The report in a real headless Chromium: every figure renders, the console stays clean,
nothing is fetched, and injected markup never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from chromium_cdp import CHROMIUM, FIGURE_COUNT_JS, RENDERED_JS, Browser
from report_stores import XSS_SVG, make_store, xss_trace

from burstbench.reports.build import build_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


async def check_report(path: Path, *, screenshot: Path | None = None) -> dict:
    """Open ``path`` in Chromium; return figure counts, console errors, URLs and __pwned."""
    async with Browser() as b:
        await b.open(path)
        expected = await b.eval(FIGURE_COUNT_JS)
        rendered = await b.wait_for(f"({RENDERED_JS}) >= {expected} ? ({RENDERED_JS}) : 0", timeout=90)
        pwned = await b.eval("typeof window.__pwned")
        # a resize makes plotly re-lay out every figure, so its event code runs too
        await b.eval("window.dispatchEvent(new Event('resize')); 1")
        if screenshot is not None:
            await b.screenshot(screenshot)
        return {
            "expected": expected,
            "rendered": rendered,
            "errors": b.console_errors(),
            "urls": b.requested_urls(),
            "pwned": pwned,
        }


def _offline(urls: list[str], path: Path) -> list[str]:
    return [u for u in urls if not (u.startswith("data:") or u == path.resolve().as_uri())]


async def test_every_figure_renders_without_console_errors(tmp_path, burstgpt_v1):
    make_store(tmp_path / "r.duckdb", n=300, sweep=True)
    res = build_report(tmp_path / "r.duckdb", tmp_path / "report.html", trace=burstgpt_v1,
                       slo="ttft=500ms,tpot=50ms")
    assert res.figures >= 20
    out = await check_report(res.path, screenshot=tmp_path / "report.png")
    assert out["expected"] == res.figures
    assert out["rendered"] == res.figures
    assert out["errors"] == []
    assert _offline(out["urls"], res.path) == []  # plotly inlined: no CDN, no fetch
    assert (tmp_path / "report.png").stat().st_size > 10_000


async def test_injected_markup_never_executes(tmp_path):
    """Payloads in run labels, model and tenant names, error messages, a server metric's
    name, and a trace's model, tenant and session ids (see report_stores)."""
    make_store(tmp_path / "r.duckdb", n=200, xss=True)
    trace = xss_trace(tmp_path / "evil.parquet")
    res = build_report(tmp_path / "r.duckdb", tmp_path / "report.html", trace=trace, slo="ttft=500ms")
    assert "trace" in res.sections
    html = res.path.read_text()
    assert XSS_SVG not in html and "&lt;/script&gt;&lt;svg onload" in html  # the metric's figure title
    out = await check_report(res.path)
    assert out["pwned"] == "undefined"
    assert out["rendered"] == out["expected"] == res.figures
    assert out["errors"] == []
    assert _offline(out["urls"], res.path) == []  # an <img src=x> would show up here


async def test_the_checker_sees_an_executed_payload(tmp_path):
    """Guard for the test above: an unescaped payload in a page IS detected."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src=x onerror="window.__pwned=2"><script>window.__pwned=1'
                    '</script><div class="fig"></div></body></html>')
    async with Browser() as b:
        await b.open(page)
        assert await b.wait_for("typeof window.__pwned !== 'undefined'", timeout=10)
        assert await b.eval(RENDERED_JS) == 0
        assert any(u.endswith("/x") for u in b.requested_urls())


async def test_twin_figures_render_and_their_strings_never_execute(tmp_path, azure_conv):
    """The twin's parts (calibration, what-if, plan) from real command outputs whose model,
    hardware and fleet names carry payloads."""
    from report_stores import make_twin_results

    files = make_twin_results(tmp_path, azure_conv, xss=True)
    res = build_report(None, tmp_path / "twin.html", twin=files)
    assert res.figures == 3
    out = await check_report(res.path)
    assert out["pwned"] == "undefined"
    assert out["rendered"] == out["expected"] == res.figures
    assert out["errors"] == []
    assert _offline(out["urls"], res.path) == []


# Every figure's legend and colour scale against its toolbar (in the page, hidden until hover,
# so its box is there to measure): names of figures where one of them meets the toolbar.
UNDER_TOOLBAR_JS = """Array.from(document.querySelectorAll('.figbox')).filter(e => {
  const mb = e.querySelector('.modebar');
  if (!mb) return false;
  const M = mb.getBoundingClientRect();
  return Array.from(e.querySelectorAll('.legend, .colorbar')).some(g => {
    const L = g.getBoundingClientRect();
    return !(L.right <= M.left || M.right <= L.left || L.bottom <= M.top || M.bottom <= L.top);
  });
}).map(e => e.querySelector('h3').textContent)"""


async def test_no_legend_or_colour_scale_runs_under_the_toolbar(tmp_path, burstgpt_v1):
    make_store(tmp_path / "r.duckdb", n=200, sweep=True)  # legends of 2 to 8 entries, up to 3 rows
    res = build_report(tmp_path / "r.duckdb", tmp_path / "report.html", trace=burstgpt_v1,
                       slo="ttft=500ms,tpot=50ms")
    async with Browser() as b:
        await b.open(res.path)
        await b.wait_for(f"({RENDERED_JS}) >= {res.figures}", timeout=90)
        legends = await b.eval("document.querySelectorAll('.figbox .legend').length")
        scales = await b.eval("document.querySelectorAll('.figbox .colorbar').length")
        covered = await b.eval(UNDER_TOOLBAR_JS)
    assert legends >= 10 and scales >= 1  # the trace's joint density has a colour scale
    assert covered == []
