"""The runner end to end against an in-test Backend (a real object obeying the protocol).

The backend takes its times from the clock the runner injects and remembers
every Outcome it returned, so the tests can check that the results file holds
exactly those times, each sent request exactly once, and metrics that match
DESIGN section 4 on hand-made cases. Servers on the wire are covered by
``test_run_cli.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from array import array

import duckdb
import numpy as np
import polars as pl
import pytest

from burstbench.backends.base import Outcome
from burstbench.loadgen.runner import RunControl, execute, run_scenario
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.summary import summarize
from burstbench.store import ResultsStore
from burstbench.traces.schema import Trace, conform

URL = "http://127.0.0.1:9"


class ClockedBackend:
    """Streams ``n`` chunks per request (n = output_tokens) using the injected clock.

    ``hang_from``: requests with id >= this wait forever (until cancelled).
    """

    name = "clocked"

    def __init__(self, ttft_s: float = 0.005, itl_s: float = 0.002, hang_from: int | None = None,
                 fail_ids: tuple[int, ...] = ()) -> None:
        self.ttft_s, self.itl_s, self.hang_from, self.fail_ids = ttft_s, itl_s, hang_from, fail_ids
        self.log: dict[int, Outcome] = {}
        self.calls: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self.hanging = threading.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, req, clock):
        self.calls.append(req.request_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            sent = clock()
            if self.hang_from is not None and req.request_id >= self.hang_from:
                self.hanging.set()
                await asyncio.Event().wait()
            if req.request_id in self.fail_ids:
                out = Outcome(request_id=req.request_id, sent_s=sent, status="error", http_status=500,
                              error_class="http_500", error_message="boom", end_s=clock())
                self.log[req.request_id] = out
                return out
            await asyncio.sleep(self.ttft_s)
            ts = array("d")
            n = req.output_tokens or 1
            for k in range(n):
                if k:
                    await asyncio.sleep(self.itl_s)
                ts.append(clock())
            out = Outcome(request_id=req.request_id, sent_s=sent, first_token_s=ts[0], first_visible_s=ts[0],
                          last_token_s=ts[-1], end_s=clock(), chunk_t=ts, chunk_tokens=array("i", [1] * n),
                          chunk_reasoning=array("b", [0] * n), output_tokens_server=n,
                          input_tokens_server=req.input_tokens)
            self.log[req.request_id] = out
            return out
        finally:
            self.in_flight -= 1


class ScriptedBackend:
    """Hand-made chunk offsets per request id (seconds after sent); None = HTTP 500."""

    name = "scripted"
    SCRIPT = {
        0: ([0.100, 0.150, 0.250], 5),
        1: ([0.200, 0.260], 2),
        2: ([0.300], 1),
        3: None,
    }

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, req, clock):
        sent = clock()
        spec = self.SCRIPT[req.request_id]
        if spec is None:
            return Outcome(request_id=req.request_id, sent_s=sent, status="error", http_status=500,
                           error_class="http_500", end_s=sent + 0.01)
        offsets, tokens = spec
        ts = array("d", [sent + o for o in offsets])
        return Outcome(request_id=req.request_id, sent_s=sent, first_token_s=ts[0], first_visible_s=ts[0],
                       last_token_s=ts[-1], end_s=ts[-1] + 0.001, chunk_t=ts,
                       chunk_tokens=array("i", [-1] * len(ts)), chunk_reasoning=array("b", [0] * len(ts)),
                       output_tokens_server=tokens)


def make_clocked() -> ClockedBackend:  # top level: picklable for worker processes
    return ClockedBackend()


def trace_of(n: int, gap: float, out_tokens: int = 3, sessions=None) -> Trace:
    data = {"arrival_s": [i * gap for i in range(n)], "input_tokens": [8 + i for i in range(n)],
            "output_tokens": [out_tokens] * n}
    if sessions is not None:
        data["session_id"] = sessions
        data["turn"] = list(range(n))
    return Trace(conform(pl.DataFrame(data)))


def rows(path, run_id, table="requests"):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY ALL", params=[run_id]).pl()
    finally:
        con.close()


def sc(**kw) -> Scenario:
    kw.setdefault("scrape_metrics", False)
    return Scenario(url=URL, **kw)


def test_recorded_times_are_exactly_the_backends_clock(tmp_path):
    backend = ClockedBackend()
    res = execute(trace_of(40, 0.01), sc(), tmp_path / "r.duckdb", backend_factory=lambda: backend, progress=False)
    assert res.status == "done" and res.end_reason == "schedule completed"
    req = rows(tmp_path / "r.duckdb", res.run_id)
    assert req.height == 40 and sorted(req["request_id"].to_list()) == list(range(40))
    for r in req.iter_rows(named=True):
        out = backend.log[r["request_id"]]
        assert (r["sent_s"], r["first_token_s"], r["last_token_s"], r["end_s"]) == (
            out.sent_s, out.first_token_s, out.last_token_s, out.end_s)
        assert r["chunk_count"] == 3 and r["phase"] == "measure" and r["status"] == "ok"
        assert r["scheduled_s"] == pytest.approx(r["request_id"] * 0.01)
        assert r["input_tokens"] == 8 + r["request_id"] and r["output_tokens_target"] == 3
    ch = rows(tmp_path / "r.duckdb", res.run_id, "chunks")
    assert ch.height == 120
    for rid, grp in ch.group_by("request_id"):
        g = grp.sort("seq")
        assert g["seq"].to_list() == [0, 1, 2]
        assert g["t_s"].to_list() == list(backend.log[rid[0]].chunk_t)
    # open loop against absolute deadlines: no request is sent before its time
    lag = (req["sent_s"] - req["scheduled_s"]).to_numpy()
    assert lag.min() >= 0


def test_metrics_from_recorded_rows_match_design_definitions(tmp_path):
    res = execute(trace_of(4, 0.01), sc(), tmp_path / "r.duckdb", backend_factory=ScriptedBackend,
                  progress=False)
    with ResultsStore(tmp_path / "r.duckdb", read_only=True) as store:
        s = summarize(store, res.run_id)
    assert (s["completed"], s["failed"]) == (3, 1)
    # TTFT: 100, 200, 300 ms
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0) and s["ttft_ms"]["max"] == pytest.approx(300.0)
    # E2EL to the last token chunk: 250, 260, 300
    assert s["e2el_ms"]["median"] == pytest.approx(260.0)
    # TPOT with the -1: (250-100)/4 = 37.5 and (260-200)/1 = 60; the 1-token request is excluded
    assert s["tpot_ms"]["mean"] == pytest.approx(48.75) and s["tpot_ms"]["max"] == pytest.approx(60.0)
    # chunk ITL pooled: 50, 100, 60 -> linear p99 = 60 + 0.98 * 40
    assert s["itl_ms"]["median"] == pytest.approx(60.0) and s["itl_ms"]["p99"] == pytest.approx(99.2)
    assert s["total_output_tokens"] == 8


def test_stopping_keeps_rows_marks_cancelled_and_never_records_unsent(tmp_path):
    backend = ClockedBackend(hang_from=5)
    control = RunControl()
    threading.Thread(target=lambda: (backend.hanging.wait(10), control.stop()), daemon=True).start()
    res = execute(trace_of(200, 0.01), sc(grace_s=0.2), tmp_path / "r.duckdb",
                  backend_factory=lambda: backend, control=control, progress=False)
    assert res.status == "aborted" and res.end_reason == "stopped by caller"
    req = rows(tmp_path / "r.duckdb", res.run_id)
    # every sent request exactly once; nothing that was never sent
    assert sorted(req["request_id"].to_list()) == sorted(backend.calls)
    assert 5 < req.height < 200
    st = dict(zip(req["request_id"].to_list(), req["status"].to_list(), strict=True))
    assert all(st[i] == "ok" for i in range(5))
    assert all(st[i] == "cancelled" for i in backend.calls if i >= 5)
    canc = req.filter(pl.col("status") == "cancelled")
    assert canc["sent_s"].null_count() == 0 and (canc["end_s"] >= canc["sent_s"]).all()
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs WHERE run_id = ?", [res.run_id]).fetchone()[0] == "aborted"


def test_ctrl_c_in_run_scenario_closes_the_run_then_reaches_the_caller(tmp_path):
    backend = ClockedBackend(hang_from=3)

    def press_ctrl_c() -> None:  # once requests hang, the run's own handler is installed
        if backend.hanging.wait(20):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt, match="rows kept"):
        run_scenario(trace_of(100, 0.01), sc(grace_s=0.1), tmp_path / "r.duckdb", backend_factory=lambda: backend,
                     progress=False)
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    status, reason = con.execute("SELECT status, end_reason FROM runs").fetchall()[0]
    assert status == "aborted" and reason.startswith("SIGINT")
    assert sorted(r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()) == sorted(backend.calls)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_closed_loop_users_and_think_time(tmp_path):
    backend = ClockedBackend(ttft_s=0.01)
    res = execute(trace_of(5, 1.0), sc(mode="closed", concurrency=3, max_requests=12, think_time_s=0.02),
                  tmp_path / "r.duckdb", backend_factory=lambda: backend, progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id)
    assert sorted(req["request_id"].to_list()) == list(range(12))
    assert backend.max_in_flight == 3
    # a user's next request is scheduled at its previous answer's end + think time
    ends = sorted(req["end_s"].to_list())
    later = req.filter(pl.col("scheduled_s") > 0.001)
    assert later.height == 9
    for t in later["scheduled_s"].to_list():
        assert any(abs(t - (e + 0.02)) < 1e-9 for e in ends)


def test_concurrency_cap_makes_queueing_visible_as_schedule_lag(tmp_path):
    backend = ClockedBackend(ttft_s=0.05)
    res = execute(trace_of(20, 1.0), sc(mode="rate", rate=200.0, max_requests=20, max_concurrency=2),
                  tmp_path / "r.duckdb", backend_factory=lambda: backend, progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id)
    assert req.height == 20 and backend.max_in_flight == 2
    lag = (req["sent_s"] - req["scheduled_s"]).to_numpy()
    # 20 requests of >= 54 ms through 2 slots: the last waits >= 9 * 54 ms minus its schedule offset
    assert lag.max() > 0.3


def test_sessions_wait_for_the_previous_answer(tmp_path):
    backend = ClockedBackend(ttft_s=0.03)
    tr = trace_of(6, 0.001, sessions=["a", "b", "a", "b", "a", "b"])
    res = execute(tr, sc(think_time_s=0.01), tmp_path / "r.duckdb", backend_factory=lambda: backend,
                  progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id)
    for _, g in req.group_by("session_id"):
        g = g.sort("turn")
        for prev, nxt in zip(g.iter_rows(named=True), list(g.iter_rows(named=True))[1:], strict=False):
            assert nxt["scheduled_s"] == pytest.approx(prev["end_s"] + 0.01, abs=1e-9)
            assert nxt["sent_s"] >= prev["end_s"] + 0.01


def test_warmup_and_cooldown_phases(tmp_path):
    res = execute(trace_of(50, 0.02), sc(duration_s=1.0, warmup_s=0.2, cooldown_s=0.3), tmp_path / "r.duckdb",
                  backend_factory=ClockedBackend, progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id)
    for r in req.iter_rows(named=True):
        t = r["scheduled_s"]
        want = "warmup" if t < 0.2 else "cooldown" if t >= 0.7 else "measure"
        assert r["phase"] == want
    assert set(req["phase"]) == {"warmup", "measure", "cooldown"}


def test_failed_requests_are_rows_with_their_error(tmp_path):
    backend = ClockedBackend(fail_ids=(2, 5))
    res = execute(trace_of(8, 0.005), sc(), tmp_path / "r.duckdb", backend_factory=lambda: backend,
                  progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id).sort("request_id")
    assert req["status"].to_list() == ["ok", "ok", "error", "ok", "ok", "error", "ok", "ok"]
    assert req.filter(pl.col("status") == "error")["http_status"].to_list() == [500, 500]


def test_run_scenario_works_from_a_thread_and_stores_planner_notes(tmp_path):
    data = {"arrival_s": [0.0, 0.01, 0.02], "input_tokens": [5, 0, 6], "output_tokens": [2, 2, 2]}
    tr = Trace(conform(pl.DataFrame(data)))
    got: dict = {}

    def target() -> None:
        got["run_id"] = run_scenario(tr, sc(), tmp_path / "r.duckdb", label="from-thread",
                                     backend_factory=ClockedBackend, progress=True)

    th = threading.Thread(target=target)
    th.start()
    th.join(30)
    assert not th.is_alive() and "run_id" in got
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    label, status, notes = con.execute("SELECT label, status, notes FROM runs WHERE run_id = ?",
                                       [got["run_id"]]).fetchall()[0]
    assert (label, status) == ("from-thread", "done")
    assert "skipped 1 trace request(s) with input_tokens < 1" in notes
    assert con.execute("SELECT count(*) FROM requests").fetchall()[0][0] == 2


@pytest.mark.slow
def test_two_worker_processes_lose_nothing_and_count_nothing_twice(tmp_path):
    sessions = [f"s{i % 5}" if i % 4 == 0 else None for i in range(120)]
    tr = trace_of(120, 0.004, sessions=sessions)
    res = execute(tr, sc(workers=2), tmp_path / "r.duckdb", backend_factory=make_clocked, progress=False)
    assert res.status == "done"
    req = rows(tmp_path / "r.duckdb", res.run_id)
    assert sorted(req["request_id"].to_list()) == list(range(120))
    assert set(req["worker_id"].to_list()) == {0, 1}
    for _, g in req.filter(pl.col("session_id").is_not_null()).group_by("session_id"):
        assert g["worker_id"].n_unique() == 1
    ch = rows(tmp_path / "r.duckdb", res.run_id, "chunks")
    assert ch.height == 360
    assert ch.group_by("request_id").len()["len"].to_list() == [3] * 120
    # both workers share one start instant: lag stays small on both
    lag = (req["sent_s"] - req["scheduled_s"]).to_numpy()
    assert np.all(lag > -1e-3)


@pytest.mark.slow
def test_closed_loop_over_two_workers_sends_exactly_the_request_limit(tmp_path):
    res = execute(trace_of(4, 1.0), sc(mode="closed", concurrency=3, max_requests=9, workers=2),
                  tmp_path / "r.duckdb", backend_factory=make_clocked, progress=False)
    req = rows(tmp_path / "r.duckdb", res.run_id)
    assert sorted(req["request_id"].to_list()) == list(range(9))
    assert set(req["worker_id"].to_list()) == {0, 1}
    # each id's lengths come from the shared pool: row id % 4
    assert all(r["input_tokens"] == 8 + r["request_id"] % 4 for r in req.iter_rows(named=True))


class DyingBackend(ClockedBackend):
    """Kills its own worker process (SIGKILL, as the OOM killer would) on request 5."""

    async def send(self, req, clock):
        if req.request_id == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().send(req, clock)


def make_dying() -> DyingBackend:
    return DyingBackend()


@pytest.mark.slow
def test_a_worker_that_really_dies_is_named_with_why_in_the_notes_and_end_reason(tmp_path):
    res = execute(trace_of(40, 0.02), sc(workers=2), tmp_path / "r.duckdb", backend_factory=make_dying,
                  progress=False)
    assert res.status == "aborted"
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    status, reason, notes = con.execute("SELECT status, end_reason, notes FROM runs").fetchall()[0]
    assert status == "aborted"
    for text in (reason, notes):
        assert "worker 1 died" in text and "SIGKILL" in text and "pid " in text, text
    assert "worker 0" not in reason


class FailingCloseBackend(ClockedBackend):
    """Its close() raises: the worker loop ends with an exception after its requests."""

    async def close(self) -> None:
        raise RuntimeError("close failed")


def make_failing_close() -> FailingCloseBackend:
    return FailingCloseBackend()


@pytest.mark.slow
def test_a_worker_that_raises_is_named_in_the_end_reason(tmp_path):
    res = execute(trace_of(10, 0.01), sc(workers=2), tmp_path / "r.duckdb", backend_factory=make_failing_close,
                  progress=False)
    assert res.status == "aborted"
    assert re.fullmatch(r"error: worker [01] failed: RuntimeError: close failed", res.end_reason), res.end_reason
    assert any(re.fullmatch(r"worker [01] failed: RuntimeError: close failed", n) for n in res.notes), res.notes


class WallBackend(ClockedBackend):
    """Also notes the wall time of run time 0 implied at each send: ``time.time() - clock()``."""

    def __init__(self) -> None:
        super().__init__()
        self.t0_wall: list[float] = []

    async def send(self, req, clock):
        self.t0_wall.append(time.time() - clock())
        return await super().send(req, clock)


def test_started_at_is_the_wall_clock_of_run_time_zero(tmp_path):
    """``started_at + t_s`` is an event's wall time, so results line up with server logs."""
    backend = WallBackend()
    res = run_scenario(trace_of(20, 0.01), sc(), tmp_path / "r.duckdb", backend_factory=lambda: backend,
                       progress=False)
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    started = con.execute("SELECT epoch_us(started_at) / 1e6 FROM runs WHERE run_id = ?", [res]).fetchone()[0]
    con.close()
    assert len(backend.t0_wall) == 20
    assert max(abs(w - started) for w in backend.t0_wall) < 2e-3


def test_an_aborted_run_is_counted_the_same_by_run_analyze_and_the_report(tmp_path):
    # warm-up rows, ok rows, one failure and cancelled rows (stopped with requests hanging):
    # run's summary, analyze, the report card and the report's Runs table count them one way.
    from burstbench.analysis.metrics import summarize as analyze_summary
    from burstbench.loadgen.summary import render_table
    from burstbench.reports.build import build_report

    backend = ClockedBackend(hang_from=30, fail_ids=(20,))
    control = RunControl()
    threading.Thread(target=lambda: (backend.hanging.wait(10), time.sleep(0.05), control.stop(now=True)),
                     daemon=True).start()
    out = tmp_path / "r.duckdb"
    res = execute(trace_of(200, 0.01), sc(warmup_s=0.1), out, backend_factory=lambda: backend,
                  control=control, progress=False)
    assert res.status == "aborted"
    req = rows(out, res.run_id)
    measured = req.filter(pl.col("phase") == "measure")
    want = {"ok": measured.filter(pl.col("status") == "ok").height,
            "cancelled": measured.filter(pl.col("status") == "cancelled").height,
            "warmup": req.filter(pl.col("phase") == "warmup").height}
    assert want["ok"] > 0 and want["cancelled"] > 0 and want["warmup"] > 0
    with ResultsStore(out, read_only=True) as store:
        run_s = summarize(store, res.run_id)
    assert (run_s["completed"], run_s["failed"], run_s["failed_by_status"]["cancelled"]) == (
        want["ok"], want["cancelled"] + 1, want["cancelled"])
    assert run_s["requests_unmeasured"] == want["warmup"]
    table = render_table(run_s)
    assert re.search(rf"\nFailed requests: +{want['cancelled'] + 1}\n", table), table
    assert re.search(rf"\n  of which cancelled: +{want['cancelled']}\n", table), table
    assert re.search(rf"\nRequests in warm-up/cool-down: +{want['warmup']}\n", table), table
    an = analyze_summary(out, res.run_id)
    assert (an["requests"], an["completed"], an["failed"], an["requests_unmeasured"]) == (
        measured.height, run_s["completed"], run_s["failed"], want["warmup"])
    build_report(out, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    line = (f"{measured.height:,} measured ({want['ok']:,} ok, {want['cancelled'] + 1:,} failed: 1 error, "
            f"{want['cancelled']:,} cancelled); {want['warmup']:,} in warm-up/cool-down")
    assert line == run_s["requests_line"]
    assert html.count(line) == 2  # the run's card and the Runs table
