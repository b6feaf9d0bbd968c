"""The twin predicts ITL (issue 12): the gaps between a request's tokens, measured from a
run's chunk rows and simulated from the engine's iteration times, compared like the rest.

The measured side is a simulated run written with its chunks, so the engine that made
them is known: replayed through the twin with that same engine, every gap must come back
exactly, which checks the chunk-gap query, the request each gap is given to, and the
subset a calibration scores, against the simulator's own token times.
"""

from __future__ import annotations

import numpy as np
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.simulator import simulate
from burstbench.traces.schema import load_trace
from burstbench.traces.synth import replay
from burstbench.twin.calibrate import compare
from burstbench.twin.measured import read_run
from burstbench.twin.spec import apply_overrides, build_cost
from burstbench.twin.vsim import Sched, Workload, closed_loop, colocated

MODEL = "llama-3.1-8b"
HW = apply_overrides(load_hardware("h100-sxm"), {"flops_efficiency_scale": 0.6, "seq_overhead_s": 2e-4})
COST = build_cost(MODEL, HW, 1, {})


def _per_request(lat, n: int) -> tuple[np.ndarray, np.ndarray]:
    assert lat.itl is not None and lat.itl_of is not None
    return np.bincount(lat.itl_of, minlength=n), np.bincount(lat.itl_of, weights=lat.itl, minlength=n)


@pytest.mark.parametrize("users", [None, 3])
def test_each_request_has_one_gap_per_token_after_the_first_summing_to_its_decode_time(users) -> None:
    rng = np.random.default_rng(5)
    work = Workload(np.sort(rng.uniform(0, 2, 40)), rng.integers(20, 3000, 40), rng.integers(1, 300, 40))
    lat = (colocated(work, COST, Sched(), itl=True) if users is None
           else closed_loop(work, users, 0.01, COST, Sched(), itl=True))
    count, total = _per_request(lat, 40)
    np.testing.assert_array_equal(count, work.output_tokens - 1)
    np.testing.assert_allclose(total, lat.e2el - lat.ttft, rtol=1e-9, atol=1e-12)
    assert (lat.itl > 0).all()
    assert "itl_ms" in lat.percentiles() and "itl_ms" not in colocated(work, COST, Sched()).percentiles()


@pytest.fixture(scope="module")
def recorded(azure_conv, tmp_path_factory):
    out = tmp_path_factory.mktemp("itl") / "r.duckdb"
    tr = replay(replay(load_trace(azure_conv), window=(0, 60)), rate=4.0)
    res = simulate(tr, model=MODEL, hardware=HW, out=out, label="run", enable_prefix_caching=False,
                   record_chunks=True)
    return out, res.run_id


def test_the_measured_chunk_gaps_are_the_engines_token_gaps(recorded) -> None:
    out, rid = recorded
    run = read_run(out, rid)
    m = run.measured
    count, total = _per_request(m, len(run.work))
    np.testing.assert_array_equal(count, np.maximum(run.work.output_tokens - 1, 0))
    np.testing.assert_allclose(total, m.e2el - m.ttft, rtol=1e-9, atol=1e-9)
    twin = colocated(run.work, COST, Sched(), itl=True)  # the engine that made the run
    np.testing.assert_allclose(np.sort(twin.itl), np.sort(m.itl), rtol=1e-9, atol=1e-12)
    itl = compare(m, twin)["itl_ms"]
    assert all(abs(itl[q]["rel_err"]) < 1e-9 for q in ("p50", "p90", "p99")), itl


def test_a_calibration_scores_the_gaps_of_the_requests_it_keeps(recorded) -> None:
    out, rid = recorded
    run = read_run(out, rid, max_requests=50)
    assert run.scored is not None and 0 < run.scored.sum() < 50
    count, _ = _per_request(run.measured, 50)
    np.testing.assert_array_equal(count, np.maximum(run.work.output_tokens - 1, 0))  # none of the dropped ones
    twin = colocated(run.work, COST, Sched(), itl=True)
    scored = compare(run.measured, twin, run.scored)["itl_ms"]
    assert all(abs(scored[q]["rel_err"]) < 1e-9 for q in ("p50", "p90")), scored
    slower = colocated(run.work, build_cost(MODEL, HW, 1, {"seq_overhead_s": 2e-3}), Sched(), itl=True)
    assert compare(run.measured, slower, run.scored)["itl_ms"]["p50"]["rel_err"] > 0.05  # and it can fail
