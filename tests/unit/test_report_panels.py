"""The report's panels read right: one-value metrics, renamed vLLM gauges, log ticks, star
labels and time axes of runs of very different lengths (data-level checks on the figure JSON;
the browser test checks the legend against the toolbar)."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from report_stores import add_run
from test_report_html import figures_of, titles_of

from burstbench.reports import figures as fg
from burstbench.reports import plotdata as pd
from burstbench.reports import runs as rs
from burstbench.reports.build import build_report
from burstbench.store import TELEMETRY_COLUMNS, ResultsStore

PEAK_RSS = {"long": 2.5e8, "short": 1.25e8}


def _telemetry(s: ResultsStore, run, rows_for) -> None:
    end = float(run.last.max())
    s.append_telemetry(pl.DataFrame(rows_for(run.run_id, end), schema=list(TELEMETRY_COLUMNS), orient="row",
                                    infer_schema_length=None))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A long run (~150 s) and a short one (~6 s); the server exports the KV-cache gauge
    under both vLLM names; each worker reports its peak RSS once, at the end."""
    d = tmp_path_factory.mktemp("panels")
    with ResultsStore(d / "r.duckdb") as s:
        runs = [add_run(s, label="long", n=600, rate=4, seed=1), add_run(s, label="short", n=60, rate=10, seed=2)]
        for r in runs:
            _telemetry(s, r, lambda rid, end, r=r: [
                *[(rid, float(t), "server", "vllm:kv_cache_usage_perc", (t % 50) / 50.0, None, None)
                  for t in range(int(end))],
                # each worker reports once, when it ends (two workers end 0.4 s apart)
                (rid, end - 0.4, "client", "process_max_rss_bytes", PEAK_RSS[r.label] * 0.4, '{"pid": 7}', 0),
                (rid, end, "client", "process_max_rss_bytes", PEAK_RSS[r.label] * 0.6, '{"pid": 8}', 1),
                (rid, end - 0.4, "client", "process_cpu_seconds_total", 1.5, '{"pid": 7}', 0),
                (rid, end, "client", "process_cpu_seconds_total", 2.0, '{"pid": 8}', 1),
            ])
        s.checkpoint()
    build_report(d / "r.duckdb", d / "report.html", slo="ttft=500ms,tpot=50ms")
    html = (d / "report.html").read_text(encoding="utf-8")
    return dict(zip(titles_of(html), figures_of(html), strict=True)), runs


def test_a_value_each_worker_reports_once_is_a_bar_per_run(report):
    figs, _ = report
    fig = figs["process_max_rss_bytes (client)"]
    assert {t["type"] for t in fig["data"]} == {"bar"}
    assert {t["x"][0]: t["y"][0] for t in fig["data"]} == pytest.approx(PEAK_RSS)  # summed over workers
    # a counter reported once per worker is its total, not a "rate" between two workers' totals
    assert "process_cpu_seconds_total rate (/s) (client)" not in figs
    cpu = figs["process_cpu_seconds_total (client)"]
    assert [t["y"] for t in cpu["data"]] == [[3.5], [3.5]]


def test_a_series_of_isolated_points_is_drawn_with_markers():
    fig = fg.lines("t", "x", "y", [{"name": "one", "x": [1.0], "y": [3.0]},
                                   {"name": "gappy", "x": [1, 2, 3], "y": [1.0, None, 2.0]},
                                   {"name": "line", "x": [1, 2], "y": [1.0, 2.0]}])
    assert [t["mode"] for t in fig.data] == ["lines+markers", "lines+markers", "lines"]


def test_a_renamed_vllm_gauge_is_drawn_once(report, tmp_path):
    figs, _ = report
    assert "vllm:kv_cache_usage_perc (server)" in figs
    assert not [t for t in figs if "gpu_cache_usage_perc" in t]
    # a server that only knows the old name keeps it
    with ResultsStore(tmp_path / "old.duckdb") as s:
        rid = add_run(s, label="old", n=20, rate=10, seed=3).run_id
    con = duckdb.connect(str(tmp_path / "old.duckdb"), read_only=True)
    names = [x.name for x in pd.telemetry_series(con, rid, ["server"])[0]]
    con.close()
    assert "vllm:gpu_cache_usage_perc" in names


def _axes(fig: dict) -> list[dict]:
    return [v for k, v in fig["layout"].items() if k.startswith(("xaxis", "yaxis"))]


def test_log_axes_label_every_tick_with_a_full_number(report):
    figs, _ = report
    logs = [a for f in figs.values() for a in _axes(f) if a.get("type") == "log"]
    assert logs  # CDFs and the length histogram
    for a in logs:
        assert a["tickformat"] == ",~g" and a["dtick"] in (1, "D2")


@pytest.mark.parametrize(("hi", "dtick"), [(50_000.0, 1), (400.0, "D2")])
def test_log_ticks_per_decade_only_over_wide_ranges(hi, dtick):
    fig = fg.cdf("t", "ms", [("run", [1.0, 10.0, hi], [0.0, 0.5, 1.0])])
    assert fig.layout["xaxis"]["type"] == "log" and fig.layout["xaxis"]["dtick"] == dtick


def test_stars_are_named_in_the_legend_not_by_arrows_that_can_overlap():
    marks = [{"x": 10.0, "y": 91.0, "text": "baseline: 10 req/s", "color": "#111"},
             {"x": 10.5, "y": 91.5, "text": "variant: 10.5 req/s"}]
    fig = fg.scatter_xy("t", "x", "y", [{"name": "s", "x": [1.0, 100.0], "y": [100.0, 80.0]}],
                        x_log=True, marks=marks)
    stars = [t for t in fig.data if t["marker"].get("symbol") == "star"]
    assert [t["name"] for t in stars] == ["baseline: 10 req/s", "variant: 10.5 req/s"]
    assert stars[0]["marker"]["line"]["color"] == "#111"
    assert not fig.layout.get("annotations")


def test_runs_of_very_different_length_each_span_the_time_axis(report):
    figs, runs = report
    fig = figs["Request rate: sent vs completed"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "time (% of each run)"
    for r in runs:
        (sent,) = [t for t in fig["data"] if t["name"] == f"{r.label} sent"]
        assert min(sent["x"]) >= 0 and 90 <= max(sent["x"]) < 100
        # windows sized for the run (round widths: between half and all of MIN_WINDOWS for the
        # short one), not the long run's 2 s, which would leave the short run 3 or 4 points
        assert len(sent["x"]) >= rs.MIN_WINDOWS // 2
    # telemetry shares the axis
    kv = figs["vllm:kv_cache_usage_perc (server)"]
    assert kv["layout"]["xaxis"]["title"]["text"] == "time (% of each run)"
    assert all(max(t["x"]) <= 101 for t in kv["data"])


def test_runs_of_similar_length_share_an_axis_in_seconds(tmp_path):
    with ResultsStore(tmp_path / "r.duckdb") as s:
        a = add_run(s, label="a", n=200, rate=10, seed=1, telemetry=False)
        add_run(s, label="b", n=100, rate=10, seed=2, telemetry=False)
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    axis = rs.time_axis(con, pd.runs(con, [a.run_id, "run-b-2"]))
    con.close()
    assert not axis.normalised and axis.title == "time (s)"
    assert len(set(axis.window.values())) == 1
    assert axis.x(a.run_id, [1.0, 2.5]) == [1.0, 2.5]
