"""The twin's virtual-time runs against the simulator and the cost model they reuse."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from burstbench.analysis.metrics import open_store
from burstbench.analysis.slo import goodput
from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel
from burstbench.backends.reference.models import load_model
from burstbench.backends.reference.simulator import simulate
from burstbench.traces.schema import load_trace
from burstbench.traces.synth import replay
from burstbench.twin.vsim import Sched, Workload, colocated, disaggregated, kv_transfer_s
from burstbench.twin.whatif import write_run


@pytest.fixture(scope="module")
def azure_slice(azure_conv):
    return replay(load_trace(azure_conv), window=(0, 90))


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_model("llama-3.1-8b"), load_hardware("a100-80g"))


def test_colocated_matches_the_simulator_request_by_request(azure_slice, cost, tmp_path):
    out = tmp_path / "sim.duckdb"
    simulate(azure_slice, model="llama-3.1-8b", hardware="a100-80g", replicas=2, out=out,
             enable_prefix_caching=False, record_chunks=False)
    con = duckdb.connect(str(out), read_only=True)
    ttft, e2el = con.execute(
        "SELECT first_token_s - sent_s, last_token_s - sent_s FROM requests ORDER BY request_id").fetchnumpy().values()
    con.close()
    lat = colocated(Workload.from_trace(azure_slice), cost, Sched(), 2)
    assert len(lat.ttft) == azure_slice.df.height > 100
    np.testing.assert_allclose(lat.ttft, ttft, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lat.e2el, e2el, rtol=1e-9, atol=1e-9)


def test_lone_request_disaggregated_pays_exactly_the_kv_transfer(cost):
    p, o = 1500, 20
    work = Workload(np.array([0.0]), np.array([p]), np.array([o]))
    co = colocated(work, cost, Sched())
    dis = disaggregated(work, cost, cost, Sched(), 1, 1, link_bandwidth=25e9)
    # independent of the engine: one prefill step, then o-1 decode steps over a growing context
    prefill = cost.step_time([(p, 0)], [])
    decode = sum(cost.step_time([], [p + i]) for i in range(o - 1))
    transfer = p * cost.kv_bytes_per_token / 25e9 + cost.hardware.link_latency_s
    assert transfer == pytest.approx(float(kv_transfer_s(cost, np.array([p]), 25e9)[0]))
    assert co.ttft[0] == pytest.approx(prefill, rel=1e-9)
    assert dis.ttft[0] == pytest.approx(prefill, rel=1e-9)
    assert co.e2el[0] == pytest.approx(prefill + decode, rel=1e-9)
    assert dis.e2el[0] == pytest.approx(prefill + transfer + decode, rel=1e-9)


def test_disaggregation_removes_prefill_interference_from_decodes(azure_slice, cost):
    # DistServe's motivation: in a colocated engine long prefills stall the running decodes
    work = Workload.from_trace(azure_slice).scaled(3.0)
    co = colocated(work, cost, Sched(), 2)
    dis = disaggregated(work, cost, cost, Sched(), 1, 1)
    assert co.ok.all() and dis.ok.all()
    assert np.nanpercentile(dis.tpot, 99) < np.nanpercentile(co.tpot, 99)


def test_slower_kv_link_only_delays_decodes(azure_slice, cost):
    work = Workload.from_trace(azure_slice).head(100)
    fast = disaggregated(work, cost, cost, Sched(), 1, 1, link_bandwidth=100e9)
    slow = disaggregated(work, cost, cost, Sched(), 1, 1, link_bandwidth=1e9)
    np.testing.assert_allclose(fast.ttft, slow.ttft)
    assert np.nanmedian(slow.e2el) > np.nanmedian(fast.e2el)


def test_attainment_agrees_with_the_analysis_sql(azure_slice, cost, tmp_path):
    work = Workload.from_trace(azure_slice).scaled(4.0)
    lat = colocated(work, cost, Sched(max_num_seqs=32))
    slo = {"ttft": 0.3, "tpot": 0.04}
    out = tmp_path / "w.duckdb"
    rid = write_run(out, work, lat, label="t", model="m", scenario={})
    con = open_store(out)
    g = goodput(con, rid, slo)
    con.close()
    mine = lat.attainment(slo)
    assert 0.0 < mine < 1.0  # the SLO splits the requests, so the comparison means something
    assert g["slo_attainment"] == pytest.approx(mine)


def test_workload_rate_rescaling_keeps_shape(azure_slice):
    w = Workload.from_trace(azure_slice)
    r = w.at_rate(10.0)
    assert (len(r) - 1) / (r.arrival[-1] - r.arrival[0]) == pytest.approx(10.0)
    gaps_w, gaps_r = np.diff(w.arrival), np.diff(r.arrival)
    np.testing.assert_allclose(gaps_r / gaps_r.sum(), gaps_w / gaps_w.sum())
