"""Faults, one at a time and mixed, against real servers on 127.0.0.1.

For every fault the run must complete (status 'done'), every scheduled request
must be exactly one row with the status and error class the fault implies, the
metrics must leave failures out of latency percentiles and count them as misses in
SLO attainment (DESIGN section 4), and the report must show the failures: a
"failed" series in the request-rate figure and the failure classes table.

The purpose-made server is ``StreamServer`` (every k-th request faulty, so faults
mix with good answers); the reference engine is ``burstbench serve`` with its
seeded fault injection, in its own process. Expected values come from the
server's settings and from the raw rows (percentiles recomputed with numpy), never
from the code under test.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from live_server import live_server
from url_process import url_process

from burstbench.analysis.metrics import summarize
from burstbench.loadgen.runner import BackendFactory, execute
from burstbench.loadgen.scenario import Scenario
from burstbench.reports.build import build_report
from burstbench.traces.schema import Trace, conform

N = 12


def _trace(n: int = N, gap: float = 0.01, out_tokens: int = 4) -> Trace:
    df = pl.DataFrame({"arrival_s": [i * gap for i in range(n)], "input_tokens": [16] * n,
                       "output_tokens": [out_tokens] * n})
    return Trace(conform(df), {"source": "test"})


def _rows(path: Path, run_id: str) -> pl.DataFrame:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute("SELECT request_id, status, error_class, http_status, sent_s, first_token_s, end_s,"
                          " error_message FROM requests WHERE run_id = ? ORDER BY request_id", [run_id])
        names = [d[0] for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row")
    finally:
        con.close()


def _run_status(path: Path, run_id: str) -> tuple[str, str, list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        status, reason, notes = con.execute("SELECT status, end_reason, notes FROM runs WHERE run_id = ?",
                                            [run_id]).fetchone()
    finally:
        con.close()
    return status, reason, json.loads(notes or "[]")


def check_accounting_and_metrics(path: Path, run_id: str, n: int) -> pl.DataFrame:
    """Run done, ids 0..n-1 once each, percentiles over ok only, attainment counts failures."""
    status, reason, _ = _run_status(path, run_id)
    assert status == "done", reason
    rows = _rows(path, run_id)
    assert rows["request_id"].to_list() == list(range(n))
    ok = rows.filter(pl.col("status") == "ok")
    bad = rows.filter(pl.col("status") != "ok")
    assert bad["error_class"].null_count() == 0, "every failure names its class"
    s = summarize(path, run_id, slo="ttft=60s")
    assert s["requests"] == n and s["completed"] == ok.height and s["failed"] == bad.height
    if ok.height:
        ttft = (ok["first_token_s"] - ok["sent_s"]).to_numpy() * 1e3
        assert s["ttft_ms"]["p50"] == pytest.approx(float(np.percentile(ttft, 50)), abs=1e-6)
        assert s["ttft_ms"]["p99"] == pytest.approx(float(np.percentile(ttft, 99)), abs=1e-6)
        assert s["ttft_ms"]["max"] == pytest.approx(float(ttft.max()), abs=1e-6)
    else:
        assert s["ttft_ms"]["p50"] is None
    # a lenient SLO every success meets: attainment = successes / all requests sent
    assert s["goodput"]["slo_attainment"] == pytest.approx(ok.height / n)
    return rows


def check_report_shows_failures(path: Path, tmp_path: Path, classes: set[str]) -> None:
    """The failures table names each class; the rate figure has a 'failed' series that sums to the failures."""
    build_report(path, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "<h3>Failures</h3>" in html
    for cls in classes:
        assert f"<td>{cls}</td>" in html
    con = duckdb.connect(str(path), read_only=True)
    try:
        run_id, n_failed = con.execute("SELECT r.run_id, count(*) FILTER (WHERE q.status <> 'ok') FROM runs r"
                                       " JOIN requests q USING (run_id) GROUP BY 1").fetchone()
    finally:
        con.close()
    m = re.search(r'"name":"' + re.escape(run_id) + r' failed","x":(\[[^\]]*\]),"y":(\[[^\]]*\])', html)
    assert m, "no failures-over-time series in the report"
    x, y = json.loads(m.group(1)), [v or 0.0 for v in json.loads(m.group(2))]
    width = x[1] - x[0] if len(x) > 1 else None
    assert sum(y) > 0
    if width:  # rates per window times the window width = failed requests
        assert sum(y) * width == pytest.approx(n_failed, rel=1e-6)


def _run(srv_url: str, tmp_path: Path, trace: Trace | None = None, **scenario) -> tuple[Path, str]:
    out = tmp_path / "r.duckdb"
    sc = Scenario(url=srv_url, scrape_metrics=False, **scenario)
    res = execute(trace or _trace(), sc, out, progress=False)
    return out, res.run_id


FAULTS = [
    # (server settings, expected (status, error_class) of the faulty requests)
    pytest.param({"status": 429, "retry_after": "1"}, ("error", "http_429"), id="429-retry-after"),
    pytest.param({"status": 429}, ("error", "http_429"), id="429"),
    pytest.param({"status": 500}, ("error", "http_500"), id="500"),
    pytest.param({"status": 503, "retry_after": "2"}, ("error", "http_503"), id="503-retry-after"),
    pytest.param({"status": 503}, ("error", "http_503"), id="503"),
    pytest.param({"drop_after": 2}, ("error", "disconnect"), id="reset-mid-stream"),
    pytest.param({"stall_after": 1, "stall_max_s": 3.0}, ("timeout", "stall"), id="stall"),
    pytest.param({"malformed_after": 1}, ("error", "sse_malformed"), id="malformed-sse"),
    pytest.param({"end_after": 2}, ("error", "truncated"), id="truncated-sse"),
    pytest.param({"error_after": 1}, ("error", "stream_error"), id="in-stream-error"),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
def test_one_fault_every_third_request(tmp_path, fault, expected):
    with live_server(ttft_s=0.005, itl_s=0.002, fault_every=3, **fault) as srv:
        out, run_id = _run(srv.url, tmp_path, stall_timeout_s=0.4)
        seen = len(srv.records())
    assert seen == N
    rows = check_accounting_and_metrics(out, run_id, N)
    bad = rows.filter(pl.col("status") != "ok")
    assert bad.height == N // 3, "exactly the faulty requests failed"
    assert set(zip(bad["status"], bad["error_class"], strict=True)) == {expected}
    if expected[1].startswith("http_"):
        assert set(bad["http_status"]) == {int(expected[1][5:])}
        # Retry-After is kept in the message when the server sent one, and only then
        hint = [("Retry-After" in m) for m in bad["error_message"]]
        if "retry_after" in fault:
            assert all(f"Retry-After: {fault['retry_after']}" in m for m in bad["error_message"])
        else:
            assert not any(hint)
    check_report_shows_failures(out, tmp_path, {expected[1]})


def test_slow_first_byte_is_slow_not_failed(tmp_path):
    with live_server(ttft_s=0.005, itl_s=0.002, fault_every=3, first_byte_delay_s=0.25) as srv:
        out, run_id = _run(srv.url, tmp_path)
    rows = check_accounting_and_metrics(out, run_id, N)
    assert set(rows["status"]) == {"ok"}
    ttft = (rows["first_token_s"] - rows["sent_s"]).to_numpy()
    assert (ttft >= 0.25).sum() == N // 3
    assert (ttft < 0.25).sum() == N - N // 3


def test_slow_first_byte_beyond_the_timeout_is_a_timeout(tmp_path):
    with live_server(ttft_s=0.005, itl_s=0.002, fault_every=3, first_byte_delay_s=3.0) as srv:
        out, run_id = _run(srv.url, tmp_path, timeout_s=0.5)
    rows = check_accounting_and_metrics(out, run_id, N)
    bad = rows.filter(pl.col("status") != "ok")
    assert bad.height == N // 3 and set(bad["status"]) == {"timeout"}


def test_missing_done_is_tolerated(tmp_path):
    with live_server(ttft_s=0.005, itl_s=0.002, omit_done=True) as srv:
        out, run_id = _run(srv.url, tmp_path)
    rows = check_accounting_and_metrics(out, run_id, N)
    assert set(rows["status"]) == {"ok"}


def test_connection_refused_every_request_is_an_error_row(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "r.duckdb"
    sc = Scenario(url=url, scrape_metrics=False)
    # skip the pre-flight check (it would refuse to start): the refusal happens per request
    res = execute(_trace(), sc, out, progress=False, backend_factory=BackendFactory(sc))
    rows = check_accounting_and_metrics(out, res.run_id, N)
    assert set(zip(rows["status"], rows["error_class"], strict=True)) == {("error", "connect")}
    check_report_shows_failures(out, tmp_path, {"connect"})


def test_mixed_faults_at_once(tmp_path):
    """Stall, errors and drops on different requests of one run (k-th request rule per fault kind).

    StreamServer applies all fault settings to the same requests, so mixing is done by
    changing the server's settings while the run goes: each third of the schedule meets
    a different fault.
    """
    from dataclasses import replace

    n = 36
    trace = _trace(n, gap=0.03)
    phases = [{"status": 503, "retry_after": "1"}, {"drop_after": 1}, {"error_after": 2}]
    with live_server(ttft_s=0.005, itl_s=0.002, fault_every=2, **phases[0]) as srv:
        base = srv.server.settings.faults_off()

        def switch() -> None:
            for k, fault in enumerate(phases[1:], start=1):
                deadline = time.monotonic() + 30
                while len(srv.records()) < k * n // 3 and time.monotonic() < deadline:
                    time.sleep(0.005)
                srv.server.settings = replace(base, fault_every=2, **fault)

        t = threading.Thread(target=switch, daemon=True)
        t.start()
        out, run_id = _run(srv.url, tmp_path, trace=trace)
        t.join(5)
    rows = check_accounting_and_metrics(out, run_id, n)
    classes = set(rows.filter(pl.col("status") != "ok")["error_class"])
    assert classes == {"http_503", "disconnect", "stream_error"}
    assert rows.filter(pl.col("status") != "ok").height == n // 2
    check_report_shows_failures(out, tmp_path, classes)


def test_server_restarts_during_the_run(tmp_path):
    """Stop the server mid-run, start a new one on the same port: refusals in between, then ok."""
    n = 40
    trace = _trace(n, gap=0.025)
    with live_server(ttft_s=0.005, itl_s=0.002) as srv:
        marks: dict[str, float] = {}

        def restart() -> None:
            deadline = time.monotonic() + 30
            while len(srv.records()) < 10 and time.monotonic() < deadline:
                time.sleep(0.005)
            srv.stop()
            marks["down"] = time.monotonic()
            time.sleep(0.2)  # the outage: ~8 scheduled requests meet a closed port
            srv.start()
            marks["up"] = time.monotonic()

        t = threading.Thread(target=restart, daemon=True)
        t.start()
        out, run_id = _run(srv.url, tmp_path, trace=trace)
        t.join(5)
        served = len(srv.records())
    rows = check_accounting_and_metrics(out, run_id, n)
    bad = rows.filter(pl.col("status") != "ok")
    assert bad.height > 0, "requests during the outage failed"
    # refused while down; streams open at the stop are cut (reset) or closed early (truncated)
    assert set(bad["error_class"]) <= {"connect", "disconnect", "truncated"}
    assert "connect" in set(bad["error_class"])
    assert served == rows.filter(pl.col("status") == "ok").height + bad.filter(
        pl.col("error_class") != "connect").height
    # the requests sent after the restart succeeded again
    last = rows.sort("sent_s").tail(5)
    assert set(last["status"]) == {"ok"}
    check_report_shows_failures(out, tmp_path, set(bad["error_class"]))


@pytest.fixture
def fault_engine():
    """``burstbench serve`` with seeded mixed faults, in its own process."""
    with url_process("burstbench", "serve", "--port", "0", "--time-scale", "50",
                     "--fault-error-rate", "0.15", "--fault-error-codes", "429,500,503", "--fault-disconnect-rate", "0.1",
                     "--fault-malformed-rate", "0.1", "--fault-stream-error-rate", "0.1", "--fault-stall-rate", "0.1",
                     "--fault-stall-s", "3", "--fault-slow-first-byte-rate", "0.1", "--fault-slow-first-byte-s", "0.2",
                     "--fault-seed", "7") as (url, _):
        yield url


def test_reference_engine_fault_injection_mixed(fault_engine, tmp_path):
    n = 60
    trace = _trace(n, gap=0.01, out_tokens=8)
    out, run_id = _run(fault_engine, tmp_path, trace=trace, stall_timeout_s=1.0)
    rows = check_accounting_and_metrics(out, run_id, n)
    bad = rows.filter(pl.col("status") != "ok")
    allowed = {"http_429", "http_500", "http_503", "disconnect", "sse_malformed", "stream_error", "stall",
               "truncated"}
    classes = set(bad["error_class"])
    assert classes <= allowed, classes - allowed
    assert len(classes) >= 3, f"a mix of faults expected, got {classes}"
    assert 0 < rows.filter(pl.col("status") == "ok").height < n
    # 429/503 from the engine carry Retry-After; the rows keep the HTTP status
    http = bad.filter(pl.col("error_class").str.starts_with("http_"))
    assert (http["http_status"].cast(pl.String) == http["error_class"].str.slice(5)).all()
    check_report_shows_failures(out, tmp_path, classes)
