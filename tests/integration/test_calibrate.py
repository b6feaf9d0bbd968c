"""Acceptance of issue 7 against the live reference server: calibrate a twin from runs the
real load generator recorded against ``burstbench serve`` with a hidden configuration.

The hidden engine is Llama-3.1-8B on an H100 whose efficiencies are 0.55x/0.6x and whose
overheads are 2x the preset; calibration starts from the plain preset (off by about 2x).
The server runs in real time (``--time-scale 1``) on 127.0.0.1 in its own process, and
300 requests of the shipped Azure conversation trace (prompts clipped to 512-2048
tokens, outputs to 40) are replayed at 8 and 4 req/s (37 s + 75 s); the twin is
fitted on the busier run and judged on the other with the issue's bounds: 5% at p50
and 10% at p99 for TTFT, TPOT and E2EL.

Why real time and 300 requests (measured, see the closing note of issue 7):

* at ``--time-scale 3`` every millisecond of wall-clock jitter (loopback, event loop)
  is three model milliseconds, which moves requests across iteration boundaries; the
  server then drifts from its own engine by up to 13% at TTFT p99, so no twin can
  match it; at scale 1 the server matches its engine within 3% everywhere;
* the TTFT tail is queueing behind other prefills: with 100 requests its p99 is the
  largest one or two, and a 1% change in prefill speed moves it by 10% or more; with
  300 requests at these loads the same 1% moves it by at most ~5%;
* the busier run is the one to fit: it spans more batch sizes, which is what tells the
  bandwidth efficiency from the per-step overhead. On six live stores, fitted on the
  lighter run and judged on the busier one, 1 of 6 missed TTFT p99 (10.1%); the other
  way round 6 of 6 passed (worst 3.0% at p50, 6.2% at p99).

The test must not depend on the machine being quiet. On a loaded machine the server
writes tokens later than its engine scheduled them, and the measured latencies carry
that error (a TTFT p99 off by 58% against a quiet run's 6%), which no twin of the engine
can match. The server measures it: every write's lateness against its engine's deadline
(the ``burstbench:token_emission_lateness_seconds`` histogram on ``/metrics``). The
load generator, starved by the same load, reads each chunk late too; its own lateness in
the same run is its schedule lag (sent − scheduled). The test reads the server's
histogram before and after each run and the client's lag from the results, and widens
each bound by what the two timing errors explain. The twin is fitted on one run and judged on the other:
the fit can carry the fit run's timing error into every quantile of the twin (measured:
a fit run with 0.4 s lateness at p99 gave the twin a 26 ms "frontend latency" and a
TTFT p50 41% off), so at quantile q a TTFT or E2EL may be off by the fit run's p99
lateness plus the judged run's q-quantile (server's and client's), and a TPOT by that
over its output's gaps.
A bound widened past 50% says nothing about the twin; such a figure is reported, not
judged, and a run whose every figure is so disturbed skips, naming the lateness. On a
quiet machine the lateness is well under a millisecond and the issue's bounds apply.
"""

from __future__ import annotations

import math
import re
import urllib.request

import polars as pl
import pytest
from url_process import url_process

from burstbench.analysis.metrics import open_store
from burstbench.backends.hardware.profile import load_hardware
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace, conform, load_trace
from burstbench.traces.synth import replay
from burstbench.twin.calibrate import calibrate, compare, max_rel_err, read_run
from burstbench.twin.spec import apply_overrides, build_cost
from burstbench.twin.vsim import Sched, colocated

MODEL, BASE, SCALE = "llama-3.1-8b", "h100-sxm", 1.0
N, FIT_RATE, HOLD_RATE = 300, 8.0, 4.0
LATENESS = "burstbench:token_emission_lateness_seconds"


def lateness_buckets(url: str) -> dict[float, int]:
    """The server's cumulative token-lateness histogram: bucket upper bound (s) -> writes."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[float, int] = {}
    for m in re.finditer(rf'^{re.escape(LATENESS)}_bucket{{.*le="([^"]+)"}} (\S+)$', text, re.M):
        le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
        out[le] = out.get(le, 0) + int(float(m.group(2)))
    assert out, f"{url}/metrics has no {LATENESS}"
    return out


def lateness_quantile(before: dict[float, int], after: dict[float, int], q: float) -> float:
    """The q-quantile (s) of the writes between two readings, interpolated linearly within its
    bucket as Prometheus' histogram_quantile does (the upper bound when it is the +Inf bucket's)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0) for b in bounds]
    assert counts[-1] > 0, "the server wrote no tokens during the run"
    rank, lo, below = q * counts[-1], 0.0, 0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if math.isinf(b):
                return lo
            return lo + (b - lo) * (rank - below) / max(c - below, 1)
        lo, below = b, c
    return lo


@pytest.fixture(scope="module")
def live_runs(azure_conv, tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    base = load_hardware(BASE)
    hidden = apply_overrides(base, {"bandwidth_efficiency_scale": 0.55, "flops_efficiency_scale": 0.6,
                                    "step_overhead_s": 2 * base.step_overhead_s,
                                    "layer_overhead_s": 2 * base.layer_overhead_s})
    hidden.write(d / "hidden.json")
    sl = replay(load_trace(azure_conv), window=(0, 3600))
    df = sl.df.head(N).with_columns(pl.col("input_tokens").clip(512, 2048), pl.col("output_tokens").clip(2, 40))
    trace = Trace(conform(df), dict(sl.meta))
    out = d / "live.duckdb"
    with url_process("burstbench", "serve", "--model", MODEL, "--hardware", str(d / "hidden.json"), "--port", "0",
                     "--time-scale", str(SCALE), "--no-prefix-caching") as (url, _):
        ids, late = [], {}
        for rate in (FIT_RATE, HOLD_RATE):
            sc = Scenario(url=url, model=MODEL, time_scale=SCALE, scrape_metrics=False, timeout_s=60)
            before = lateness_buckets(url)
            res = execute(replay(trace, rate=rate), sc, out, label=f"rate {rate:g}", progress=False)
            after = lateness_buckets(url)
            assert res.status == "done", res.end_reason
            ids.append(res.run_id)
            late[res.run_id] = {"p50": lateness_quantile(before, after, 0.5),
                                "p99": lateness_quantile(before, after, 0.99)}
    return out, ids, late


@pytest.mark.slow
def test_calibration_recovers_the_hidden_engine_on_a_held_out_rate(live_runs):
    out, (fit_id, hold_id), late = live_runs
    for rid in (fit_id, hold_id):
        run = read_run(out, rid)
        assert run.time_scale == SCALE and len(run.work) == N
    hold = read_run(out, hold_id)
    start = compare(hold.measured, colocated(hold.work, build_cost(MODEL, BASE, 1, {}), Sched()))
    assert max_rel_err(start, "p50") > 0.4  # the preset starting point is far off

    cal = calibrate(out, fit_id, model=MODEL, hardware=BASE, holdout=hold_id)
    h = cal.spec.errors["holdout"]
    report = {m: {q: round(v[q]["rel_err"], 3) for q in ("p50", "p99")} for m, v in h["percentiles"].items()}
    print("holdout twin vs measured:", report, "fitted:", {k: round(u["value"], 4) for k, u in cal.spec.uncertainty.items()})
    # the bounds, widened by what the server's own timing error explains (module docstring)
    gaps = max(float(hold.work.output_tokens.mean()) - 1.0, 1.0)
    con = open_store(out)
    try:  # the client's own lateness: its schedule lag in the same runs
        for rid in (fit_id, hold_id):
            p50, p99 = con.execute("SELECT quantile_cont(schedule_lag_s, [0.5, 0.99]) FROM request_metrics"
                                   " WHERE run_id = ?", [rid]).fetchall()[0][0]
            late[rid].update(client_p50=max(p50, 0.0), client_p99=max(p99, 0.0))
    finally:
        con.close()
    bounds = {}
    for q, bound in (("p50", 0.05), ("p99", 0.10)):
        late_ms = (late[fit_id]["p99"] + late[fit_id]["client_p99"]
                   + late[hold_id][q] + late[hold_id][f"client_{q}"]) * 1000.0
        for m in ("ttft_ms", "tpot_ms", "e2el_ms"):
            explained = late_ms / gaps if m == "tpot_ms" else late_ms
            bounds[(m, q)] = bound + explained / h["percentiles"][m][q]["measured"]
    judged = {k: b for k, b in bounds.items() if b <= 0.5}
    print("server token lateness (s):", late, "bounds:", {f"{m}.{q}": round(b, 3) for (m, q), b in bounds.items()})
    if not judged:
        pytest.skip(f"the server's own timing error (token lateness {late}) disturbs every figure by more "
                    f"than 50%: not a calibration result; twin vs measured: {report}")
    for (m, q), b in judged.items():
        assert abs(h["percentiles"][m][q]["rel_err"]) <= b, (m, q, b, report, late)
    p50s = [abs(h["percentiles"][m]["p50"]["rel_err"]) for (m, q) in judged if q == "p50"]
    if p50s:  # and the twin is much closer than the preset it started from
        assert max(p50s) < max_rel_err(start, "p50") / 3, (report, max_rel_err(start, "p50"))
