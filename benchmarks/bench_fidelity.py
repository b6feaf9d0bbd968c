"""The twin's fidelity against a real vLLM (CPU build): a load sweep, fit, held-out errors.

What it does, all bounded (``--requests`` per run, Poisson arrivals, 127.0.0.1 only):

1. starts ``vllm serve`` of the tiny local model (``burstbench vllm-cpu``), or uses
   ``--url`` of one already running;
2. records two identical runs (same schedule, same seed) first: their difference is the
   run-to-run noise every error below is read beside;
3. records the fit runs (``--fit-rates``) and the held-out runs: loads between and above
   the fit loads (``--holdout-rates``) and two other length mixes (long prompts with
   short answers, short prompts with long answers);
4. calibrates on the fit runs only, then predicts every held-out run with (a) the
   uncalibrated engine on the profiled hardware and (b) the calibrated twin.

Prints per run and metric the p50/p90 errors of (a) and (b), the noise beside them, and
MAPE over the sweep; ``--json`` writes the whole table. Example::

    burstbench profile --quick -o hw.json
    python benchmarks/bench_fidelity.py --hardware hw.json --out /tmp/fid --requests 60

The machine's load (``uptime``) is printed at the start and end: on a shared 2-core
machine the real engine's speed changes with it, and so does every figure here.

Measured (issue 12; vLLM 0.32 CPU build, tiny-llama 4 layers, 2 shared cores, 50 requests
per run of the 40/300/900 x 16/64/160 mix, fit on 0.3 and 0.8 req/s, held out 0.55):

- load 4.8-14 during the runs (``--no-mixes``): two identical runs differed by 83% (TTFT
  p50), 35% (TPOT p50), 41% (E2EL p50); held out, uncalibrated vs twin: TTFT p50 -94.7% vs
  -12.1%, p90 -90.5% vs -2.1%; TPOT p50 -99.2% vs -7.1%, p90 -98.7% vs -13.2%; E2EL p50
  -98.4% vs -13.7%, p90 -97.8% vs +5.6%; throughput +28.8% vs -3.5%. MAPE over p50/p90
  uncalibrated 93-99%, twin TTFT 7.1%, TPOT 10.2%, E2EL 9.6%;
- load 12-18 (first sweep, no warm-up): noise 96% (TTFT p50); twin MAPE over 0.55, 1.0
  and an aborted long-prompt run: TTFT 53%, TPOT 28%, E2EL 25%;
- load 1-5 (tests/real_vllm/test_twin_fidelity.py): held out TTFT p50 -10%, p90 -19%;
  TPOT p50 +30%, p90 +3%; E2EL p50 +22%, p90 +28% (TPOT p50 of the three runs 25, 32 and
  18 ms: not monotonic in the load they were sent at, so the machine moved under them).

- load 22 -> 1 (this session, ``--closed --requests 30 --fit-rates 1 4 --holdout-rates 2 8
  --mix-rate 2``, the committed CPU profile): two identical runs (4 users, own seeds)
  differed by TTFT p50 61% / p90 49%, TPOT 23% / 14%, E2EL 20% / 4%. The fit runs were
  recorded at load ~20 (TPOT p50 290 ms at 1 and 4 users), then the other engineers' work
  stopped and the held-out runs ran at load 13 -> 1 (TPOT p50 144 ms at 8 users, 9 ms on
  the long-answer mix at load ~1: the engine 30x faster than when the twin was fitted).
  Held out, uncalibrated vs twin: 2 users (between the fit loads) TTFT p50 -91% vs -15%,
  TPOT p50 -98% vs +38%, E2EL p50 -96% vs +63%; 8 users +118..+325% for the twin; the
  mixes +700..+4700%. MAPE over the held-out runs: uncalibrated TTFT 68%, TPOT 83%, E2EL
  74%; twin 727%, 1500%, 1438%. The twin follows the machine it was fitted on only roughly (fit runs
  5-49% off at p50) and cannot know that the machine got 30x faster afterwards.

Every figure is within the run-to-run noise measured beside it, which is larger than the
issue's bounds (10% at p50, 20% at p90) on this machine; none of them shows the twin
meeting those bounds, and none can until the noise is measured on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from burstbench.traces.schema import Trace, conform, write_trace

MIXES = {  # prompt lengths, answer lengths (uniform over the values): the mixes
    "mixed": ((40, 300, 900), (16, 64, 160)),
    "long-prompt": ((1200, 1800, 2400), (4, 8, 16)),
    "long-answer": ((16, 32, 64), (200, 300, 400)),
}
METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")
QS = ("p50", "p90")


def make_trace(path: Path, mix: str, n: int, seed: int) -> Path:
    """``n`` requests of ``mix``; arrivals come from ``run --rate`` (Poisson, its own seed)."""
    rng = np.random.default_rng(seed)
    pin, pout = MIXES[mix]
    df = pl.DataFrame({"arrival_s": np.arange(n, dtype=np.float64),
                       "input_tokens": np.array(pin)[rng.integers(0, len(pin), n)],
                       "output_tokens": np.array(pout)[rng.integers(0, len(pout), n)]})
    return write_trace(Trace(conform(df)), path)


def record(url: str, trace: Path, store: Path, label: str, load: float, n: int, tokenizer: str | None,
           seed: int, closed: bool = False) -> None:
    """One bounded run: Poisson at ``load`` req/s, or ``closed``: ``load`` users in a closed loop."""
    how = ["--concurrency", str(int(load))] if closed else ["--rate", f"{load:g}"]
    cmd = [sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace), "-o", str(store),
           *how, "--requests", str(n), "--label", label, "--seed", str(seed), "--quiet", "--timeout", "300"]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    unit = "users" if closed else "req/s"
    print(f"run {label}: {n} requests at {load:g} {unit}  (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def predict(store: Path, label: str, model: str, hardware: str, overrides: dict[str, float],
            sched: Any, frontend_s: float = 0.0) -> dict[str, Any]:
    """p50/p90 of TTFT, TPOT and E2EL, measured vs simulated, on one recorded run."""
    from burstbench.twin.calibrate import compare, read_run
    from burstbench.twin.fidelity import throughput
    from burstbench.twin.spec import build_cost
    from burstbench.twin.vsim import colocated

    run = read_run(store, label)
    lat = colocated(run.work, build_cost(model, hardware, 1, overrides), sched, frontend_s=frontend_s)
    out = compare(run.measured, lat)
    out["throughput"] = {"measured": throughput(run.work.arrival, run.measured.e2el),
                         "twin": throughput(run.work.arrival, lat.e2el)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hardware", required=True, help="profile JSON of this machine (burstbench profile)")
    ap.add_argument("--model", default=None, type=Path,
                    help="folder of a `burstbench vllm-cpu build-model` model [its default one]")
    ap.add_argument("--url", default=None, help="a vLLM already serving the model (else one is started)")
    ap.add_argument("--out", required=True, type=Path, help="folder for traces, results and the twin")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--closed", action="store_true",
                    help="closed loops: every load is a number of users (a run lasts what the engine needs)")
    ap.add_argument("--fit-rates", type=float, nargs=2, default=(0.4, 1.0), help="(users with --closed)")
    ap.add_argument("--holdout-rates", type=float, nargs="+", default=(0.7, 1.3), help="(users with --closed)")
    ap.add_argument("--mix-rate", type=float, default=0.5, help="(users with --closed)")
    ap.add_argument("--max-num-seqs", type=int, default=128, help="the server's (vLLM CPU default 128)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048, help="the server's (CPU default 2048)")
    ap.add_argument("--max-evals", type=int, default=150)
    ap.add_argument("--no-mixes", dest="mixes", action="store_false",
                    help="skip the two other length mixes (long answers take minutes on a loaded machine)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record-only", action="store_true", help="record the runs, fit later")
    a = ap.parse_args(argv)
    from burstbench.testing.vllm_cpu import model_dir, serving

    a.out.mkdir(parents=True, exist_ok=True)
    store = a.out / "fidelity.duckdb"
    recorded = store.exists()  # then only fit and predict again (say, after a change to the twin)
    folder = model_dir(a.model)
    model, tok = str(folder / "config.json"), str(folder)
    n = a.requests
    traces = {mix: make_trace(a.out / f"{mix}.parquet", mix, n, seed=7) for mix in MIXES}
    load_start = os.getloadavg()
    # a short warm-up first: the first requests after start-up were 20x slower in TTFT than
    # the same schedule a minute later (issue 12's first sweep), which is not run-to-run noise
    # the two identical runs have their own seeds (prompt text): with the same text the second
    # one's prompts hit vLLM's prefix cache and its TTFT measured the cache, not the noise
    plan = [("warmup", "mixed", a.fit_rates[1], 12), ("noise-a", "mixed", a.fit_rates[1], 11), ("noise-b", "mixed", a.fit_rates[1], 13),
            ("fit-low", "mixed", a.fit_rates[0], 1), ("fit-high", "mixed", a.fit_rates[1], 2),
            *[(f"hold-{r:g}", "mixed", r, 3 + i) for i, r in enumerate(a.holdout_rates)],
            *([("hold-long-prompt", "long-prompt", a.mix_rate, 9), ("hold-long-answer", "long-answer", a.mix_rate, 10)]
              if a.mixes else [])]

    def sweep(url: str) -> None:
        for label, mix, rate, seed in plan:
            record(url, traces[mix], store, label, rate, 10 if label == "warmup" else n, tok, seed, a.closed)

    if recorded:
        print(f"{store} exists: fitting its runs again without recording", file=sys.stderr)
    elif a.url:
        sweep(a.url)
    else:
        with serving(model=folder) as srv:
            sweep(srv.url)
    if a.record_only:
        return 0
    load_end = os.getloadavg()
    from burstbench.twin.calibrate import calibrate
    from burstbench.twin.vsim import Sched

    sched = Sched(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens, block_size=128)
    cal = calibrate(store, ["fit-low", "fit-high"], model=model, hardware=a.hardware, sched=sched,
                    max_evals=a.max_evals)
    cal.spec.write(a.out / "twin.yaml")
    sched = cal.spec.sched()
    base_hw_overrides: dict[str, float] = {}
    from burstbench.twin.fidelity import run_to_run

    table: dict[str, Any] = {"noise": run_to_run(store, "noise-a", "noise-b"), "runs": {},
                             "load": {"start": load_start, "end": load_end},
                             "twin": {k: v["value"] for k, v in cal.spec.uncertainty.items()}}
    from burstbench.errors import BurstbenchError
    from burstbench.twin.calibrate import read_run

    for label, *_ in plan[3:]:
        try:
            read_run(store, label)
        except BurstbenchError as exc:  # a sweep stopped early: say which runs are missing
            print(f"skipped {label}: {exc}", file=sys.stderr)
            continue
        table["runs"][label] = {
            "uncalibrated": predict(store, label, model, a.hardware, base_hw_overrides, sched),
            "twin": predict(store, label, model, a.hardware, cal.spec.overrides, sched, cal.spec.frontend_s),
        }
    report(table)
    if a.json:
        (a.out / "fidelity.json").write_text(json.dumps(table, indent=1, default=float))
    return 0


def report(table: dict[str, Any]) -> None:
    nz = table["noise"]
    print(f"load average at start {table['load']['start'][0]:.1f}, at end {table['load']['end'][0]:.1f}")
    print("twin: " + ", ".join(f"{k} {v:.4g}" for k, v in table["twin"].items()))
    print("run-to-run noise (two identical runs): " + ", ".join(
        f"{m} {q} {nz[m][q]:.1%}" for m in METRICS for q in QS if q in nz[m]))
    print(f"{'run':18s} {'metric':8s} {'q':4s} {'measured':>10s} {'uncal.':>9s} {'twin':>9s} {'noise':>7s}")
    errs: dict[str, dict[str, list[float]]] = {"uncalibrated": {m: [] for m in METRICS},
                                               "twin": {m: [] for m in METRICS}}
    for label, r in table["runs"].items():
        for m in METRICS:
            for q in QS:
                u, t = r["uncalibrated"][m][q], r["twin"][m][q]
                if t["rel_err"] is None:
                    continue
                print(f"{label:18s} {m:8s} {q:4s} {t['measured']:10.1f} {u['rel_err']:+9.1%} {t['rel_err']:+9.1%} "
                      f"{nz[m].get(q, float('nan')):7.1%}")
                if label.startswith("fit"):
                    continue
                errs["uncalibrated"][m].append(abs(u["rel_err"]))
                errs["twin"][m].append(abs(t["rel_err"]))
        th = r["twin"]["throughput"]
        print(f"{label:18s} {'req/s':8s} {'':4s} {th['measured']:10.3f} "
              f"{r['uncalibrated']['throughput']['twin'] / th['measured'] - 1:+9.1%} {th['twin'] / th['measured'] - 1:+9.1%}")
    print("MAPE over the held-out runs (p50 and p90): " + "; ".join(
        f"{side}: " + ", ".join(f"{m} {np.mean(v):.1%}" for m, v in e.items() if v) for side, e in errs.items()))


if __name__ == "__main__":
    raise SystemExit(main())
