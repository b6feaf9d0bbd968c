"""The report's 'Where TTFT went' section from runs with server spans (simulated: same attributes)."""

from __future__ import annotations

import json
import re

import duckdb
import pytest
from even_trace import even_trace

from burstbench.backends.reference.simulator import simulate
from burstbench.reports.build import build_report
from burstbench.traces.schema import Trace

FIGS_RE = re.compile(r'<script type="application/json" id="bb-figures">(.*?)</script>', re.S)


def _trace(n: int, gap: float) -> Trace:
    return even_trace(n, gap, prompt=512, out=8)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("phases")
    store = d / "r.duckdb"
    for label, gap in (("spread", 1.0), ("burst", 0.0)):
        simulate(_trace(16, gap), model="llama-3.1-8b", hardware="h100-sxm", out=store, max_num_seqs=2, label=label)
    res = build_report(store, d / "r.html")
    html = (d / "r.html").read_text()
    (block,) = FIGS_RE.findall(html)
    titles = re.findall(r'<div class="figbox"><h3>(.*?)</h3>', html)
    return res, html, json.loads(block), titles, store


def test_section_lists_both_runs_and_draws_each_part(report):
    res, html, figs, titles, _ = report
    assert "phases" in res.sections and "Where TTFT went (server spans)" in html
    box = figs[titles.index("Distribution of each TTFT part, runs side by side")]
    assert [t["name"] for t in box["data"]] == ["spread", "burst"]
    assert box["data"][0]["x"] == ["client lag", "network + frontend", "server remainder", "queue", "prefill"]
    # the burst queues for the two seats, the spread-out run does not
    burst_q, spread_q = box["data"][1]["median"][3], box["data"][0]["median"][3]
    assert spread_q == 0 and burst_q > 0
    assert "TTFT from schedule by part over time — burst" in titles


def test_over_time_bars_stack_to_the_mean_ttft(report):
    _, _, figs, titles, store = report
    fig = figs[titles.index("TTFT from schedule by part over time — burst")]
    assert fig["layout"]["barmode"] == "relative"
    assert {len(t["y"]) for t in fig["data"]} == {1}  # every request of the burst in one window
    stacked = sum(t["y"][0] for t in fig["data"])
    con = duckdb.connect(str(store), read_only=True)
    mean_ttft = con.execute("SELECT avg(first_token_s - scheduled_s) * 1000 FROM requests JOIN runs USING (run_id)"
                            " WHERE label = 'burst'").fetchone()[0]
    con.close()
    assert stacked == pytest.approx(mean_ttft, rel=1e-5)
