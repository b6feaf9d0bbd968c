"""Soak: a long open-loop run against the reference engine; fails on memory growth or lag drift.

Why: a load generator that leaks a few kilobytes per request, or whose schedule lag
creeps up as its buffers grow, looks fine in a 30-second test and lies in an
hour-long run. This script runs ``burstbench run`` (the real CLI, its own process)
at a Poisson rate against ``burstbench serve`` (its own process, model clock
sped up by ``--time-scale``) for ``--minutes``, samples the client process's RSS
and CPU every ``--sample-s`` seconds with psutil (independently of the run's own
telemetry), then reads the results file and decides:

* memory: least-squares slope of client RSS over the second half of the run.
  FAIL when the slope exceeds ``--max-slope-mib-per-min`` (default 1.0 MiB/min,
  i.e. 60 MiB/hour) *and* RSS rose by more than ``--min-growth-mib`` (default 16
  MiB) over that half -- the second condition keeps allocator noise on a short run
  from failing it. The first half is excluded: caches, the DuckDB buffer pool and
  the interpreter warm up there.
* lag drift: schedule lag (sent_s - scheduled_s) p99 in the last window vs the
  first window (window = max(60 s, 10 % of the run), the first starting after 10 s).
  FAIL when last > 2 x first + 5 ms.
* accounting: every scheduled request must be a row exactly once (no gaps/dupes)
  and the run must end 'done'.

Exit status 0 = pass, 1 = a check failed, 2 = the soak could not run. One JSON
object on stdout (figures and verdicts), a human summary on stderr.

    python benchmarks/soak.py --minutes 30            # the issue's soak
    python benchmarks/soak.py --minutes 2 --rate 5    # a quick look
    python benchmarks/soak.py --check-detectors       # the verdicts on synthetic leak/drift series
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import psutil

from burstbench.traces.schema import Trace, conform, write_trace

MAX_MINUTES = 240.0


def _start_server(time_scale: float, seed: int) -> tuple[subprocess.Popen, str]:
    """``burstbench serve`` on a free loopback port; returns (process, url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "burstbench", "serve", "--port", "0", "--time-scale", str(time_scale),
         "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    box: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                box["url"] = json.loads(line)["url"]
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(60.0)
    if "url" not in box:
        proc.kill()
        raise RuntimeError("burstbench serve did not report its URL within 60 s")
    return proc, box["url"]


def _trace(path: Path, n: int, seed: int) -> None:
    """Lengths only (rate mode replays lengths): prompts 64-512 tokens, answers 16-128."""
    rng = np.random.default_rng(seed)
    df = pl.DataFrame({
        "arrival_s": np.arange(n, dtype=np.float64),
        "input_tokens": rng.integers(64, 513, n),
        "output_tokens": rng.integers(16, 129, n),
    })
    write_trace(Trace(conform(df), {"source": "soak"}), path)


def _sample(pid: int, every_s: float, stop: threading.Event, out: list[tuple[float, float, float]]) -> None:
    """(t since start, RSS bytes, CPU percent of one core) of the client process."""
    try:
        p = psutil.Process(pid)
        p.cpu_percent(None)
    except psutil.Error:
        return
    t0 = time.monotonic()
    while not stop.wait(every_s):
        try:
            with p.oneshot():
                out.append((time.monotonic() - t0, float(p.memory_info().rss), p.cpu_percent(None)))
        except psutil.Error:
            return


def _slope_mib_per_min(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Least-squares RSS slope (MiB/min) and RSS growth (MiB) over the second half."""
    if len(samples) < 4:
        return 0.0, 0.0
    arr = np.array(samples)
    half = arr[arr[:, 0] >= arr[-1, 0] / 2]
    if len(half) < 2:
        return 0.0, 0.0
    slope = np.polyfit(half[:, 0] / 60.0, half[:, 1] / 2**20, 1)[0]
    growth = (half[-len(half) // 4:, 1].mean() - half[: max(1, len(half) // 4), 1].mean()) / 2**20
    return float(slope), float(growth)


def _lag_windows(con: duckdb.DuckDBPyConnection, run_id: str, duration: float) -> dict[str, float]:
    win = max(60.0, 0.1 * duration)
    first_lo, first_hi = 10.0, 10.0 + win
    last_lo, last_hi = duration - win, duration
    q = ("SELECT quantile_cont(sent_s - scheduled_s, 0.99) * 1000, count(*) FROM requests"
         " WHERE run_id = ? AND sent_s IS NOT NULL AND scheduled_s >= ? AND scheduled_s < ?")
    p_first, n_first = con.execute(q, [run_id, first_lo, first_hi]).fetchone()
    p_last, n_last = con.execute(q, [run_id, last_lo, last_hi]).fetchone()
    return {"window_s": win, "lag_p99_first_ms": p_first, "lag_p99_last_ms": p_last,
            "n_first": n_first, "n_last": n_last}


def memory_verdict(samples: list[tuple[float, float, float]], max_slope: float, min_growth: float) -> bool:
    """True when client RSS is bounded (see the module docstring for the rule)."""
    slope, growth = _slope_mib_per_min(samples)
    return not (slope > max_slope and growth > min_growth)


def lag_verdict(p99_first_ms: float, p99_last_ms: float) -> bool:
    """True when the schedule lag did not drift: last <= 2 x first + 5 ms."""
    return p99_last_ms <= 2.0 * p99_first_ms + 5.0


def check_detectors() -> int:
    """The verdicts on synthetic series: a leak and a drift must fail, noise must pass."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 1800, 5.0)
    flat = [(x, 250 * 2**20 + rng.normal(0, 2**20), 5.0) for x in t]
    leak = [(x, 250 * 2**20 + x / 60 * 2 * 2**20 + rng.normal(0, 2**20), 5.0) for x in t]  # 2 MiB/min
    warm = [(x, (150 + 100 * min(1.0, x / 300)) * 2**20, 5.0) for x in t]  # grows, then flat
    checks = {
        "flat RSS passes": memory_verdict(flat, 1.0, 16.0),
        "2 MiB/min leak fails": not memory_verdict(leak, 1.0, 16.0),
        "warm-up growth passes": memory_verdict(warm, 1.0, 16.0),
        "steady lag passes": lag_verdict(3.0, 3.5),
        "lag x3 fails": not lag_verdict(3.0, 12.0),
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}", file=sys.stderr)
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    if (argv is None and sys.argv[1:] == ["--check-detectors"]) or argv == ["--check-detectors"]:
        return check_detectors()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help=f"run length (<= {MAX_MINUTES:g}) [30]")
    ap.add_argument("--rate", type=float, default=8.0, help="Poisson requests/s [8]")
    ap.add_argument("--time-scale", type=float, default=10.0, help="reference engine clock speed-up [10]")
    ap.add_argument("--sample-s", type=float, default=2.0, help="client RSS/CPU sampling interval [2]")
    ap.add_argument("--max-slope-mib-per-min", type=float, default=1.0)
    ap.add_argument("--min-growth-mib", type=float, default=16.0)
    ap.add_argument("--keep", type=Path, default=None, help="copy the results file here")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not 0 < a.minutes <= MAX_MINUTES:
        print(f"--minutes must be in (0, {MAX_MINUTES:g}]", file=sys.stderr)
        return 2
    duration = a.minutes * 60.0
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bb-soak-") as tmp:
        tmpd = Path(tmp)
        trace = tmpd / "soak.parquet"
        _trace(trace, 4096, a.seed)
        store = tmpd / "soak.duckdb"
        try:
            server, url = _start_server(a.time_scale, a.seed)
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()
        try:
            client = subprocess.Popen(
                [sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace), "-o", str(store),
                 "--rate", str(a.rate), "--duration", str(duration), "--seed", str(a.seed), "--quiet", "--json",
                 "--timeout", "120"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sampler = threading.Thread(target=_sample, args=(client.pid, a.sample_s, stop, samples), daemon=True)
            sampler.start()
            try:
                _out, err = client.communicate(timeout=duration + 300.0)
            except subprocess.TimeoutExpired:
                client.send_signal(signal.SIGINT)
                _out, err = client.communicate(timeout=60.0)
            stop.set()
            sampler.join(5.0)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15.0)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5.0)
        if client.returncode != 0:
            print(f"soak: burstbench run exited {client.returncode}: {err[-2000:]}", file=sys.stderr)
        con = duckdb.connect(str(store), read_only=True)
        run_id, status, end_reason, dur = con.execute(
            "SELECT run_id, status, end_reason, duration_s FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        n_req, n_ids, n_dup = con.execute(
            "SELECT count(*), count(DISTINCT request_id), count(*) - count(DISTINCT request_id)"
            " FROM requests WHERE run_id = ?", [run_id]).fetchone()
        max_id = con.execute("SELECT max(request_id) FROM requests WHERE run_id = ?", [run_id]).fetchone()[0]
        n_chunks = con.execute("SELECT count(*) FROM chunks WHERE run_id = ?", [run_id]).fetchone()[0]
        by_status = dict(con.execute("SELECT status, count(*) FROM requests WHERE run_id = ? GROUP BY 1",
                                     [run_id]).fetchall())
        lag = _lag_windows(con, run_id, float(dur or duration))
        con.close()
        if a.keep is not None:
            import shutil

            shutil.copy(store, a.keep)

    rss = np.array([s[1] for s in samples]) if samples else np.zeros(1)
    cpu = np.array([s[2] for s in samples]) if samples else np.zeros(1)
    slope, growth = _slope_mib_per_min(samples)
    mem_ok = memory_verdict(samples, a.max_slope_mib_per_min, a.min_growth_mib)
    p_first = lag["lag_p99_first_ms"] or 0.0
    p_last = lag["lag_p99_last_ms"] or 0.0
    lag_ok = lag_verdict(p_first, p_last)
    gaps = (max_id + 1 - n_ids) if max_id is not None else 0
    acct_ok = status == "done" and n_dup == 0 and gaps == 0 and n_req > 0
    result = {
        "minutes": a.minutes, "rate": a.rate, "time_scale": a.time_scale, "loadavg_at_start": load,
        "run_status": status, "end_reason": end_reason, "duration_s": dur,
        "requests": n_req, "chunks": n_chunks, "by_status": by_status, "duplicates": n_dup, "id_gaps": gaps,
        "rss_start_mib": float(rss[0] / 2**20), "rss_peak_mib": float(rss.max() / 2**20),
        "rss_end_mib": float(rss[-1] / 2**20), "rss_slope_2nd_half_mib_per_min": slope,
        "rss_growth_2nd_half_mib": growth, "cpu_mean_percent": float(cpu.mean()),
        "cpu_p95_percent": float(np.percentile(cpu, 95)), **lag,
        "checks": {"memory_bounded": mem_ok, "lag_no_drift": lag_ok, "accounting": acct_ok},
        "samples": len(samples),
    }
    print(json.dumps(result))
    print(f"soak {a.minutes:g} min @ {a.rate:g} req/s: {n_req} requests, {n_chunks} chunks, status {status}; "
          f"RSS start/peak/end {result['rss_start_mib']:.1f}/{result['rss_peak_mib']:.1f}/"
          f"{result['rss_end_mib']:.1f} MiB, 2nd-half slope {slope:+.3f} MiB/min ({growth:+.1f} MiB); "
          f"lag p99 first/last window {p_first:.2f}/{p_last:.2f} ms; CPU mean {result['cpu_mean_percent']:.0f}% "
          f"-> memory {'OK' if mem_ok else 'FAIL'}, lag {'OK' if lag_ok else 'FAIL'}, "
          f"accounting {'OK' if acct_ok else 'FAIL'}", file=sys.stderr)
    return 0 if (mem_ok and lag_ok and acct_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
