"""Ingest speed: ``burstbench`` BurstGPT ingest (CSV -> validated, rebased, sorted Parquet
Trace) against ``pandas.read_csv`` of the same file, side by side in one process.

The file is BurstGPT-format (the 6-column ``BurstGPT_1.csv`` layout: integer second
timestamps, two models, Zipf-ish token counts, ~1 % failed rows with 0 response tokens),
generated with numpy into a temporary directory and deleted afterwards. pandas only
parses the CSV into memory; burstbench also validates every value, rebases, sorts,
detects resolution and ties, and writes zstd Parquet atomically, so the ratio is
conservative for burstbench.

    python benchmarks/bench_ingest.py               # 10 million rows
    python benchmarks/bench_ingest.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def write_burstgpt_csv(path: Path, rows: int, seed: int = 0) -> int:
    """Write ``rows`` BurstGPT-format rows with numpy; returns the file size in bytes."""
    import polars as pl  # only as a fast CSV writer for the numpy arrays

    rng = np.random.default_rng(seed)
    chunk = 2_000_000
    t = 0.0
    with path.open("wb") as fh:
        fh.write((HEADER + "\n").encode())
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            gaps = rng.gamma(0.5, 2.0, n)
            ts = np.floor(t + np.cumsum(gaps)).astype(np.int64)  # 1 s resolution, many ties
            t += float(gaps.sum())
            req = np.minimum(rng.zipf(1.3, n), 1_600).astype(np.int64) * 20
            resp = np.minimum(rng.zipf(1.4, n), 800).astype(np.int64) * 10
            resp[rng.random(n) < 0.01] = 0  # failed requests
            model = np.where(rng.random(n) < 0.75, "ChatGPT", "GPT-4")
            log = np.where(rng.random(n) < 0.6, "Conversation log", "API log")
            df = pl.DataFrame(
                {
                    "Timestamp": ts,
                    "Model": model,
                    "Request tokens": req,
                    "Response tokens": resp,
                    "Total tokens": req + resp,
                    "Log Type": log,
                }
            )
            df.write_csv(fh, include_header=False)
    return path.stat().st_size


def time_pandas(path: Path) -> tuple[float, float, int]:
    import pandas as pd

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    df = pd.read_csv(path)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(df)
    del df
    return dt, cpu, n


def time_burstbench(path: Path, out: Path) -> tuple[float, float, int]:
    from burstbench.traces.ingest import ingest_file

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    trace = ingest_file(path, out, fmt=None)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(trace)
    del trace
    return dt, cpu, n


def time_burstbench_in_memory(path: Path) -> tuple[float, float, int]:
    from burstbench.traces.ingest import ingest

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    trace = ingest(path)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(trace)
    del trace
    return dt, cpu, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows to generate (default 10M)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each, best kept (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        src = Path(tmp) / "BurstGPT_bench.csv"
        out = Path(tmp) / "trace.parquet"
        t0 = time.perf_counter()
        size = write_burstgpt_csv(src, args.rows, args.seed)
        print(
            f"generated {args.rows:,} rows, {size / 1e6:,.0f} MB in {time.perf_counter() - t0:.1f} s "
            f"(load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)",
            file=sys.stderr,
        )
        bb, pd_, mem = [], [], []
        for i in range(args.repeat):  # alternate so all see the same machine load
            pd_.append(time_pandas(src))
            bb.append(time_burstbench(src, out))
            mem.append(time_burstbench_in_memory(src))
            print(
                f"run {i + 1}: pandas {pd_[-1][0]:.2f} s, burstbench->Parquet {bb[-1][0]:.2f} s, "
                f"burstbench in memory {mem[-1][0]:.2f} s",
                file=sys.stderr,
            )
        assert bb[0][2] == pd_[0][2] == mem[0][2] == args.rows, (bb[0][2], pd_[0][2])
        best = {name: min(runs) for name, runs in (("pandas", pd_), ("bb", bb), ("mem", mem))}
        out_mb = out.stat().st_size / 1e6
    n = args.rows
    print(f"rows {n:,}; best of {args.repeat} alternating runs; wall clock (CPU seconds, all threads)")
    for label, key in (
        ("pandas.read_csv", "pandas"),
        ("burstbench ingest -> Parquet", "bb"),
        ("burstbench ingest (in memory)", "mem"),
    ):
        wall, cpu, _ = best[key]
        print(f"{label:30s} {wall:7.2f} s ({cpu:6.2f} cpu-s)  {n / wall:12,.0f} rows/s")
    print(f"Parquet written: {out_mb:,.0f} MB")
    pw = best["pandas"][0]
    print(f"ratio rows/s burstbench->Parquet / pandas.read_csv:  {pw / best['bb'][0]:.2f}x")
    print(f"ratio rows/s burstbench in memory / pandas.read_csv: {pw / best['mem'][0]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
