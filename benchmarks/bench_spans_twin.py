"""Does fitting the twin against the server's phase times identify the engine better?

The live reference server runs a hidden engine (efficiencies 0.55x bandwidth, 0.6x
FLOP/s, overheads 2x the preset: the configuration of tests/integration/test_calibrate.py)
in real time and exports vLLM-style spans; the load generator records two rates with
``--server-spans``. The twin is then calibrated on the busier run twice - frontend
latency profiled from TTFT (``use_spans=False``, as before) and measured from the
spans (client TTFT - server queue - prefill) - and each fit is printed beside the
truth, with its holdout errors on the lighter run. A spread over repeats says more
than one pair: run it several times (``--repeats``).

    python benchmarks/bench_spans_twin.py [--requests 300] [--repeats 1]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from url_process import url_process

from burstbench.analysis.metrics import open_store
from burstbench.analysis.phases import decomposition
from burstbench.backends.hardware.profile import load_hardware
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace, conform, load_trace
from burstbench.traces.synth import replay
from burstbench.twin.calibrate import calibrate
from burstbench.twin.spec import apply_overrides

MODEL, BASE = "llama-3.1-8b", "h100-sxm"
TRACE = Path(__file__).resolve().parents[1] / "burstbench" / "data" / "traces" / "azure_llm_2023_conv.csv"
TRUTH = {"bandwidth_efficiency_scale": 0.55, "flops_efficiency_scale": 0.6, "overhead_scale": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rates", default="8,4")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="bench-spans-twin-"))
    base = load_hardware(BASE)
    hidden = apply_overrides(base, {"bandwidth_efficiency_scale": 0.55, "flops_efficiency_scale": 0.6,
                                    "step_overhead_s": 2 * base.step_overhead_s,
                                    "layer_overhead_s": 2 * base.layer_overhead_s})
    hidden.write(d / "hidden.json")
    sl = replay(load_trace(TRACE), window=(0, 3600))
    df = sl.df.head(args.requests).with_columns(pl.col("input_tokens").clip(512, 2048),
                                                pl.col("output_tokens").clip(2, 40))
    trace = Trace(conform(df), dict(sl.meta))
    rates = [float(r) for r in args.rates.split(",")]
    for rep in range(args.repeats):
        out = d / f"live{rep}.duckdb"
        port = free_port()
        with url_process("burstbench", "serve", "--model", MODEL, "--hardware", str(d / "hidden.json"), "--port", "0",
                         "--no-prefix-caching", "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces") as (url, _):
            ids = []
            for rate in rates:
                sc = Scenario(url=url, model=MODEL, scrape_metrics=False, timeout_s=60, server_spans=f"127.0.0.1:{port}")
                res = execute(replay(trace, rate=rate), sc, out, label=f"rate {rate:g}", progress=False)
                ids.append(res.run_id)
        con = open_store(out)
        for rid, rate in zip(ids, rates, strict=True):
            dec = decomposition(con, rid)
            print(f"[{rep}] rate {rate:g}: joined {dec['joined']}/{dec['completed']}; mean ms "
                  + ", ".join(f"{p} {v['mean']:.2f}" for p, v in dec["parts_ms"].items()))
        con.close()
        for use_spans in (False, True):
            t0 = time.process_time()
            cal = calibrate(out, ids[0], model=MODEL, hardware=BASE, holdout=ids[1], use_spans=use_spans)
            u = cal.spec.uncertainty
            h = cal.spec.errors["holdout"]["percentiles"]
            fit = ", ".join(f"{k} {u[k]['value']:.4f} [{u[k]['ci95'][0]:.3f}, {u[k]['ci95'][1]:.3f}] (truth {TRUTH[k]})"
                            for k in TRUTH)
            fe = u["frontend_latency_s"]
            print(f"[{rep}] spans={use_spans}: {fit}; frontend {1e3 * fe['value']:.3f} ms "
                  f"[{1e3 * fe['ci95'][0]:.3f}, {1e3 * fe['ci95'][1]:.3f}]; holdout rel err p50/p99 "
                  + ", ".join(f"{m} {h[m]['p50']['rel_err']:+.3f}/{h[m]['p99']['rel_err']:+.3f}"
                              for m in ("ttft_ms", "tpot_ms", "e2el_ms"))
                  + f"; {time.process_time() - t0:.0f} CPU s")


if __name__ == "__main__":
    main()
