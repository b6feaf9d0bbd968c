"""The report file: self-contained, escaped, bounded in size, and the figures hold the right data."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from report_stores import XSS_IMG, XSS_SCRIPT, XSS_SVG, make_store

from burstbench.errors import BurstbenchError, InputError, StoreError, UsageError
from burstbench.reports.build import build_report
from burstbench.reports.figures import Figure, lines
from burstbench.reports.html import Section, json_for_script, render

FIGS_RE = re.compile(r'<script type="application/json" id="bb-figures">(.*?)</script>', re.S)


def figures_of(html: str) -> list[dict]:
    (block,) = FIGS_RE.findall(html)
    return json.loads(block)


def titles_of(html: str) -> list[str]:
    return re.findall(r'<div class="figbox"><h3>(.*?)</h3>', html)


@pytest.fixture(scope="module")
def xss_report(tmp_path_factory, burstgpt_v1):
    d = tmp_path_factory.mktemp("xss")
    runs = make_store(d / "r.duckdb", n=300, xss=True, sweep=True)
    res = build_report(d / "r.duckdb", d / "report.html", trace=burstgpt_v1, slo="ttft=500ms,tpot=50ms")
    return res, (d / "report.html").read_text(encoding="utf-8"), runs


@pytest.mark.parametrize("payload", [XSS_SCRIPT, XSS_IMG, XSS_SVG, "a\u2028b</SCRIPT>&amp;"])
def test_json_for_script_cannot_close_the_script(payload):
    text = json_for_script({"name": payload, "list": [payload]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"name": payload, "list": [payload]}


def test_render_inlines_plotly_once_and_fetches_nothing():
    fig = lines("t", "x", "y", [{"name": "a", "x": [1, 2], "y": [3, 4]}])
    html = render("title", [Section("s", "S", [fig, fig])])
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    assert html.count(js[:200]) == 1
    assert re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html, re.I) is None
    assert html.count('class="fig"') == 2 and len(figures_of(html)) == 2


def test_render_rejects_nan_only_via_cleaning():
    fig = Figure("nan", [{"type": "scatter", "x": [1.0, 2.0], "y": [float("nan"), float("inf")]}])
    html = render("t", [Section("s", "S", [fig])], plotly_js="")
    assert figures_of(html)[0]["data"][0]["y"] == [None, None]


def test_no_payload_reaches_the_page_unescaped(xss_report):
    _, html, _ = xss_report
    body = html.split("</head>", 1)[1]
    for payload in (XSS_SCRIPT, XSS_IMG, XSS_SVG):
        assert payload not in body
    # our own scripts only: the figures' JSON and the bootstrap
    assert len(re.findall(r"<script", body, re.I)) == 2
    assert "onerror=" not in body.replace("onerror=&quot;", "").replace("onerror=\\u0022", "")
    assert len(re.findall(r"<img|<svg", body, re.I)) == 0
    # plotly text is HTML-escaped too (plotly renders <b>, <a> in labels)
    names = [t.get("name", "") for f in figures_of(html) for t in f["data"]]
    assert any("&lt;script&gt;" in n for n in names)
    assert not any("<" in n for n in names)


def test_report_has_every_section_and_figure_data(xss_report):
    res, html, runs = xss_report
    assert res.sections == ["summary", "latency", "load", "client", "server", "compare", "sweep", "trace"]
    figs = figures_of(html)
    assert len(figs) == res.figures == len(titles_of(html)) == html.count('class="fig"')
    titles = titles_of(html)
    for needed in ("TTFT CDF", "TPOT CDF", "ITL (chunk) CDF", "E2EL CDF", "Request rate: sent vs completed",
                   "Requests in flight", "Output token throughput", "TTFT per window", "SLO attainment per window",
                   "Schedule lag per window", "SLO attainment against offered rate", "Arrival rate over time",
                   "Inter-arrival time CDF with fitted families", "Token length histograms",
                   "Input vs output tokens (joint density)"):
        assert needed in titles, needed
    assert any(t.startswith("QQ plot") for t in titles)
    assert any("cpu_percent" in t for t in titles) and any("vllm:num_requests_running" in t for t in titles)
    ttft = figs[titles.index("TTFT CDF")]
    assert len(ttft["data"]) == 2  # two overlaid runs; sweep steps are not overlaid
    # the SLO threshold line sits at 500 ms
    assert ttft["layout"]["shapes"][0]["x0"] == 500.0
    # request lengths: binned in DuckDB, every successful request counted once per series
    lengths = figs[titles.index("Request lengths (tokens)")]
    cand = next(r for r in runs if r.label == "candidate")
    (out_series,) = [t for t in lengths["data"] if t["name"] == "candidate output"]
    assert sum(out_series["y"][:-1]) == sum(1 for s in cand.status if s == "ok")
    # verdict badges: both PASS/FAIL rendered from analysis numbers
    assert html.count('class="badge pass"') + html.count('class="badge fail"') >= 2


def test_sweep_star_marks_highest_rate_meeting_target(xss_report):
    _, html, runs = xss_report
    titles = titles_of(html)
    fig = figures_of(html)[titles.index("SLO attainment against offered rate")]
    steps = [r for r in runs if r.label.startswith("sweep:")]
    slo_ttft, slo_tpot = 0.5, 0.05
    passing = []
    for r in steps:  # attainment recomputed here: ok and ttft <= 0.5 and tpot <= 0.05
        ttft = r.first - r.sent
        tpot = np.where(r.out_tokens > 1, (r.last - r.first) / np.maximum(r.out_tokens - 1, 1), 0.0)
        att = np.mean((ttft <= slo_ttft) & (tpot <= slo_tpot))
        if att >= 0.9:
            passing.append(float(r.label.split(":")[1]))
    star = [t for t in fig["data"] if t.get("marker", {}).get("symbol") == "star"]
    assert passing, "the hand-made sweep must have a passing step"
    assert len(star) == 1 and star[0]["x"] == [max(passing)]


def test_report_size_does_not_grow_with_requests(tmp_path):
    sizes = []
    for n in (200, 2000):
        d = tmp_path / str(n)
        d.mkdir()
        make_store(d / "r.duckdb", n=n)
        build_report(d / "r.duckdb", d / "r.html")
        html = (d / "r.html").read_text()
        sizes.append(len(FIGS_RE.findall(html)[0]))
    assert sizes[1] < 1.6 * sizes[0], sizes
    assert sizes[1] < 1_500_000


def test_run_selection_and_prefix(tmp_path):
    runs = make_store(tmp_path / "r.duckdb", n=150)
    res = build_report(tmp_path / "r.duckdb", tmp_path / "r.html", run_ids=["run-cand"])
    assert res.runs == [runs[1].run_id]
    assert "compare" not in res.sections  # one run: nothing to compare
    assert "SLO" not in "".join(titles_of((tmp_path / "r.html").read_text()))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"slo": "ttft=500"}, UsageError, "no unit"),
        ({"target": 1.5}, UsageError, "--target"),
        ({"run_ids": ["nope"]}, StoreError, "not found"),
    ],
)
def test_user_mistakes_raise_clear_errors(tmp_path, kwargs, error, words):
    make_store(tmp_path / "r.duckdb", n=50)
    with pytest.raises(error, match=words):
        build_report(tmp_path / "r.duckdb", tmp_path / "r.html", **kwargs)
    assert not (tmp_path / "r.html").exists()


def test_bad_inputs(tmp_path, burstgpt_v1):
    with pytest.raises(StoreError, match="no such results file"):
        build_report(tmp_path / "missing.duckdb", tmp_path / "r.html")
    (tmp_path / "junk.duckdb").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        build_report(tmp_path / "junk.duckdb", tmp_path / "r.html")
    from burstbench.store import ResultsStore

    ResultsStore(tmp_path / "empty.duckdb").close()
    with pytest.raises(StoreError, match="no runs"):
        build_report(tmp_path / "empty.duckdb", tmp_path / "r.html")
    make_store(tmp_path / "ok.duckdb", n=30)
    with pytest.raises(UsageError, match="HTML"):
        build_report(tmp_path / "ok.duckdb", tmp_path / "r.pdf")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(InputError):
        build_report(tmp_path / "ok.duckdb", tmp_path / "r.html", trace=tmp_path / "empty.parquet")
    assert not (tmp_path / "r.html").exists()


def test_cli_json_and_errors(tmp_path):
    make_store(tmp_path / "r.duckdb", n=80)
    out = tmp_path / "rep.html"
    cmd = [sys.executable, "-m", "burstbench", "report", str(tmp_path / "r.duckdb"), "-o", str(out),
           "--slo", "ttft=300ms", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["path"] == str(out) and info["bytes"] == out.stat().st_size and info["figures"] > 10
    assert "wrote" in p.stderr
    bad = subprocess.run([*cmd[:-3], "--slo", "ttft=fast"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == UsageError.exit_code and "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert issubclass(UsageError, BurstbenchError)


def test_degenerate_runs_still_make_a_report(tmp_path):
    """An aborted run with no requests, a run where every request failed, a run without chunks."""
    from report_stores import add_run

    from burstbench.store import ResultsStore, RunInfo

    with ResultsStore(tmp_path / "r.duckdb") as s:
        rid = s.create_run(RunInfo(backend="openai", label="empty"))
        s.finish_run(rid, status="aborted", end_reason="SIGINT", duration_s=0.0)
        add_run(s, label="allfail", n=30, rate=10, seed=5, fail_every=1, telemetry=False, chunks=False)
        add_run(s, label="nochunks", n=30, rate=10, seed=6, telemetry=False, chunks=False)
    res = build_report(tmp_path / "r.duckdb", tmp_path / "r.html", slo="ttft=100ms")
    html = (tmp_path / "r.html").read_text()
    assert len(res.runs) == 3
    assert "no requests" in html  # the empty run gets no verdict, not a fake PASS
    assert html.count('class="badge fail"') >= 2  # all-failed run: attainment 0 fails
    assert "No client telemetry recorded" in html
    titles = titles_of(html)
    itl = figures_of(html)[titles.index("ITL (chunk) CDF")] if "ITL (chunk) CDF" in titles else None
    assert itl is None  # no run recorded chunks: a note instead of an empty figure
    assert "ITL (chunk): no samples" in html


def test_sweep_from_analysis_sweep_is_starred_where_the_sweep_says(tmp_path):
    """A real sweep (analysis.sweep with its queue driver writing real rows): the report's star
    sits at the max goodput rate the sweep itself reports."""
    from burstbench.analysis.slo import parse_slo
    from burstbench.analysis.sweep import QueueDriver, sweep_values

    out = tmp_path / "sweep.duckdb"
    slo = parse_slo("ttft=300ms")
    res = sweep_values(QueueDriver(out, requests=150), out, [10.0, 40.0, 70.0, 100.0], slo=slo, target=0.9)
    assert res.max_goodput_rate is not None and res.max_goodput_rate < 100.0  # the sweep crosses the target
    rep = build_report(out, tmp_path / "r.html", slo="ttft=300ms")
    assert rep.sweep_steps == 4 and rep.runs == [] and "sweep" in rep.sections
    html = (tmp_path / "r.html").read_text()
    titles = titles_of(html)
    fig = figures_of(html)[titles.index("SLO attainment against offered rate")]
    (star,) = [t for t in fig["data"] if t.get("marker", {}).get("symbol") == "star"]
    assert star["x"] == [res.max_goodput_rate]
    assert star["y"][0] == pytest.approx(res.attainment_at_max * 100)


def test_report_does_not_star_a_sweep_step_the_server_never_kept_up_with(tmp_path):
    """256 req/s offered to a queue serving 80 req/s: every request meets the loose SLO, but
    the step finished far slower than offered; the report, like the sweep, does not count it."""
    from burstbench.analysis.slo import parse_slo
    from burstbench.analysis.sweep import QueueDriver, sweep_values

    out = tmp_path / "sweep.duckdb"
    res = sweep_values(QueueDriver(out, requests=629), out, [20.0, 256.0], slo=parse_slo("ttft=60s"), target=0.9)
    assert [s.slo_attainment for s in res.steps] == [1.0, 1.0] and res.max_goodput_rate == 20.0
    build_report(out, tmp_path / "r.html", slo="ttft=60s")
    html = (tmp_path / "r.html").read_text()
    fig = figures_of(html)[titles_of(html).index("SLO attainment against offered rate")]
    (star,) = [t for t in fig["data"] if t.get("marker", {}).get("symbol") == "star"]
    assert star["x"] == [20.0]
    assert html.count('class="badge fail">SHORT<') == 1
    assert "step 256 req/s: the server finished requests at" in html and "--duration" in html


@pytest.mark.parametrize(("xs", "axis"), [([1.0, 10.0, 1000.0], "log"), ([100.0, 150.0, 200.0], "linear")])
def test_cdf_threshold_label_lands_on_the_line(xs, axis):
    from burstbench.reports.figures import cdf

    fig = cdf("t", "ms", [("run", xs, [0.0, 0.5, 1.0])], threshold=120.0)
    assert fig.layout["xaxis"]["type"] == axis
    assert fig.layout["shapes"][0]["x0"] == 120.0  # shapes: data units on any axis
    expected = np.log10(120.0) if axis == "log" else 120.0  # annotations: log10 units on log axes
    assert fig.layout["annotations"][0]["x"] == pytest.approx(expected)


def test_unwritable_output_is_a_usage_error(tmp_path):
    make_store(tmp_path / "r.duckdb", n=30)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot write there"):
        build_report(tmp_path / "r.duckdb", tmp_path / "file" / "r.html")
