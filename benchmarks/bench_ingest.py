"""Ingest speed: ``burstbench`` BurstGPT ingest (CSV -> validated, rebased, sorted Parquet
Trace) against ``pandas.read_csv`` and ``polars.read_csv`` parsing the same file, in one run.

Each measurement runs in its own child process, in turn (pandas, polars, burstbench,
pandas, ...), so all three see the same machine load and each peak RSS is that child's
own (``os.wait4``). Inside the child only the call itself is timed (imports excluded,
for all three alike). The readers only parse the CSV into memory; burstbench also
validates every value, rebases, sorts if needed, measures resolution and ties, and
writes zstd Parquet atomically. The ratio is taken round by round (same load) and the
median round is printed. A fourth row times the whole ``burstbench trace ingest``
command (interpreter start and imports included) as a user runs it.

The default file is the real BurstGPT head (``burstbench/data/traces/
burstgpt_v1_head400.csv``, 400 rows) replicated to ``--rows``: copy k is shifted by
k x 1000 s and the rows are sorted by time, so the file is sorted like the release
files and as dense (about 0.4 requests/s). Replication repeats token counts every
400 rows, which Parquet compresses better than real data; ``--synthetic`` draws the
rows from distributions instead (Zipf tokens, gamma gaps), and ``--csv`` times a
file you have (e.g. the full ``BurstGPT_1.csv``).

    python benchmarks/bench_ingest.py                      # 10 million rows, 3 rounds
    python benchmarks/bench_ingest.py --rows 1000000 --rounds 5
    python benchmarks/bench_ingest.py --csv BurstGPT_1.csv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_HEAD = ROOT / "burstbench" / "data" / "traces" / "burstgpt_v1_head400.csv"
HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
SHIFT_S = 1000  # seconds between replicated copies: 25,000 copies span 290 days


def write_replicated_csv(path: Path, rows: int) -> int:
    """The real 400-row BurstGPT head, replicated and time-shifted to ``rows`` rows."""
    import polars as pl

    head = pl.read_csv(REAL_HEAD)
    copies = -(-rows // head.height)
    shift = pl.int_range(0, copies, eager=True).repeat_by(head.height).explode() * SHIFT_S
    df = (
        pl.concat([head] * copies)
        .with_columns(pl.col("Timestamp") + shift)
        .head(rows)
        .sort("Timestamp", maintain_order=True)
    )
    df.write_csv(path)
    return path.stat().st_size


def write_synthetic_csv(path: Path, rows: int, seed: int = 0) -> int:
    """``rows`` BurstGPT-format rows drawn with numpy; returns the file size in bytes."""
    import numpy as np
    import polars as pl

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


def child(kind: str, src: str, out: str) -> None:
    """Run one measurement in this (child) process and print {wall, cpu, rows} as JSON."""
    if kind == "pandas":
        import pandas as pd

        def call() -> int:
            return len(pd.read_csv(src))
    elif kind == "polars":
        import polars as pl

        def call() -> int:
            return pl.read_csv(src).height
    else:
        from burstbench.traces.ingest import ingest_file

        def call() -> int:
            return len(ingest_file(src, out))
    t0, c0 = time.perf_counter(), time.process_time()
    n = call()
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rows": n}))


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; its JSON line (if any), whole-process wall/CPU seconds and its own peak RSS (MB)."""
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        out, err = so.read().decode(errors="replace"), se.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err}")
    lines = [ln for ln in out.splitlines() if ln.startswith('{"wall"')]
    res = json.loads(lines[-1]) if lines else {}
    res.update(process_wall=wall, process_cpu=usage.ru_utime + usage.ru_stime, peak_mb=usage.ru_maxrss / 1024)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=4, metavar=("KIND", "ROWS", "PATH", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows to build (default 10M)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of pandas, polars, burstbench (default 3)")
    ap.add_argument("--synthetic", action="store_true", help="draw rows from distributions instead of replicating")
    ap.add_argument("--csv", type=Path, help="time this BurstGPT file instead of building one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also time the burstbench package found in DIR (e.g. `git archive OLD burstbench | tar -x -C DIR`), "
        "in the same rounds: a before/after from one run",
    )
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.build:
        kind, rows, path, seed = args.build
        if kind == "synthetic":
            write_synthetic_csv(Path(path), int(rows), int(seed))
        else:
            write_replicated_csv(Path(path), int(rows))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        out = Path(tmp) / "trace.parquet"
        if args.csv:
            src, how = args.csv.resolve(), f"given file {args.csv}"
        else:
            src = Path(tmp) / "BurstGPT_bench.csv"
            t0 = time.perf_counter()
            # Built in a child: Linux carries a parent's peak RSS into every child it
            # starts later, which would put a floor under the peaks measured below.
            kind = "synthetic" if args.synthetic else "replicated"
            subprocess.run([sys.executable, __file__, "--build", kind, str(args.rows), str(src), str(args.seed)],
                           check=True, cwd=ROOT)
            how = "synthetic rows" if args.synthetic else f"real BurstGPT head ({REAL_HEAD.name}) replicated"
            print(f"built the file in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        size = src.stat().st_size
        me = [sys.executable, str(Path(__file__).resolve()), "--child"]
        cli = shutil.which("burstbench") or "burstbench"
        kinds = {
            "pandas": [*me, "pandas", str(src), str(out)],
            "polars": [*me, "polars", str(src), str(out)],
            "burstbench": [*me, "burstbench", str(src), str(out)],
            "command": [cli, "trace", "ingest", str(src), "-o", str(out), "--json"],
        }
        envs = {k: None for k in kinds}
        if args.baseline:
            kinds["baseline"] = kinds["burstbench"]
            envs["baseline"] = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for r in range(args.rounds):  # in turn, so every kind sees the same load
            for kind, cmd in kinds.items():
                out.unlink(missing_ok=True)
                runs[kind].append(measure(cmd, envs[kind]))
            line = ", ".join(
                f"{k} {v[-1].get('wall', v[-1]['process_wall']):.2f} s" for k, v in runs.items()
            )
            print(f"round {r + 1}: {line} (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        rows = runs["burstbench"][0]["rows"]
        if not runs["pandas"][0]["rows"] == runs["polars"][0]["rows"] == rows:
            sys.exit(f"row counts differ: {[runs[k][0]['rows'] for k in ('pandas', 'polars', 'burstbench')]}")
        out_mb = out.stat().st_size / 1e6
    load_after = os.getloadavg()
    _print_table(runs, rows, size, how, out_mb, load_before, load_after, args.rounds, args.baseline)
    return 0


def _print_table(
    runs: dict[str, list[dict[str, float]]],
    rows: int,
    size: int,
    how: str,
    out_mb: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    rounds: int,
    baseline: Path | None,
) -> None:
    med = statistics.median
    print(f"{rows:,} rows, {size / 1e6:,.0f} MB CSV ({how}); Parquet written {out_mb:,.1f} MB")
    print(f"median of {rounds} rounds, run in turn; the call alone (wall / CPU of all threads), peak RSS of the process")
    labels = {
        "pandas": "pandas.read_csv (parse only)",
        "polars": "polars.read_csv (parse only)",
        "burstbench": "burstbench ingest -> Parquet",
        "command": "`burstbench trace ingest` (whole command)",
        "baseline": f"baseline burstbench ({baseline}) -> Parquet",
    }
    for kind, label in labels.items():
        if kind not in runs:
            continue
        rs = runs[kind]
        wall = med(r.get("wall", r["process_wall"]) for r in rs)
        cpu = med(r.get("cpu", r["process_cpu"]) for r in rs)
        peak = med(r["peak_mb"] for r in rs)
        lo = min(r.get("wall", r["process_wall"]) for r in rs)
        hi = max(r.get("wall", r["process_wall"]) for r in rs)
        print(f"  {label:52s} {wall:6.2f} s [{lo:.2f}-{hi:.2f}] {cpu:6.2f} cpu-s  peak {peak:7,.0f} MB")
    for ref in ("pandas", "polars", "baseline"):
        if ref not in runs:
            continue
        ratio = [p["wall"] / b["wall"] for p, b in zip(runs[ref], runs["burstbench"], strict=True)]
        what = "baseline ingest" if ref == "baseline" else f"{ref}.read_csv"
        print(
            f"  {what} time / burstbench ingest time: {med(ratio):.2f}x "
            f"[{min(ratio):.2f}-{max(ratio):.2f}] (over 1 means burstbench is faster)"
        )
    print(
        f"  load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    sys.exit(main())
