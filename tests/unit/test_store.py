"""The results store: schema, run lifecycle, both append paths, redaction, read-only checks."""

from __future__ import annotations

import json
import stat

import duckdb
import polars as pl
import pytest

from burstbench.errors import StoreError
from burstbench.store import REQUEST_COLUMNS, ResultsStore, RunInfo, redact_url


def _row(run_id: str, i: int) -> tuple:
    values = dict.fromkeys(REQUEST_COLUMNS)
    values.update(run_id=run_id, request_id=i, phase="measure", scheduled_s=i * 0.5,
                  sent_s=i * 0.5 + 0.001, status="ok" if i % 3 else "error", worker_id=0,
                  input_tokens=10 + i, chunk_count=i)
    return tuple(values[c] for c in REQUEST_COLUMNS)


def test_tuple_and_frame_appends_land_the_same_rows(tmp_path) -> None:
    path = tmp_path / "r.duckdb"
    with ResultsStore(path) as store:
        a = store.create_run(RunInfo(backend="openai", endpoint="http://u:secret@127.0.0.1:8000/v1?api_key=k"))
        store.append_requests([_row(a, i) for i in range(50)])
        b = store.create_run(RunInfo(backend="openai"))
        frame = pl.DataFrame([_row(b, i) for i in range(50)], schema=list(REQUEST_COLUMNS), orient="row",
                             infer_schema_length=None)
        store.append_requests(frame)
        store.finish_run(a, status="done", end_reason="completed", duration_s=25.0, notes=["x"])
    con = duckdb.connect(str(path), read_only=True)
    cols = ", ".join(c for c in REQUEST_COLUMNS if c != "run_id")
    got_a = con.execute(f"SELECT {cols} FROM requests WHERE run_id = ? ORDER BY request_id", [a]).fetchall()
    got_b = con.execute(f"SELECT {cols} FROM requests WHERE run_id = ? ORDER BY request_id", [b]).fetchall()
    assert len(got_a) == 50 and got_a == got_b
    endpoint, status, notes = con.execute("SELECT endpoint, status, notes FROM runs WHERE run_id = ?", [a]).fetchone()
    assert endpoint == "http://127.0.0.1:8000/v1" and "secret" not in endpoint
    assert status == "done" and json.loads(notes) == ["x"]


def test_redact_url_drops_userinfo_and_query() -> None:
    assert redact_url("https://k:s@api.example.com/v1?key=abc") == "https://api.example.com/v1"
    assert redact_url(None) is None


def test_read_only_store_errors_are_clear(tmp_path) -> None:
    with pytest.raises(StoreError, match="no such results file"):
        ResultsStore(tmp_path / "missing.duckdb", read_only=True)
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE x (a INT)").close()
    with pytest.raises(StoreError, match="not a burstbench results store"):
        ResultsStore(other, read_only=True)
    with ResultsStore(tmp_path / "empty.duckdb") as store, pytest.raises(StoreError, match="holds no runs"):
        store.resolve_run(None)


def test_written_trace_is_not_private(tmp_path) -> None:
    from burstbench.traces.schema import Trace, conform, write_trace

    df = conform(pl.DataFrame({"arrival_s": [0.0, 1.0], "input_tokens": [1, 2], "output_tokens": [3, 4]}))
    path = write_trace(Trace(df, {}), tmp_path / "t.parquet")
    assert path.stat().st_mode & stat.S_IRGRP
    assert list(tmp_path.iterdir()) == [path]
