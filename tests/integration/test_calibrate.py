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

On a machine so loaded that the server cannot keep its schedule the test measures that
drift (the hidden configuration simulated in virtual time on the same schedule) and
skips, saying so, since calibrating to such a run measures the machine, not the engine.
"""

from __future__ import annotations

import polars as pl
import pytest
from url_process import url_process

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
        ids = []
        for rate in (FIT_RATE, HOLD_RATE):
            sc = Scenario(url=url, model=MODEL, time_scale=SCALE, scrape_metrics=False, timeout_s=60)
            res = execute(replay(trace, rate=rate), sc, out, label=f"rate {rate:g}", progress=False)
            assert res.status == "done", res.end_reason
            ids.append(res.run_id)
    return out, ids, hidden


@pytest.mark.slow
def test_calibration_recovers_the_hidden_engine_on_a_held_out_rate(live_runs):
    out, (fit_id, hold_id), hidden = live_runs
    drift = {}
    for rid in (fit_id, hold_id):
        run = read_run(out, rid)
        assert run.time_scale == SCALE and len(run.work) == N
        cmp = compare(run.measured, colocated(run.work, build_cost(MODEL, hidden, 1, {}), Sched()))
        drift[rid] = {m: abs(cmp[m]["p50"]["rel_err"]) for m in ("tpot_ms", "e2el_ms")}
    worst = max(max(v.values()) for v in drift.values())
    if worst > 0.08:
        pytest.skip(f"the live server drifted {worst:.0%} from its own engine (machine overloaded); "
                    f"not a calibration result: {drift}")
    hold = read_run(out, hold_id)
    start = compare(hold.measured, colocated(hold.work, build_cost(MODEL, BASE, 1, {}), Sched()))
    assert max_rel_err(start, "p50") > 0.4  # the preset starting point is far off

    cal = calibrate(out, fit_id, model=MODEL, hardware=BASE, holdout=hold_id)
    h = cal.spec.errors["holdout"]
    report = {m: {q: round(v[q]["rel_err"], 3) for q in ("p50", "p99")} for m, v in h["percentiles"].items()}
    print("holdout twin vs measured:", report, "fitted:", {k: round(u["value"], 4) for k, u in cal.spec.uncertainty.items()})
    for m in ("ttft_ms", "tpot_ms", "e2el_ms"):
        assert abs(h["percentiles"][m]["p50"]["rel_err"]) <= 0.05, report
        assert abs(h["percentiles"][m]["p99"]["rel_err"]) <= 0.10, report
    assert max_rel_err(h["percentiles"], "p50") < max_rel_err(start, "p50") / 3
