"""The HTML report at scale: a store of a million requests to one file, against naive plotting.

Generates a results store with DuckDB ``range()`` straight into the file (one run;
requests with gamma-like TTFT, decoding at a per-request pace, ~2 % failures,
one token per chunk and ``--chunks-per-request`` chunks per success on average,
client and server telemetry at 1 Hz),
then times ``build_report`` on it and prints rows, bytes on disk, the report's
size and figure count.

Baseline, side by side in the same process: the naive report, which hands every
point to plotly (``go.Figure`` + ``to_html`` with plotly.js inlined): the CDFs of
TTFT, TPOT and E2EL as all sorted values and TTFT against send time as one marker
per request. It runs on ``--baseline-requests`` (default 200k; beyond that its HTML
grows past what a browser opens), and our report runs on a store of the same size,
so the ratio compares like with like; the 1M figures stand alone.

    python benchmarks/bench_report.py                          # 1M requests, 10 chunks each
    python benchmarks/bench_report.py --chunks-per-request 100 # 100M chunks
    python benchmarks/bench_report.py --requests 200000 --baseline-requests 50000
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from burstbench.reports.build import build_report
from burstbench.store import ResultsStore, RunInfo

SLO = "ttft=300ms,tpot=30ms,e2el=10s"


def generate(path: Path, n_requests: int, chunks_per_request: int, rate: float = 1000.0) -> str:
    """One run of ``n_requests`` at ``rate`` req/s, written by SQL (no Python rows)."""
    with ResultsStore(path) as st:
        rid = st.create_run(RunInfo(backend="bench", model="synthetic-8b", label="bench", target_rate=rate))
        k = max(chunks_per_request, 1)
        # 3M requests are 300M chunks: bound DuckDB so the generator spills instead of
        # taking a shared machine's memory (its default is 80 % of RAM).
        st.con.execute("SET memory_limit = '2GB'")
        st.con.execute("SET preserve_insertion_order = true")
        # One token per chunk (vLLM streams a token per SSE event): output lengths are
        # exponential with mean ~k, so the store holds ~k chunks per successful request.
        st.con.execute(
            """
            INSERT INTO requests
            SELECT $rid, i, 's' || (i % 50000), CAST(i % 5 AS INTEGER), 'tenant' || (i % 6), 'synthetic-8b',
                   'measure', sched, sched + lag, ft, ft, ft + (out - 1) * tpot, ft + (out - 1) * tpot + 0.0005,
                   100 + (i * 7919 % 1900), NULL, out, CASE WHEN ok THEN out END, CASE WHEN ok THEN out END,
                   NULL, NULL, CASE WHEN ok THEN out ELSE 0 END, CASE WHEN ok THEN 'ok' ELSE 'error' END,
                   CASE WHEN ok THEN 200 ELSE 500 END, CASE WHEN ok THEN NULL ELSE 'http_500' END,
                   CASE WHEN ok THEN NULL ELSE 'upstream error' END, CAST(i % 4 AS INTEGER)
            FROM (
                SELECT i, i / $rate AS sched, random() * 0.003 AS lag,
                       i / $rate + 0.02 + 0.08 * (-ln(random()) - ln(random())) AS ft,
                       0.012 + random() * 0.02 + 0.01 * sin(i / ($rate * 60.0)) ^ 2 AS tpot,
                       CAST(GREATEST(1, floor(-ln(random()) * $k + 0.5)) AS BIGINT) AS out,
                       random() > 0.02 AS ok
                FROM range($n) t(i)
            )
            """,
            {"rid": rid, "n": n_requests, "rate": rate, "k": k},
        )
        if chunks_per_request > 0:
            st.con.execute(
                """
                INSERT INTO chunks
                SELECT r.run_id, r.request_id, CAST(s.seq AS INTEGER),
                       r.first_token_s + s.seq * (r.last_token_s - r.first_token_s) / GREATEST(r.chunk_count - 1, 1)
                         + CASE WHEN s.seq > 0 THEN (hash(r.request_id, s.seq) % 1000) / 1e6 ELSE 0 END,
                       1, false
                FROM requests r, range(r.chunk_count) s(seq)
                WHERE r.run_id = $rid AND r.status = 'ok'
                ORDER BY r.request_id, s.seq  -- request by request, as the recorder and simulator write
                """,
                {"rid": rid},
            )
        dur = n_requests / rate + 5.0
        st.con.execute(
            """
            INSERT INTO telemetry
            SELECT $rid, t, src, name, v, NULL, NULL FROM (
                SELECT t::DOUBLE AS t, 'client' AS src, 'process_cpu_percent' AS name, 40 + 20 * random() AS v
                FROM range(CAST($d AS BIGINT)) r(t)
                UNION ALL SELECT t, 'client', 'process_rss_bytes', 3e8 + t * 1e4 FROM range(CAST($d AS BIGINT)) r(t)
                UNION ALL SELECT t, 'server', 'vllm:num_requests_running', 200 + 50 * sin(t / 60.0)
                FROM range(CAST($d AS BIGINT)) r(t)
                UNION ALL SELECT t, 'server', 'vllm:generation_tokens_total', t * 180000.0
                FROM range(CAST($d AS BIGINT)) r(t))
            """,
            {"rid": rid, "d": dur},
        )
        st.finish_run(rid, status="done", end_reason="completed", duration_s=dur)
        st.checkpoint()
    return rid


def naive_report(store: Path, out: Path) -> tuple[float, int]:
    """Every point to plotly: the obvious first version of a report."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t0 = time.perf_counter()
    con = duckdb.connect(str(store), read_only=True)
    cols = con.execute(
        "SELECT sent_s, first_token_s - sent_s AS ttft, last_token_s - sent_s AS e2el,"
        " CASE WHEN output_tokens_server > 1 THEN (last_token_s - first_token_s) / (output_tokens_server - 1) END"
        " AS tpot FROM requests WHERE status = 'ok'"
    ).fetchnumpy()
    con.close()
    fig = make_subplots(rows=2, cols=2, subplot_titles=("TTFT CDF", "TPOT CDF", "E2EL CDF", "TTFT over time"))
    for i, name in enumerate(("ttft", "tpot", "e2el")):
        v = np.sort(np.asarray(cols[name], dtype=float))
        v = v[np.isfinite(v)] * 1000.0
        fig.add_trace(go.Scatter(x=v, y=np.arange(1, v.size + 1) / v.size, mode="lines", name=name),
                      row=1 + i // 2, col=1 + i % 2)
    fig.add_trace(go.Scattergl(x=cols["sent_s"], y=np.asarray(cols["ttft"]) * 1000.0, mode="markers",
                               name="ttft"), row=2, col=2)
    out.write_text(fig.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")
    return time.perf_counter() - t0, out.stat().st_size


def ours(store: Path, out: Path, steps: dict[str, float] | None = None) -> tuple[float, int, int]:
    """Our report; ``steps`` collects seconds per step (from the progress callback)."""
    t0 = time.perf_counter()
    last = [t0, "start"]

    def tick(msg: str) -> None:
        now = time.perf_counter()
        if steps is not None:
            steps[last[1]] = steps.get(last[1], 0.0) + now - last[0]
        last[0], last[1] = now, msg

    res = build_report(store, out, slo=SLO, progress=tick)
    tick("end")
    return time.perf_counter() - t0, res.bytes, res.figures


def render_seconds(html: Path) -> float | None:
    """Seconds from navigation until every plotly figure has drawn, in headless Chromium."""
    import asyncio
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from chromium_cdp import CHROMIUM, Browser
    except ImportError:
        return None
    if CHROMIUM is None:
        return None

    async def go() -> float:
        async with Browser() as b:
            t0 = time.perf_counter()
            await b.open(html, timeout=300)
            await b.wait_for(
                "document.querySelectorAll('.js-plotly-plot').length > 0 && Array.from("
                "document.querySelectorAll('.js-plotly-plot')).every(e => e.querySelector('g.trace, image'))",
                timeout=300,
            )
            return time.perf_counter() - t0

    return asyncio.run(go())


def rows(store: Path) -> tuple[int, int]:
    con = duckdb.connect(str(store), read_only=True)
    r = con.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM chunks)").fetchone()
    con.close()
    return int(r[0]), int(r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--chunks-per-request", type=int, default=10)
    ap.add_argument("--baseline-requests", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=None, help="Where to put stores (default: a temp dir).")
    ap.add_argument("--reuse", action="store_true", help="Reuse stores already in --dir.")
    ap.add_argument("--browser", action="store_true", help="Also time opening the reports in headless Chromium.")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bb-bench-report-") if args.dir is None else None
    d = Path(tmp.name) if tmp else args.dir
    d.mkdir(parents=True, exist_ok=True)
    big = d / f"big-{args.requests}-{args.chunks_per_request}.duckdb"
    small = d / f"small-{args.baseline_requests}-{args.chunks_per_request}.duckdb"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared with other work)")
    for path, n in ((big, args.requests), (small, args.baseline_requests)):
        if args.reuse and path.exists():
            continue
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        generate(path, n, args.chunks_per_request)
        req, ch = rows(path)
        print(f"generated {path.name}: {req:,} requests, {ch:,} chunks, {path.stat().st_size / 1e6:,.0f} MB "
              f"on disk in {time.perf_counter() - t0:.1f} s")

    print(f"\n== same size: {args.baseline_requests:,} requests ==")
    t_ours_s, b_ours_s, figs = ours(small, d / "ours-small.html")
    gc.collect()
    t_naive, b_naive = naive_report(small, d / "naive-small.html")
    print(f"{'':28}{'time (s)':>10}{'HTML (MB)':>12}{'figures':>9}")
    print(f"{'burstbench report':28}{t_ours_s:>10.2f}{b_ours_s / 1e6:>12.2f}{figs:>9}")
    print(f"{'naive plotly, all points':28}{t_naive:>10.2f}{b_naive / 1e6:>12.2f}{4:>9}")
    print(f"ratio naive/ours: time {t_naive / t_ours_s:.2f}x, size {b_naive / b_ours_s:.2f}x "
          f"(ours has {figs} figures, naive 4)")
    if args.browser:
        r_ours, r_naive = render_seconds(d / "ours-small.html"), render_seconds(d / "naive-small.html")
        if r_ours is not None and r_naive is not None:
            print(f"open + render in headless Chromium: ours {r_ours:.1f} s ({figs} figures), "
                  f"naive {r_naive:.1f} s (4 figures); ratio naive/ours {r_naive / r_ours:.2f}x")

    print(f"\n== {args.requests:,} requests ==")
    req, ch = rows(big)
    steps: dict[str, float] = {}
    t_big, b_big, figs_big = ours(big, d / "ours-big.html", steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"store: {req:,} requests, {ch:,} chunks, {big.stat().st_size / 1e6:,.0f} MB on disk")
    print(f"burstbench report: {t_big:.1f} s (target < 30 s), {b_big / 1e6:.2f} MB HTML (target < 10 MB), "
          f"{figs_big} figures; peak RSS of this process {peak:,.0f} MB")
    print("  by step: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items() if v >= 0.05))
    print("  ('summarising runs' is burstbench.analysis.summarize + per-tenant + failures; the report's own")
    print("   aggregation is the CDF, time-series and telemetry steps)")
    if args.browser:
        r_big = render_seconds(d / "ours-big.html")
        if r_big is not None:
            print(f"  open + render in headless Chromium: {r_big:.1f} s")
    naive_est = b_naive / max(args.baseline_requests, 1) * args.requests
    print(f"naive plotly at this size would be ~{naive_est / 1e6:,.0f} MB of HTML (linear in requests; not run)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
