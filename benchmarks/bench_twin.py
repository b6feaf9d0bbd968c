"""Twin speed, side by side with its baseline in the same process.

1. One virtual-time pass of a trace slice: the twin's in-memory run (``twin.vsim``)
   vs ``burstbench simulate`` (``backends.reference.simulator``, which writes every
   token to DuckDB) on the same requests; the ratio is what makes a calibration of
   ~150 passes affordable. Both produce the same latencies (asserted).
2. A calibration (``twin.calibrate``) on a 400-request run: wall time and passes; then
   the same with the scheduler limits unknown (fitted), as a multiple of that time.
3. ``whatif`` (baseline + variant, each with a max goodput search) and ``plan``.

Figures are wall seconds and CPU seconds (the machine is shared: CPU time is the
steadier number); run it twice when the load is high.

    python benchmarks/bench_twin.py [--window 600]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.simulator import simulate
from burstbench.traces.schema import load_trace
from burstbench.traces.synth import replay
from burstbench.twin.calibrate import calibrate
from burstbench.twin.plan import EXAMPLE_PRICES, plan
from burstbench.twin.spec import TwinSpec, apply_overrides, build_cost
from burstbench.twin.vsim import Sched, Workload, colocated
from burstbench.twin.whatif import whatif

TRACE = Path(__file__).resolve().parents[1] / "burstbench" / "data" / "traces" / "azure_llm_2023_conv.csv"


def timed(fn):  # type: ignore[no-untyped-def]
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=600.0, help="seconds of the Azure trace to use")
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tr = replay(load_trace(TRACE), window=(0, args.window))
    n = tr.df.height
    d = Path(tempfile.mkdtemp(prefix="bench-twin-"))

    # 1. one pass: simulate (DuckDB rows) vs twin (in memory), same engine, same requests
    out = d / "sim.duckdb"
    res, w_sim, c_sim = timed(lambda: simulate(tr, model="llama-3.1-8b", hardware="h100-sxm", out=out,
                                               enable_prefix_caching=False))
    cost = build_cost("llama-3.1-8b", "h100-sxm", 1, {})
    lat, w_tw, c_tw = timed(lambda: colocated(Workload.from_trace(tr), cost, Sched()))
    con = duckdb.connect(str(out), read_only=True)
    ttft = con.execute("SELECT first_token_s - sent_s FROM requests ORDER BY request_id").fetchnumpy()
    con.close()
    assert np.allclose(next(iter(ttft.values())), lat.ttft), "twin and simulator disagree"
    print(f"[1] {n} requests, {res.iterations} iterations: simulate {w_sim:.2f} s wall / {c_sim:.2f} s CPU; "
          f"twin pass {w_tw:.2f} s wall / {c_tw:.2f} s CPU; ratio {w_sim / w_tw:.1f}x wall, {c_sim / c_tw:.1f}x CPU")

    # 2. calibration on a 400-request run of a hidden engine
    base = load_hardware("h100-sxm")
    hidden = apply_overrides(base, {"bandwidth_efficiency_scale": 0.55, "flops_efficiency_scale": 0.6,
                                    "step_overhead_s": 2 * base.step_overhead_s,
                                    "layer_overhead_s": 2 * base.layer_overhead_s})
    sl = Workload.from_trace(tr).head(400)
    sub = replay(tr, window=(0, float(sl.arrival[-1]) + 1e-9))
    runs = d / "runs.duckdb"
    r1 = simulate(replay(sub, rate=3.0), model="llama-3.1-8b", hardware=hidden, out=runs, record_chunks=False,
                  enable_prefix_caching=False)
    r2 = simulate(replay(sub, rate=5.0), model="llama-3.1-8b", hardware=hidden, out=runs, record_chunks=False,
                  enable_prefix_caching=False)
    cal, w_cal, c_cal = timed(lambda: calibrate(runs, r1.run_id, model="llama-3.1-8b", hardware="h100-sxm",
                                                holdout=r2.run_id))
    h = cal.spec.errors["holdout"]
    print(f"[2] calibrate on {len(cal.fit_run.work)} requests: {cal.evaluations} passes in {w_cal:.1f} s wall / "
          f"{c_cal:.1f} s CPU ({w_cal / cal.evaluations * 1000:.0f} ms per pass); holdout max |err| "
          f"p50 {h['max_abs_rel_err_p50']:.3f}, p99 {h['max_abs_rel_err_p99']:.3f}")

    # 2b. the same with scheduler limits unknown: the hidden engine runs 24 sequences and a
    # 2048-token budget (vLLM's defaults: 256, 8192); calibrate fits both ('auto')
    lim = d / "limits.duckdb"
    kw = {"model": "llama-3.1-8b", "hardware": hidden, "out": lim, "record_chunks": False,
          "enable_prefix_caching": False, "max_num_seqs": 24, "max_num_batched_tokens": 2048}
    l1 = simulate(replay(sub, rate=6.0), **kw)
    l2 = simulate(replay(sub, rate=4.0), **kw)
    cl, w_cl, c_cl = timed(lambda: calibrate(lim, l1.run_id, model="llama-3.1-8b", hardware="h100-sxm",
                                             holdout=l2.run_id, fit_limits=("max_num_seqs", "max_num_batched_tokens")))
    got = cl.spec.provenance["scheduler_fit"]
    hl = cl.spec.errors["holdout"]
    print(f"[2b] calibrate with both limits unknown: {cl.evaluations} passes in {w_cl:.1f} s wall / {c_cl:.1f} s CPU "
          f"({w_cl / w_cal:.1f}x [2]); found max_num_seqs {got['max_num_seqs']['value']} (hidden 24), "
          f"max_num_batched_tokens {got['max_num_batched_tokens']['value']} (hidden 2048); holdout max |err| "
          f"p50 {hl['max_abs_rel_err_p50']:.3f}, p99 {hl['max_abs_rel_err_p99']:.3f}")

    # 3. whatif (H200) and plan on the slice
    twin = TwinSpec(model="llama-3.1-8b", hardware="a100-80g")
    wi, w_wi, c_wi = timed(lambda: whatif(twin, tr, slo={"ttft": 0.5, "tpot": 0.05}, hardware="h200",
                                          max_requests=1000))
    steps = len(wi["baseline"]["search"]["steps"]) + len(wi["variant"]["search"]["steps"])
    print(f"[3] whatif a100-80g -> h200 on 1000 requests: {w_wi:.1f} s wall / {c_wi:.1f} s CPU, {steps} search runs; "
          f"max goodput {wi['baseline']['max_goodput_rate']:.2f} -> {wi['variant']['max_goodput_rate']:.2f} req/s")
    hw = ["a100-80g", "h100-sxm", "l40s"]
    pl_, w_pl, c_pl = timed(lambda: plan(tr, model="llama-3.1-8b", hardware=hw,
                                         prices={k: EXAMPLE_PRICES[k] for k in hw},
                                         slo={"ttft": 0.5, "tpot": 0.05}, max_requests=1000))
    print(f"[4] plan over {','.join(hw)} on {pl_['load']['requests']} peak requests: {len(pl_['candidates'])} "
          f"candidates in {w_pl:.1f} s wall / {c_pl:.1f} s CPU; cheapest {pl_['best']['name']} "
          f"{pl_['best']['usd_per_hour']:.2f} USD/h")


if __name__ == "__main__":
    main()
