"""``burstbench run`` as a user runs it: a real subprocess against a real streaming server.

The server (``burstbench.testing.stream_server``) runs in its own process and
reports what it received on ``/stats``, so the tests can check the results file
against the server's side: every request the server saw is exactly one row,
including after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pytest
from url_process import url_process

from burstbench.traces.schema import Trace, conform, write_trace

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


@contextmanager
def stream_server(*args: str) -> Iterator[str]:
    with url_process("burstbench.testing.stream_server", "--port", "0", *args) as (url, _):
        yield url


def server_stats(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        data = json.loads(resp.read())
    return data["records"] if isinstance(data, dict) else data


def write_parquet(path: Path, n: int, gap: float, out_tokens: int) -> Path:
    df = pl.DataFrame({"arrival_s": [i * gap for i in range(n)], "input_tokens": [20] * n,
                       "output_tokens": [out_tokens] * n})
    return write_trace(Trace(conform(df), {"source": "test"}), path)


def bb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def db_rows(path: Path, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_run_records_every_request_and_chunk_the_server_sent(tmp_path, capsys):
    trace = write_parquet(tmp_path / "t.parquet", 30, 0.01, 4)
    with stream_server("--ttft", "0.01", "--itl", "0.005") as url:
        proc = bb("run", "--url", url, "--trace", str(trace), "-o", str(tmp_path / "r.duckdb"), "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        records = server_stats(url)
    assert summary["completed"] == 30 and summary["failed"] == 0 and summary["status"] == "done"
    assert summary["total_output_tokens"] == 120
    assert "Serving Benchmark Result" in proc.stderr
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "schedule_lag_ms", "ttfvt_ms"):
        assert set(summary[key]) == {"mean", "median", "std", "p50", "p90", "p95", "p99", "max"}
    # the client can never see the first token sooner than the server wrote it
    assert summary["ttft_ms"]["min" if "min" in summary["ttft_ms"] else "p50"] >= 10.0
    out = tmp_path / "r.duckdb"
    assert len(records) == 30
    (n, ids, chunks) = db_rows(out, "SELECT count(*), count(DISTINCT request_id), sum(chunk_count) FROM requests")[0]
    assert (n, ids) == (30, 30)
    assert chunks == sum(len(r["write_t"]) for r in records) == 120
    (status, endpoint, scenario) = db_rows(out, "SELECT status, endpoint, scenario FROM runs")[0]
    assert status == "done" and endpoint == url
    assert json.loads(scenario)["workers"] == 1
    names = {r[0] for r in db_rows(out, "SELECT DISTINCT name FROM telemetry")}
    assert {"process_cpu_percent", "process_rss_bytes", "vllm:num_requests_running"} <= names
    # the worker loop ran in its own process, which reports its own CPU total as worker 0
    cpu = db_rows(out, "SELECT worker_id, value FROM telemetry WHERE name = 'process_cpu_seconds_total'")
    assert len(cpu) == 1 and cpu[0][0] == 0 and cpu[0][1] > 0
    # 'analyze' computes DESIGN section 4 independently (SQL views); both agree on these rows
    rc, text, _ = main_in_process(capsys, "analyze", str(out), "--json")
    assert rc == 0
    analyzed = json.loads(text)
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "schedule_lag_ms"):
        for stat in ("mean", "median", "p99", "max"):
            assert analyzed[key][stat] == pytest.approx(summary[key][stat], rel=1e-9), (key, stat)
    assert analyzed["completed"] == summary["completed"]


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_sigint_stops_sending_keeps_rows_and_marks_the_run_aborted(tmp_path, workers):
    # 200 requests, 20 per second, each streaming for ~2 s: Ctrl-C lands mid-run
    trace = write_parquet(tmp_path / "t.parquet", 200, 0.05, 40)
    out = tmp_path / "r.duckdb"
    with stream_server("--ttft", "0.01", "--itl", "0.05") as url:
        proc = subprocess.Popen([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace),
                                 "-o", str(out), "--grace", "0.3", "--quiet", "--workers", workers],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 30
            while len(server_stats(url)) < 10:  # wait for the condition: 10 requests reached the server
                assert time.monotonic() < deadline and proc.poll() is None, "run did not start sending"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        records = server_stats(url)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    status, reason = db_rows(out, "SELECT status, end_reason FROM runs")[0]
    assert status == "aborted" and "SIGINT" in reason
    rows = db_rows(out, "SELECT request_id, status, sent_s, chunk_count FROM requests ORDER BY request_id")
    # every request the server received is exactly one row; nothing unsent is a row
    assert len(rows) == len(records) < 200
    assert len({r[0] for r in rows}) == len(rows)
    statuses = {r[1] for r in rows}
    assert "cancelled" in statuses  # in flight when the 0.3 s grace ran out
    assert all(r[2] is not None for r in rows)
    n_chunks = db_rows(out, "SELECT count(*) FROM chunks")[0][0]
    assert n_chunks == sum(r[3] for r in rows) > 0


def test_a_killed_run_loses_at_most_the_last_second(tmp_path):
    trace = write_parquet(tmp_path / "t.parquet", 400, 0.025, 10)  # 10 s of requests, 0.2 s each
    out = tmp_path / "r.duckdb"
    with stream_server("--ttft", "0.01", "--itl", "0.02") as url:
        proc = subprocess.Popen([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace),
                                 "-o", str(out), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            deadline = time.monotonic() + 40
            while True:  # until >= 20 answers were fully written more than 1.5 s ago (server's clock)
                assert time.monotonic() < deadline and proc.poll() is None
                old = [r for r in server_stats(url) if r["finished"] and r["write_t"]
                       and r["write_t"][-1] < time.perf_counter() - 1.5]
                if len(old) >= 20:
                    break
                time.sleep(0.05)
            proc.kill()  # SIGKILL: no handler, no final commit
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    # perf_counter is CLOCK_MONOTONIC on Linux: the server's times compare with ours
    by_status = dict(db_rows(out, "SELECT status, count(*) FROM requests GROUP BY 1"))
    assert by_status.get("ok", 0) >= len(old), (by_status, os.listdir(tmp_path))
    assert db_rows(out, "SELECT status FROM runs")[0][0] == "running"  # how it ended is unknown, honestly


def test_second_sigint_cancels_at_once(tmp_path):
    trace = write_parquet(tmp_path / "t.parquet", 50, 0.02, 400)  # 20 s answers
    out = tmp_path / "r.duckdb"
    with stream_server("--ttft", "0.01", "--itl", "0.05") as url:
        proc = subprocess.Popen([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace),
                                 "-o", str(out), "--grace", "60", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 30
            while len(server_stats(url)) < 5:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)  # let the first signal be handled before the second (two key presses)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)  # far less than the 60 s grace
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    status, reason = db_rows(out, "SELECT status, end_reason FROM runs")[0]
    assert status == "aborted" and "twice" in reason
    statuses = [r[0] for r in db_rows(out, "SELECT status FROM requests")]
    assert statuses and set(statuses) == {"cancelled"}


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [({"status": 500}, "http_500"), ({"drop_after": 2}, "disconnect"), ({"error_after": 1}, "stream_error"),
     ({"malformed_after": 1}, "sse_malformed")],
)
async def test_failing_servers_give_error_rows_not_a_crash(tmp_path, fault, error_class):
    """The real OpenAIBackend against a real (in-process) server that misbehaves."""
    from burstbench.loadgen.runner import execute
    from burstbench.loadgen.scenario import Scenario
    from burstbench.loadgen.summary import summarize
    from burstbench.store import ResultsStore
    from burstbench.testing.stream_server import StreamServer

    trace = Trace(conform(pl.DataFrame({"arrival_s": [i * 0.01 for i in range(6)], "input_tokens": [20] * 6,
                                        "output_tokens": [5] * 6})))
    out = tmp_path / "r.duckdb"
    async with StreamServer(ttft_s=0.001, **fault) as srv:
        res = await asyncio.to_thread(execute, trace, Scenario(url=srv.url, scrape_metrics=False), out,
                                      progress=False)
        assert len(srv.records) == 6
    assert res.status == "done"
    with ResultsStore(out, read_only=True) as store:
        summary = summarize(store, res.run_id)
        rows = store.con.execute("SELECT status, error_class, error_message FROM requests").fetchall()
    assert summary["failed"] == 6 and summary["completed"] == 0
    assert len(rows) == 6 and {r[1] for r in rows} == {error_class} and all(r[2] for r in rows)


def test_rate_runs_say_which_poisson_schedule_and_never_send_before_the_deadline(tmp_path):
    trace = write_parquet(tmp_path / "t.parquet", 5, 0.1, 3)
    with stream_server("--ttft", "0.002", "--itl", "0.001") as url:
        for kind, needle in (("exact", "rescaled to exactly 200 req/s"), ("pure", "as drawn (seed 0, --poisson pure)")):
            out = tmp_path / f"{kind}.duckdb"
            args = ["--poisson", kind] if kind == "pure" else []  # exact is the default
            proc = bb("run", "--url", url, "--trace", str(trace), "-o", str(out), "--rate", "200", "--duration",
                      "0.5", "--quiet", "--json", "--no-scrape", *args)
            assert proc.returncode == 0, proc.stderr
            (notes, scenario) = db_rows(out, "SELECT notes, scenario FROM runs")[0]
            assert needle in notes and json.loads(scenario)["poisson"] == kind, notes
            rows = db_rows(out, "SELECT scheduled_s, sent_s, status FROM requests ORDER BY scheduled_s")
            assert all(st == "ok" for _, _, st in rows)
            # each send at or after its deadline, whatever event loop ran it
            assert min(sent - sched for sched, sent, _ in rows) >= 0
            if kind == "exact":
                assert len(rows) == 100 and (len(rows) - 1) / rows[-1][0] == pytest.approx(200.0, rel=1e-9)
        with urllib.request.urlopen(url + "/stats?bodies=1", timeout=5) as resp:
            bodies = [r["body"] for r in json.load(resp)["records"]]
    # bodies encoded ahead of the deadline are the bodies asked for
    assert all(b["max_tokens"] == 3 and b["stream"] is True and b["prompt"] for b in bodies)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--mode", "trace"], ["--rate", "400", "--requests", "60"],
                                  ["--concurrency", "4", "--requests", "60"]],
                         ids=["trace", "rate", "closed"])
def test_two_workers_that_finish_apart_end_done_with_exit_0(tmp_path, mode):
    # The last request (id 59, worker 1's) streams ~2 s longer than all others, so
    # worker 0 sends its whole share and exits while worker 1 still streams: a worker
    # that has finished is not a dead one (this run used to end 'aborted (a worker died)').
    # Closed loop too (issue 15's experiment A, 64 users, aborted 2 runs of 10 with
    # --workers 2: whenever one worker's users ran out of requests first).
    n = 60
    df = pl.DataFrame({"arrival_s": [i * 0.005 for i in range(n)], "input_tokens": [20] * n,
                       "output_tokens": [3] * (n - 1) + [400]})
    trace = write_trace(Trace(conform(df), {"source": "test"}), tmp_path / "t.parquet")
    out = tmp_path / "r.duckdb"
    with stream_server("--ttft", "0.005", "--itl", "0.005") as url:
        proc = bb("run", "--url", url, "--trace", str(trace), "-o", str(out), "--workers", "2", "--json",
                  "--quiet", *mode)
        records = server_stats(url)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["status"], summary["completed"], summary["failed"]) == ("done", n, 0)
    (status, reason, notes) = db_rows(out, "SELECT status, end_reason, notes FROM runs")[0]
    assert status == "done" and "died" not in reason and "died" not in notes, (reason, notes)
    assert len(records) == n
    ids = [r[0] for r in db_rows(out, "SELECT request_id FROM requests WHERE status = 'ok' ORDER BY 1")]
    assert ids == list(range(n))
    assert {r[0] for r in db_rows(out, "SELECT DISTINCT worker_id FROM requests")} == {0, 1}
    # worker 0 really was done first: the ordering the test depends on held
    ends = dict(db_rows(out, "SELECT worker_id, max(end_s) FROM requests GROUP BY 1"))
    assert ends[1] - ends[0] > 1.0


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["--url", "http://127.0.0.1:9", "--workers", "0"], "--workers must be >= 1", 2),
        (["--url", "ftp://x"], "field 'url' must start with http://", 2),
        ([], "field 'url' is required", 2),
        (["--url", "http://127.0.0.1:9", "--rate", "-3"], "field 'rate'", 2),
        (["--url", "http://127.0.0.1:9", "--duration", "5", "--warmup", "5"], "field 'warmup_s'", 2),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, capsys, args, needle, code):
    trace = write_parquet(tmp_path / "t.parquet", 3, 0.1, 2)
    rc, out, err = main_in_process(capsys, "run", "--trace", str(trace), "-o", str(tmp_path / "r.duckdb"), *args)
    assert rc == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert out == ""


def main_in_process(capsys, *argv: str) -> tuple[int, str, str]:
    """The console script's entry point, in this process (fast for error paths)."""
    from burstbench.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_nothing_listening_is_one_line_and_no_run_row(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    trace = write_parquet(tmp_path / "t.parquet", 3, 0.1, 2)
    rc, _, err = main_in_process(capsys, "run", "--url", f"http://user:pw@127.0.0.1:{port}", "--trace",
                                 str(trace), "-o", str(tmp_path / "r.duckdb"))
    assert rc == 5
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0] and "pw" not in lines[0]
    assert not (tmp_path / "r.duckdb").exists()


def test_scenario_file_with_flag_overrides(tmp_path, capsys):
    trace = write_parquet(tmp_path / "t.parquet", 10, 0.01, 3)
    sc = tmp_path / "sc.yaml"
    out = tmp_path / "r.duckdb"
    with stream_server("--ttft", "0.001") as url:
        sc.write_text(f"url: {url}\nmode: closed\nconcurrency: 2\nrequests: 6\nthink_time: 0.01\n")
        rc, text, err = main_in_process(capsys, "run", "--trace", str(trace), "-o", str(out), "--scenario", str(sc),
                                        "--requests", "4", "--json", "--quiet", "--label", "yaml")
    assert rc == 0, err
    assert json.loads(text)["completed"] == 4
    scenario, label = db_rows(out, "SELECT scenario, label FROM runs")[0]
    scenario = json.loads(scenario)
    assert (scenario["mode"], scenario["concurrency"], scenario["max_requests"], label) == ("closed", 2, 4, "yaml")
    assert scenario["think_time_s"] == 0.01


def test_missing_trace_and_bad_scenario_file(tmp_path, capsys):
    rc, _, err = main_in_process(capsys, "run", "--url", "http://127.0.0.1:9", "--trace",
                                 str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "r.duckdb"))
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "nope.parquet" in err
    sc = tmp_path / "sc.yaml"
    sc.write_text("url: http://127.0.0.1:9\nrat: 5\n")
    trace = write_parquet(tmp_path / "t.parquet", 3, 0.1, 2)
    rc, _, err = main_in_process(capsys, "run", "--trace", str(trace), "-o", str(tmp_path / "r.duckdb"),
                                 "--scenario", str(sc))
    assert rc == 3 and "field 'rat'" in err and len(err.strip().splitlines()) == 1
