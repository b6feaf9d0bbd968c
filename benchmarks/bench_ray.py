"""Ray load generation vs local worker processes, side by side against one server.

Why: ``--ray`` must cost nothing in schedule accuracy compared with ``--workers N``
on one host (the actors run the same worker code; only the transport and the clock
hand-off differ). Both runs send the same Poisson schedule (same seed) to the same
StreamServer (its own process) in the same minute; the script prints, for each,
the achieved rate vs target, schedule lag p50/p99 overall and per worker, TTFT
p50, and for Ray the measured clock offsets and start skew, plus the Ray/local
ratios. The Ray cluster is a local one (``ray.init`` on this host, usage stats
off, files in a temporary directory), so this measures overhead, not a network.

    python benchmarks/bench_ray.py                  # 200 req/s for 10 s, 2 workers
    python benchmarks/bench_ray.py --rate 500 --duration 20 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import polars as pl

from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace, conform


def _server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "burstbench.testing.stream_server", "--port", "0",
                             "--ttft", "0.01", "--itl", "0.005"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise SystemExit("stream server did not start")
    return proc, json.loads(line)["url"]


def _figures(path: Path, run_id: str) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        n, dur, p50, p99, ttft = con.execute(
            "SELECT count(*), max(sent_s) - min(sent_s), quantile_cont(sent_s - scheduled_s, 0.5) * 1e3,"
            " quantile_cont(sent_s - scheduled_s, 0.99) * 1e3,"
            " quantile_cont(first_token_s - sent_s, 0.5) FILTER (WHERE status = 'ok') * 1e3"
            " FROM requests WHERE run_id = ?", [run_id]).fetchone()
        per_worker = dict(con.execute(
            "SELECT worker_id, quantile_cont(sent_s - scheduled_s, 0.99) * 1e3 FROM requests WHERE run_id = ?"
            " GROUP BY 1 ORDER BY 1", [run_id]).fetchall())
        ok = con.execute("SELECT count(*) FROM requests WHERE run_id = ? AND status = 'ok'", [run_id]).fetchone()[0]
        tele = con.execute("SELECT name, worker_id, value FROM telemetry WHERE run_id = ? AND name IN"
                           " ('clock_offset_ms', 'clock_rtt_ms', 'start_skew_ms')", [run_id]).fetchall()
    finally:
        con.close()
    return {"requests": n, "ok": ok, "achieved_rate": (n - 1) / dur if dur else None, "lag_p50_ms": p50,
            "lag_p99_ms": p99, "lag_p99_per_worker_ms": per_worker, "ttft_p50_ms": ttft,
            "clock": [(name, w, round(v, 4)) for name, w, v in tele]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bbray-"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_TMPDIR"] = str(tmp)
    (tmp / "ray").mkdir()
    trace = Trace(conform(pl.DataFrame({"arrival_s": [0.0] * 64, "input_tokens": [16] * 64,
                                        "output_tokens": [4] * 64})))
    server, url = _server()
    out: dict = {"rate": a.rate, "duration_s": a.duration, "workers": a.workers, "loadavg": os.getloadavg()}
    try:
        sc = Scenario(url=url, mode="rate", rate=a.rate, duration_s=a.duration, workers=a.workers,
                      scrape_metrics=False, seed=1)
        t = time.perf_counter()
        res = execute(trace, sc, tmp / "local.duckdb", progress=False)
        out["local"] = _figures(tmp / "local.duckdb", res.run_id) | {"wall_s": time.perf_counter() - t}
        import ray

        from burstbench.loadgen.ray_driver import execute_ray

        t = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False,
                 logging_level="WARNING", _node_ip_address="127.0.0.1")  # loopback only
        out["ray_init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        res = execute_ray(trace, sc, tmp / "ray.duckdb", address="local", progress=False)
        out["ray"] = _figures(tmp / "ray.duckdb", res.run_id) | {"wall_s": time.perf_counter() - t}
        ray.shutdown()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    lo, ry = out["local"], out["ray"]
    out["ratio_ray_over_local"] = {k: (ry[k] / lo[k] if lo[k] else None)
                                   for k in ("achieved_rate", "lag_p50_ms", "lag_p99_ms", "ttft_p50_ms")}
    print(json.dumps(out))
    for name in ("local", "ray"):
        f = out[name]
        print(f"{name:5s}: {f['requests']} req ({f['ok']} ok), achieved {f['achieved_rate']:.1f}/{a.rate:g} req/s, "
              f"lag p50/p99 {f['lag_p50_ms']:.2f}/{f['lag_p99_ms']:.2f} ms, per-worker p99 "
              f"{ {k: round(v, 2) for k, v in f['lag_p99_per_worker_ms'].items()} }, TTFT p50 "
              f"{f['ttft_p50_ms']:.2f} ms, wall {f['wall_s']:.1f} s", file=sys.stderr)
    print(f"ray clock: {out['ray']['clock']}; ray.init {out['ray_init_s']:.1f} s; load avg {out['loadavg']}",
          file=sys.stderr)
    print("ray/local: " + ", ".join(f"{k} x{v:.3f}" for k, v in out["ratio_ray_over_local"].items() if v),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
