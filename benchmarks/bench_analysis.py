"""Analysis at scale: every metric and the SLO table over a large results store.

Generates a store (default 1 million requests, 100 chunks each = 100 million chunks)
with DuckDB ``range()`` straight into the file, then times ``summarize`` (every
DESIGN section 4 metric plus goodput for an SLO) against a baseline that loads the
same columns into pandas/numpy and computes the same numbers there, and checks that
both agree. Prints sizes (rows, bytes on disk), times, the ratio and peak memory.

    python benchmarks/bench_analysis.py                       # 1M requests, 100M chunks
    python benchmarks/bench_analysis.py --requests 100000 --chunks-per-request 20
    python benchmarks/bench_analysis.py --reuse /tmp/big.duckdb   # skip generation
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

from burstbench.analysis.metrics import summarize
from burstbench.store import ResultsStore, RunInfo

SLO = {"ttft": 0.25, "tpot": 0.03, "e2el": 5.0}


# Per-request randomness as functions of the request id, so requests and chunks can be
# generated independently, each in one ordered range() scan.
_FT = "({i} / 1000.0 + 0.05 + (hash({i}, 2) % 1000000) / 1e6 * 0.3)"
_GAP = "(0.01 + (hash({i}, 3) % 1000000) / 1e6 * 0.02)"


def generate(path: Path, n_requests: int, chunks_per_request: int) -> str:
    """Fill ``path`` with one run: 1000 req/s, 2% failures (streams broken after their
    last chunk), ``k`` chunks per request of one token each, 5% of chunks carrying two
    (as with speculative decoding), so token ITL differs from chunk ITL. Chunks are
    written request by request in ``seq`` order, as the load generator and the
    simulator write them."""
    k = chunks_per_request
    ft, gap = _FT.format(i="i"), _GAP.format(i="i")
    with ResultsStore(path) as st:
        st.con.execute("SET enable_progress_bar = false")
        rid = st.create_run(RunInfo(backend="bench", model="synthetic", label="bench", target_rate=1000.0))
        dur = n_requests / 1000.0 + 10.0
        st.con.execute(
            f"""
            INSERT INTO requests
            SELECT ?, i, 's' || (i % 5000), CAST(i % 7 AS INTEGER), 'tenant' || (i % 4), NULL, 'measure',
                   i / 1000.0, i / 1000.0 + (hash(i, 1) % 1000) / 5e5, {ft}, {ft} + 0.001,
                   {ft} + (? - 1) * {gap}, {ft} + (? - 1) * {gap} + 0.0005,
                   100 + (i % 900), NULL, 256, CASE WHEN ok THEN CAST(? * 1.05 AS BIGINT) END, NULL, NULL, NULL,
                   ?, CASE WHEN ok THEN 'ok' ELSE 'error' END,
                   CASE WHEN ok THEN 200 ELSE 500 END, CASE WHEN ok THEN NULL ELSE 'http_500' END,
                   NULL, CAST(i % 8 AS INTEGER)
            FROM (SELECT i, hash(i, 4) % 50 <> 0 AS ok FROM range(?) t(i))
            """,
            [rid, k, k, k, k, n_requests],
        )
        st.con.execute(
            f"""
            INSERT INTO chunks
            SELECT ?, i, CAST(seq AS INTEGER),
                   {ft} + seq * {gap} + CASE WHEN seq > 0 THEN (hash(i, seq) % 1000) / 1e7 ELSE 0 END,
                   CAST(CASE WHEN hash(i, seq, 5) % 20 = 0 THEN 2 ELSE 1 END AS INTEGER), false
            FROM (SELECT j // ? AS i, j % ? AS seq FROM range(?) t(j))
            """,
            [rid, k, k, n_requests * k],
        )
        st.finish_run(rid, status="done", end_reason="completed", duration_s=dur)
        st.checkpoint()
    return rid


def baseline(path: Path, rid: str) -> dict[str, float]:
    """The same numbers with pandas/numpy after loading the columns (what a notebook does)."""
    con = duckdb.connect(str(path), read_only=True)
    req = con.execute(
        "SELECT request_id, status, sent_s, first_token_s, last_token_s, input_tokens, output_tokens_server"
        " FROM requests WHERE run_id = ? AND phase = 'measure'",
        [rid],
    ).df()
    ok_ids = req.request_id[req.status == "ok"].to_numpy()
    ch = con.execute("SELECT request_id, seq, t_s, tokens FROM chunks WHERE run_id = ?", [rid]).fetchnumpy()
    dur = con.execute("SELECT measure_end_s - measure_start_s FROM runs WHERE run_id = ?", [rid]).fetchone()[0]
    con.close()
    ok = req[req.status == "ok"]
    ttft = (ok.first_token_s - ok.sent_s).to_numpy()
    e2el = (ok.last_token_s - ok.sent_s).to_numpy()
    out = ok.output_tokens_server.to_numpy()
    multi = out > 1
    tpot = (e2el[multi] - ttft[multi]) / (out[multi] - 1)
    keep = np.isin(ch["request_id"], ok_ids)
    order = np.lexsort((ch["seq"][keep], ch["request_id"][keep]))
    rq, ts = ch["request_id"][keep][order], ch["t_s"][keep][order]
    tk = np.maximum(np.nan_to_num(np.asarray(ch["tokens"][keep][order], dtype=float), nan=1.0), 1).astype(np.int64)
    same = rq[1:] == rq[:-1]
    gaps = np.diff(ts)[same]
    token_itl = np.repeat(gaps / tk[1:][same], tk[1:][same])
    res: dict[str, float] = {}
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", gaps), ("itltoken", token_itl), ("e2el", e2el)):
        res[f"{name}_mean"] = float(np.mean(xs)) * 1000
        for p in (50, 90, 95, 99):
            res[f"{name}_p{p}"] = float(np.percentile(xs, p)) * 1000
    all_tpot = np.where(multi, (e2el - ttft) / np.maximum(out - 1, 1), 0.0)
    good = (ttft <= SLO["ttft"]) & (all_tpot <= SLO["tpot"]) & (e2el <= SLO["e2el"])
    res["request_goodput"] = float(good.sum()) / dur
    res["output_throughput"] = float(out.sum()) / dur
    return res


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--chunks-per-request", type=int, default=100)
    ap.add_argument("--reuse", type=Path, help="an existing store made by this script (skips generation)")
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()

    tmpdir = None
    if args.reuse and args.reuse.exists():
        path = args.reuse
        rid = duckdb.connect(str(path), read_only=True).execute("SELECT max(run_id) FROM runs").fetchone()[0]
        print(f"reusing {path}")
    else:
        if args.reuse:
            path = args.reuse
        else:
            tmpdir = tempfile.mkdtemp(prefix="bb-bench-")
            path = Path(tmpdir) / "big.duckdb"
        t = time.perf_counter()
        rid = generate(path, args.requests, args.chunks_per_request)
        print(f"generated in {time.perf_counter() - t:.1f} s")
    con = duckdb.connect(str(path), read_only=True)
    n_req = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    n_chunks = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
    con.close()
    size = os.path.getsize(path)
    print(f"store: {n_req:,} requests, {n_chunks:,} chunks, {size / 1e6:,.0f} MB on disk ({path})")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min load average, {os.cpu_count()} CPUs; other processes share them)")

    gc.collect()
    rss0 = rss_mb()
    t, c = time.perf_counter(), time.process_time()
    s = summarize(path, rid, slo=SLO)
    t_ours, c_ours = time.perf_counter() - t, time.process_time() - c
    print(f"burstbench summarize (every metric + SLO table): {t_ours:.2f} s wall, {c_ours:.2f} s CPU"
          f"  (peak RSS {rss_mb():,.0f} MB, was {rss0:,.0f})")

    if not args.no_baseline:
        t, c = time.perf_counter(), time.process_time()
        b = baseline(path, rid)
        t_base, c_base = time.perf_counter() - t, time.process_time() - c
        print(f"pandas/numpy baseline (load columns + same metrics): {t_base:.2f} s wall, {c_base:.2f} s CPU"
              f"  (peak RSS {rss_mb():,.0f} MB)")
        print(f"ratio baseline / burstbench: {t_base / t_ours:.2f}x wall, {c_base / c_ours:.2f}x CPU")
        worst = 0.0
        for k, v in b.items():
            if k in ("request_goodput", "output_throughput"):
                ours = s["goodput"]["request_goodput"] if k == "request_goodput" else s[k]
            else:
                m, stat = k.split("_")
                ours = s["itl_token_ms" if m == "itltoken" else f"{m}_ms"][stat]
            worst = max(worst, abs(ours - v) / max(abs(v), 1e-12))
        print(f"agreement: worst relative difference {worst:.2e} over {len(b)} numbers")
    print(
        f"headline: ttft p99 {s['ttft_ms']['p99']:.1f} ms, itl p99 {s['itl_ms']['p99']:.2f} ms, "
        f"attainment {s['goodput']['slo_attainment']:.3f}, peak concurrency {s['peak_concurrency']}"
    )
    if tmpdir and not args.keep:
        path.unlink()
        os.rmdir(tmpdir)


if __name__ == "__main__":
    main()
