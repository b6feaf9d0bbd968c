"""Calibration with server spans (opt-in): the frontend latency is measured, not profiled.

A simulated run has spans (``simulate`` writes vLLM's phases); a known network delay
is then added to the client's side of every request, so the truth is known exactly:
client TTFT - server queue - prefill = that delay.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from burstbench.backends.reference.simulator import simulate
from burstbench.traces.schema import Trace, conform
from burstbench.twin.calibrate import calibrate, read_run

MODEL, HW, DELAY = "llama-3.1-8b", "h100-sxm", 0.003


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 80
    tr = Trace(conform(pl.DataFrame({"arrival_s": np.sort(rng.uniform(0, 20, n)),
                                     "input_tokens": rng.integers(200, 2000, n),
                                     "output_tokens": rng.integers(5, 60, n)})))
    out = tmp_path_factory.mktemp("tw") / "r.duckdb"
    rid = simulate(tr, model=MODEL, hardware=HW, out=out, record_chunks=False).run_id
    con = duckdb.connect(str(out))
    con.execute("UPDATE requests SET first_token_s = first_token_s + ?, first_visible_s = first_visible_s + ?,"
                " last_token_s = last_token_s + ?, end_s = end_s + ?", [DELAY] * 4)
    con.close()
    return out, rid


def test_read_run_measures_the_frontend_from_spans(store):
    out, rid = store
    run = read_run(out, rid, use_spans=True)
    assert run.frontend is not None and len(run.frontend) == 80
    assert np.allclose(run.frontend, DELAY, atol=1e-9)
    assert read_run(out, rid).frontend is None  # opt-in (see _span_frontend)


def test_calibration_uses_the_measured_frontend(store):
    out, rid = store
    cal = calibrate(out, rid, model=MODEL, hardware=HW, max_evals=8, max_requests=80, use_spans=True)
    assert cal.spec.provenance["frontend_from_spans"] is True
    fe = cal.spec.uncertainty["frontend_latency_s"]
    assert fe["value"] == pytest.approx(DELAY, abs=1e-9)
    assert fe["ci95"][0] == pytest.approx(DELAY, abs=1e-9)  # every request agrees: no spread
    off = calibrate(out, rid, model=MODEL, hardware=HW, max_evals=8, max_requests=80)
    assert off.spec.provenance["frontend_from_spans"] is False


def test_spans_for_too_few_requests_are_not_used(store, tmp_path):
    out, rid = store
    copy = tmp_path / "c.duckdb"
    copy.write_bytes(out.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("DELETE FROM server_spans WHERE request_id % 10 = 0")  # 90% joined: below the 99% rule
    con.close()
    assert read_run(copy, rid, use_spans=True).frontend is None
