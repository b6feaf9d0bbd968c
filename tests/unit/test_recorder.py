"""The recorder: rows land in the store's columns, and a killed writer keeps flushed rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from array import array

import duckdb
import pytest

from burstbench.backends.base import Outcome, Request
from burstbench.loadgen.dispatch import WorkerCore
from burstbench.loadgen.recorder import Recorder
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.schedule import build_plan
from burstbench.loadgen.summary import stats_ms
from burstbench.store import ResultsStore, RunInfo
from burstbench.traces.schema import Trace, conform


def _core(sink) -> WorkerCore:
    import polars as pl

    tr = Trace(conform(pl.DataFrame({"arrival_s": [0.0], "input_tokens": [5], "output_tokens": [3]})))
    return WorkerCore(build_plan(tr, Scenario(url="http://127.0.0.1:9", warmup_s=1.0)), None, sink, t0=0.0)  # type: ignore[arg-type]


def test_rows_and_chunks_land_in_store_columns(tmp_path):
    core = _core(lambda b: None)
    req = Request(request_id=7, input_tokens=5, output_tokens=3, scheduled_s=2.0, session_id="s", turn=1,
                  tenant="t", model="m")
    out = Outcome(request_id=7, sent_s=2.5, first_token_s=2.6, first_visible_s=2.7, last_token_s=2.9, end_s=3.0,
                  chunk_t=array("d", [2.6, 2.7, 2.9]), chunk_tokens=array("i", [-1, 2, 1]),
                  chunk_reasoning=array("b", [1, 0, 0]), input_tokens_server=6, output_tokens_server=3,
                  output_tokens_counted=3, reasoning_tokens=1, cached_tokens=4, http_status=200)
    core.record(req, core.plan.phase(req.scheduled_s), out, ready_s=2.4)  # a capped slot freed at 2.4
    core.record(Request(request_id=8, input_tokens=5, scheduled_s=0.5),
                "warmup", Outcome(request_id=8, sent_s=0.6, status="timeout", error_class="stall", end_s=9.0))
    batch = core.take_batch()
    assert batch["stats"]["completed"] == 1 and batch["stats"]["failed"] == 1
    assert list(batch["lags"]) == pytest.approx([0.5, 0.1])  # sent - scheduled
    assert list(batch["client_lags"]) == pytest.approx([0.1, 0.1])  # after the slot freed / the schedule
    with ResultsStore(tmp_path / "r.duckdb") as store:
        run_id = store.create_run(RunInfo(backend="test"))
        rec = Recorder(store, run_id)
        rec.add_batch(batch)
        rec.flush()
        r = store.con.execute("SELECT * FROM requests ORDER BY request_id").fetchall()
        cols = [d[0] for d in store.con.description]
        row = dict(zip(cols, r[0], strict=True))
        assert row == {
            "run_id": run_id, "request_id": 7, "session_id": "s", "turn": 1, "tenant": "t", "model": "m",
            "phase": "measure", "scheduled_s": 2.0, "sent_s": 2.5, "first_token_s": 2.6, "first_visible_s": 2.7,
            "last_token_s": 2.9, "end_s": 3.0, "input_tokens": 5, "input_tokens_server": 6,
            "output_tokens_target": 3, "output_tokens_server": 3, "output_tokens_counted": 3,
            "reasoning_tokens": 1, "cached_tokens": 4, "chunk_count": 3, "status": "ok", "http_status": 200,
            "error_class": None, "error_message": None, "worker_id": 0,
        }
        second = dict(zip(cols, r[1], strict=True))
        assert (second["phase"], second["status"], second["error_class"], second["chunk_count"]) == (
            "warmup", "timeout", "stall", 0)
        ch = store.con.execute("SELECT run_id, request_id, seq, t_s, tokens, reasoning FROM chunks ORDER BY seq").fetchall()
        assert ch == [(run_id, 7, 0, 2.6, None, True), (run_id, 7, 1, 2.7, 2, False), (run_id, 7, 2, 2.9, 1, False)]


def test_a_killed_writer_keeps_every_flushed_row(tmp_path):
    path = tmp_path / "r.duckdb"
    script = textwrap.dedent(f"""
        import os
        from array import array
        from burstbench.loadgen.recorder import Recorder
        from burstbench.store import ResultsStore, RunInfo
        store = ResultsStore({str(path)!r})
        rid = store.create_run(RunInfo(backend="test"))
        rec = Recorder(store, rid, checkpoint_every_s=1e9)
        row = (1, None, None, None, None, "measure", 0.0, 0.1, 0.2, 0.2, 0.3, 0.3, 5, None, 3, None, 3, None,
               None, 2, "ok", 200, None, None, 0)
        for i in range(3):
            rec.add_batch({{"requests": [(i,) + row[1:]], "chunk_rid": array("q", [i, i]),
                           "chunk_seq": array("i", [0, 1]), "chunk_t": array("d", [0.2, 0.3]),
                           "chunk_tokens": array("i", [1, 1]), "chunk_reasoning": array("b", [0, 0])}})
            rec.flush()
        rec.add_batch({{"requests": [(99,) + row[1:]], "chunk_rid": array("q"), "chunk_seq": array("i"),
                       "chunk_t": array("d"), "chunk_tokens": array("i"), "chunk_reasoning": array("b")}})
        os._exit(9)  # killed: no close, no checkpoint, the last batch never flushed
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    con = duckdb.connect(str(path))
    assert con.execute("SELECT list(request_id ORDER BY request_id) FROM requests").fetchone()[0] == [0, 1, 2]
    assert con.execute("SELECT count(*) FROM chunks").fetchone()[0] == 6
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"


def test_stats_ms_uses_linear_percentiles_and_population_std():
    s = stats_ms([0.010, 0.020, 0.030, 0.040])
    assert s["p50"] == pytest.approx(25.0) and s["p90"] == pytest.approx(37.0)
    assert s["std"] == pytest.approx(11.180339887, rel=1e-6)
    assert stats_ms([])["mean"] is None
