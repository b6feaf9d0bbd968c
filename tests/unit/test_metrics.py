"""Metrics over real DuckDB stores equal vLLM's ``bench serve`` formulas, computed here with numpy.

The reference below re-implements vLLM's ``calculate_metrics`` from its definitions
(TPOT only for outputs > 1 token, ITL pooled over chunk gaps of successful
requests, ``np.percentile`` linear, ``np.std`` population, throughputs over the
wall duration) on the same per-request timings the store receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench.analysis.metrics import open_store, summarize
from burstbench.errors import StoreError, UsageError
from burstbench.store import CHUNK_COLUMNS, REQUEST_COLUMNS, ResultsStore, RunInfo

PCTS = (50, 90, 95, 99)


@dataclass
class Req:
    """What a client recorded for one request (vLLM's RequestFuncOutput plus our extras)."""

    scheduled: float
    sent: float
    ok: bool
    prompt_len: int
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int | None] = field(default_factory=list)
    out_server: int | None = None
    out_counted: int | None = None
    visible: float | None = None
    end: float | None = None
    phase: str = "measure"
    status: str = "ok"
    tenant: str | None = None


def random_run(rng: np.random.Generator, n: int = 300) -> list[Req]:
    reqs: list[Req] = []
    t = 0.0
    for i in range(n):
        t += float(rng.exponential(0.05))
        lag = float(rng.exponential(0.002))
        ok = rng.random() > 0.12
        k = int(rng.integers(1, 25))
        ttft = float(rng.gamma(2.0, 0.05))
        gaps = rng.gamma(2.0, 0.01, size=k - 1)
        times = list(t + lag + ttft + np.concatenate([[0.0], np.cumsum(gaps)]))
        toks = [int(x) for x in rng.integers(1, 4, size=k)]
        r = Req(scheduled=t, sent=t + lag, ok=ok, prompt_len=int(rng.integers(10, 2000)), tenant=f"t{i % 3}")
        if ok:
            r.chunk_times, r.chunk_tokens = times, toks
            total = sum(toks)
            if rng.random() < 0.2:
                r.out_counted = total  # server gave no usage: counted tokens stand in
            else:
                r.out_server = total
            r.visible = times[min(1, k - 1)]
            r.end = times[-1] + 0.001
        else:
            r.status = str(rng.choice(["error", "timeout", "cancelled"]))
            part = int(rng.integers(0, k))
            r.chunk_times, r.chunk_tokens = times[:part], toks[:part]  # partial stream before failing
            r.end = (times[part - 1] if part else t + lag) + 0.5
        if i < 5:
            r.phase = "warmup"
        reqs.append(r)
    # A few edge cases vLLM treats specially: single-token and two-token outputs.
    base = t + 1.0
    reqs.append(Req(base, base, True, 7, [base + 0.2], [1], out_server=1, visible=base + 0.2, end=base + 0.21))
    reqs.append(Req(base, base, True, 7, [base + 0.1, base + 0.3], [1, 1], out_server=2, visible=base + 0.1, end=base + 0.3))
    return reqs


def write_run(store: ResultsStore, reqs: list[Req], *, duration: float, label: str = "x", target_rate: float | None = None) -> str:
    rid = store.create_run(RunInfo(backend="test", model="m", label=label, target_rate=target_rate))
    rows, chunks = [], []
    for i, r in enumerate(reqs):
        first = r.chunk_times[0] if r.chunk_times else None
        last = r.chunk_times[-1] if r.chunk_times else None
        rows.append(
            (rid, i, f"s{i % 7}", 0, r.tenant, None, r.phase, r.scheduled, r.sent, first, r.visible, last, r.end,
             r.prompt_len, None, 100, r.out_server, r.out_counted, None, None, len(r.chunk_times), r.status,
             200 if r.ok else 500, None if r.ok else "http_500", None, 0)
        )
        for j, (ct, tk) in enumerate(zip(r.chunk_times, r.chunk_tokens, strict=True)):
            chunks.append((rid, i, j, ct, tk, False))
    # Frames take the store's bulk path (executemany is slow for thousands of rows).
    store.append_requests(pl.DataFrame(rows, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None))
    if chunks:
        store.append_chunks(pl.DataFrame(chunks, schema=list(CHUNK_COLUMNS), orient="row"))
    store.finish_run(rid, status="done", end_reason="completed", duration_s=duration)
    return rid


def vllm_reference(reqs: list[Req], dur: float, slo: dict[str, float] | None = None) -> dict:
    """vLLM's calculate_metrics on the measured requests, written from its definitions."""
    ttfts, tpots, all_tpots, itls, e2els, outs, ins = [], [], [], [], [], [], []
    completed = failed = 0
    for r in reqs:
        if r.phase != "measure":
            continue
        if not r.ok:
            failed += 1
            continue
        completed += 1
        out = r.out_server if r.out_server is not None else r.out_counted
        ttft = r.chunk_times[0] - r.sent
        latency = r.chunk_times[-1] - r.sent
        tpot = 0.0
        if out > 1:
            tpot = (latency - ttft) / (out - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls += list(np.diff(r.chunk_times))
        ttfts.append(ttft)
        e2els.append(latency)
        outs.append(out)
        ins.append(r.prompt_len)

    def obj(xs):
        a = np.asarray(xs) * 1000
        return {"mean": np.mean(a), "median": np.median(a), "std": np.std(a), "max": np.max(a),
                **{f"p{p}": np.percentile(a, p) for p in PCTS}}

    ref = {
        "completed": completed, "failed": failed,
        "request_throughput": completed / dur, "output_throughput": sum(outs) / dur,
        "total_token_throughput": (sum(ins) + sum(outs)) / dur,
        "ttft_ms": obj(ttfts), "tpot_ms": obj(tpots), "itl_ms": obj(itls), "e2el_ms": obj(e2els),
    }
    if slo:
        good = 0
        for t, p, e in zip(ttfts, all_tpots, e2els, strict=True):
            vals = {"ttft": t, "tpot": p, "e2el": e}
            good += all(slo[m] >= vals[m] for m in slo)
        ref["request_goodput"] = good / dur
    # Peak concurrency: vLLM's sweep line over successful requests, half-open intervals.
    events = []
    for r in reqs:
        if r.phase == "measure" and r.ok:
            events += [(r.sent, 1), (r.chunk_times[-1], -1)]
    events.sort()
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    ref["peak_concurrency"] = peak
    return ref


def assert_close(ours: dict, ref: dict) -> None:
    for key in ("completed", "failed", "peak_concurrency"):
        assert ours[key] == ref[key], key
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        for stat, v in ref[m].items():
            assert ours[m][stat] == pytest.approx(v, rel=1e-9, abs=1e-9), f"{m}.{stat}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_runs_match_vllm_formulas(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reqs = random_run(rng, n=int(rng.integers(50, 400)))
    db = tmp_path / "r.duckdb"
    dur = max(r.end for r in reqs) + 0.25
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=dur)
        # a second run in the same file must not leak into the first one's numbers
        write_run(st, random_run(np.random.default_rng(seed + 100), 50), duration=3.0, label="other")
    slo = {"ttft": 0.12, "tpot": 0.012, "e2el": 0.4}
    ours = summarize(db, rid, slo=slo)
    ref = vllm_reference(reqs, dur, slo)
    assert_close(ours, ref)
    assert ours["goodput"]["request_goodput"] == pytest.approx(ref["request_goodput"], rel=1e-12)
    # attainment has every measured request (failures included) in its denominator
    n_measured = sum(r.phase == "measure" for r in reqs)
    assert ours["goodput"]["slo_attainment"] == pytest.approx(ref["request_goodput"] * dur / n_measured)


def test_hand_made_run_exact_values(tmp_path: Path) -> None:
    # Three requests whose every number can be done by hand.
    reqs = [
        # sent 0, chunks at .125, .25, .5 (4 tokens) -> ttft 125, e2el 500, tpot 375/3 = 125, gaps 125, 250
        Req(0.0, 0.0, True, 10, [0.125, 0.25, 0.5], [1, 1, 2], out_server=4, visible=0.25, end=0.5),
        # sent .5, one chunk at .875 carrying 1 token -> ttft 375, no tpot, no gap
        Req(0.5, 0.5, True, 20, [0.875], [1], out_server=1, visible=0.875, end=0.875),
        # failed
        Req(0.625, 0.625, False, 30, [], [], end=1.0, status="error"),
    ]
    db = tmp_path / "h.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=2.0, target_rate=1.5)
    s = summarize(db, rid, slo="ttft=150ms,tpot=125ms")
    assert (s["completed"], s["failed"], s["requests"]) == (2, 1, 3)
    assert s["ttft_ms"]["mean"] == pytest.approx(250.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(250.0)
    assert s["ttft_ms"]["p90"] == pytest.approx(125 + 0.9 * 250)
    assert s["ttft_ms"]["std"] == pytest.approx(125.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(125.0) and s["tpot_ms"]["n"] == 1
    assert s["itl_ms"]["mean"] == pytest.approx(187.5) and s["itl_ms"]["max"] == pytest.approx(250.0)
    # token ITL: the 250 ms gap carried 2 tokens -> 125, 125; the 125 ms gap one token -> 125
    assert s["itl_token_ms"]["mean"] == pytest.approx(125.0) and s["itl_token_ms"]["n"] == 3
    assert s["e2el_ms"]["max"] == pytest.approx(500.0)
    assert s["ttfvt_ms"]["p50"] == pytest.approx(312.5)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx((30 + 5) / 2)
    assert s["achieved_rate"] == pytest.approx(1.5) and s["target_rate"] == 1.5
    # Request 1 meets both (tpot 125 <= 125), request 2 fails ttft (375 > 150), request 3 failed.
    g = s["goodput"]
    assert g["good_requests"] == 1 and g["slo_attainment"] == pytest.approx(1 / 3)
    assert g["per_metric_attainment"] == {"ttft": pytest.approx(1 / 3), "tpot": pytest.approx(2 / 3)}
    assert g["token_goodput"] == pytest.approx(4 / 2)
    # Error-adjusted: TTFT values 125, 375, +inf -> p50 = 375, p90 beyond the last success.
    assert s["error_adjusted_ms"]["ttft"]["p50"] == pytest.approx(375.0)
    assert s["error_adjusted_ms"]["ttft"]["p90"] is None
    assert s["peak_concurrency"] == 1  # [0, .5) and [.5, .875) never overlap (ends first)
    assert s["peak_in_flight"] == 2  # the failed request was open from .625 to 1.0


def test_ties_end_before_start_and_selection(tmp_path: Path) -> None:
    # Request B starts exactly when A ends: half-open intervals -> peak 1, not 2.
    reqs = [
        Req(0.0, 0.0, True, 1, [0.5, 1.0], [1, 1], out_server=2, end=1.0, tenant="a"),
        Req(1.0, 1.0, True, 1, [1.5, 2.0], [1, 1], out_server=2, end=2.0, tenant="b"),
        Req(1.2, 1.2, True, 1, [1.3, 1.9], [1, 1], out_server=2, end=1.9, tenant="b"),
    ]
    db = tmp_path / "t.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=2.0)
    s = summarize(db, rid)
    assert s["peak_concurrency"] == 2
    only_a = summarize(db, rid, where={"tenant": "a"})
    assert only_a["completed"] == 1 and only_a["peak_concurrency"] == 1
    assert only_a["ttft_ms"]["mean"] == pytest.approx(500.0)
    win = summarize(db, rid, where={"time_range": (0.9, 1.1)})
    assert win["completed"] == 1 and win["duration_s"] == pytest.approx(0.2)
    assert win["request_throughput"] == pytest.approx(5.0)
    sess = summarize(db, rid, where={"session": "s2"})
    assert sess["completed"] == 1 and sess["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert summarize(db, rid, where={"model": "nope"})["completed"] == 0
    assert summarize(db, rid, where={"model": "nope"})["ttft_ms"]["mean"] is None


def test_views_are_queryable_read_only(tmp_path: Path) -> None:
    db = tmp_path / "v.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, random_run(np.random.default_rng(5), 40), duration=5.0)
    con = open_store(db)
    try:
        n_gaps = con.execute("SELECT count(*) FROM chunk_gaps WHERE run_id = ?", [rid]).fetchone()[0]
        n_chunks, n_req_with = con.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM chunks WHERE run_id = ?", [rid]
        ).fetchone()
        assert n_gaps == n_chunks - n_req_with
        tok_rows, tok_sum = con.execute("SELECT count(*), sum(COALESCE(tokens,1)) FROM chunk_gaps").fetchone()
        assert con.execute("SELECT count(*) FROM token_itl").fetchone()[0] == tok_sum
        assert tok_rows == n_gaps
        cols = {d[0] for d in con.execute("SELECT * FROM request_metrics LIMIT 0").description}
        assert {"ttft_s", "ttfvt_s", "tpot_s", "e2el_s", "schedule_lag_s", "e2el_from_schedule_s"} <= cols
        with pytest.raises(Exception, match=r"read-only|read only"):
            con.execute("DELETE FROM requests")
    finally:
        con.close()


def test_missing_and_wrong_inputs(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such results file"):
        summarize(tmp_path / "absent.duckdb")
    not_store = tmp_path / "other.duckdb"
    import duckdb

    duckdb.connect(str(not_store)).execute("CREATE TABLE x (a INT)").close()
    with pytest.raises(StoreError, match="not a burstbench results store"):
        summarize(not_store)
    empty = tmp_path / "empty.duckdb"
    ResultsStore(empty).close()
    with pytest.raises(StoreError, match="holds no runs"):
        summarize(empty)
    with ResultsStore(empty) as st:
        write_run(st, random_run(np.random.default_rng(1), 10), duration=1.0)
    with pytest.raises(StoreError, match="not found"):
        summarize(empty, "zzz")
    with pytest.raises(UsageError, match="unknown selection"):
        summarize(empty, where={"tennant": "a"})
    with pytest.raises(UsageError, match="empty"):
        summarize(empty, where={"time_range": (5, 1)})


def test_all_failed_run_gives_none_not_zero(tmp_path: Path) -> None:
    reqs = [Req(0.0, 0.0, False, 5, [], [], end=0.3, status="timeout") for _ in range(4)]
    db = tmp_path / "f.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=1.0)
    s = summarize(db, rid, slo={"ttft": 1.0})
    assert s["completed"] == 0 and s["failed"] == 4 and s["failed_by_status"]["timeout"] == 4
    assert s["ttft_ms"]["p99"] is None and s["itl_ms"]["mean"] is None
    assert s["goodput"]["slo_attainment"] == 0.0 and s["goodput"]["request_goodput"] == 0.0
    assert s["request_throughput"] == 0.0
    assert math.isfinite(s["duration_s"])


# -- the analyze command and --sql -------------------------------------------------------------


def _cli_store(tmp_path: Path) -> tuple[Path, str, str]:
    db = tmp_path / "cli.duckdb"
    with ResultsStore(db) as st:
        a = write_run(st, random_run(np.random.default_rng(7), 120), duration=10.0, label="A")
        b = write_run(st, random_run(np.random.default_rng(8), 120), duration=10.0, label="B")
    return db, a, b


def test_analyze_json_shape_and_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from burstbench.cli import main

    db, a, b = _cli_store(tmp_path)
    assert main(["analyze", str(db), "--run", a, "--slo", "ttft=150ms,tpot=20ms,e2el=1s", "--json",
                 "--window", "2", "--tenants", "--compare", b, "--metrics", "ttft.p99,slo_attainment",
                 "--boot", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "ttfvt_ms", "schedule_lag_ms"):
        assert set(out[m]) >= {"mean", "median", "std", "p50", "p90", "p95", "p99", "max"}, m
    for k in ("completed", "failed", "duration_s", "request_throughput", "output_throughput",
              "total_token_throughput"):
        assert k in out
    assert set(out["goodput"]) >= {"request_goodput", "slo_attainment", "per_metric_attainment", "token_goodput"}
    assert out["goodput"] == summarize(db, a, slo="ttft=150ms,tpot=20ms,e2el=1s")["goodput"]
    assert len(out["attainment_over_time"]) >= 5
    assert {t["tenant"] for t in out["per_tenant"]["tenants"]} == {"t0", "t1", "t2", None}
    assert [r["metric"] for r in out["compare"]["metrics"]] == ["ttft", "slo_attainment"]
    # without --json the tables are the result: stdout (so `analyze R > f` keeps them); stderr has none
    assert main(["analyze", str(db), "--tenant", "t1", "--time-range", "0:5"]) == 0
    cap = capsys.readouterr()
    assert "Serving Benchmark Result" in cap.out and "TTFT" in cap.out and "Serving" not in cap.err


def test_analyze_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from burstbench.cli import main

    db, _, _ = _cli_store(tmp_path)
    assert main(["analyze", str(db), "--slo", "ttft=500"]) == 2
    assert "has no unit" in capsys.readouterr().err
    assert main(["analyze", str(db), "--time-range", "5:1"]) == 2
    assert "END > START" in capsys.readouterr().err
    assert main(["analyze", str(db), "--window", "5"]) == 2
    assert "needs --slo" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.duckdb")]) == 4
    assert "no such results file" in capsys.readouterr().err
    assert main(["analyze"]) == 2


def test_sql_reads_and_refuses_everything_else(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from burstbench.analysis.sql import run_sql
    from burstbench.cli import main

    db, _, _ = _cli_store(tmp_path)
    res = run_sql(db, "SELECT run_id, count(*) AS n FROM request_metrics WHERE ok GROUP BY 1 ORDER BY 1")
    assert res["columns"] == ["run_id", "n"] and len(res["rows"]) == 2
    assert run_sql(db, "SELECT 1; SELECT 2 AS two")["rows"] == [[2]]
    assert run_sql(db, "SELECT * FROM chunks", max_rows=5)["truncated"] is True
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for bad, match in [
        ("DELETE FROM requests", "DELETE"),
        ("CREATE TEMP TABLE x AS SELECT 1", "CREATE"),
        ("COPY requests TO 'out.csv'", "COPY"),
        (f"ATTACH '{tmp_path / 'other.duckdb'}'", "ATTACH"),
        ("SET lock_configuration = false", "SET"),
        ("SELECT 1; DROP TABLE runs", "statement 2 is DROP"),
        ("INSTALL httpfs", "is LOAD"),
    ]:
        with pytest.raises(UsageError, match=match):
            run_sql(db, bad)
    with pytest.raises(UsageError, match=r"(?i)permission|disabled"):
        run_sql(db, f"SELECT * FROM read_csv('{secret}')")
    with pytest.raises(UsageError, match="does not parse"):
        run_sql(db, "SELEKT 1")
    assert main(["analyze", str(db), "--sql", "SELECT count(*) AS n FROM runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"columns": ["n"], "rows": [[2]], "truncated": False}
    assert main(["analyze", str(db), "--sql", "UPDATE runs SET label = 'x'"]) == 2
    # the store is unchanged
    assert run_sql(db, "SELECT count(*) FROM runs WHERE label = 'x'")["rows"] == [[0]]


def test_parity_on_a_run_recorded_by_the_reference_engine(tmp_path: Path, burstgpt_v1: Path) -> None:
    """A run the simulator recorded (not hand-made rows): read its raw rows back and
    apply vLLM's formulas with numpy; summarize must agree."""
    import duckdb

    from burstbench.backends.reference.simulator import simulate

    db = tmp_path / "sim.duckdb"
    res = simulate(str(burstgpt_v1), model="llama-3-8b", hardware="a100-80g", out=db, label="recorded")
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT request_id, sent_s, scheduled_s, status, input_tokens, output_tokens_server,"
            " output_tokens_counted, end_s, first_visible_s, phase FROM requests WHERE run_id = ?",
            [res.run_id]).fetchall()
        chunks: dict[int, list[tuple[int, float, int | None]]] = {}
        for rid_, seq, t, tk in con.execute(
                "SELECT request_id, seq, t_s, tokens FROM chunks WHERE run_id = ?", [res.run_id]).fetchall():
            chunks.setdefault(rid_, []).append((seq, t, tk))
        dur = con.execute("SELECT measure_end_s - measure_start_s FROM runs WHERE run_id = ?",
                          [res.run_id]).fetchone()[0]
    finally:
        con.close()
    reqs = []
    for rid_, sent, sched, status, inp, out_s, out_c, end, vis, phase in sorted(rows):
        cs = sorted(chunks.get(rid_, []))
        reqs.append(Req(sched, sent, status == "ok", inp, [c[1] for c in cs], [c[2] for c in cs],
                        out_server=out_s, out_counted=out_c, visible=vis, end=end, phase=phase, status=status))
    assert sum(r.ok for r in reqs) > 300 and any(not r.ok for r in reqs)
    ours = summarize(db, res.run_id, slo={"ttft": 0.5, "tpot": 0.05})
    ref = vllm_reference(reqs, dur, {"ttft": 0.5, "tpot": 0.05})
    assert_close(ours, ref)
    assert ours["goodput"]["request_goodput"] == pytest.approx(ref["request_goodput"], rel=1e-12)


def test_chunks_written_out_of_order_give_the_same_gaps(tmp_path: Path) -> None:
    """The fast path relies on each request's chunks being adjacent; shuffled rows must
    be detected and computed the sure way, to the same numbers."""
    from burstbench.analysis.metrics import Selection, chunk_stats

    reqs = random_run(np.random.default_rng(21), 150)
    dur = max(r.end for r in reqs) + 0.1
    ordered, shuffled = tmp_path / "o.duckdb", tmp_path / "s.duckdb"
    with ResultsStore(ordered) as st:
        rid_o = write_run(st, reqs, duration=dur)
    with ResultsStore(shuffled) as st:
        rid_s = st.create_run(RunInfo(backend="test", model="m"))
        con_o = open_store(ordered)
        try:
            req = pl.from_arrow(con_o.sql("SELECT * FROM requests").to_arrow_table())
            ch = pl.from_arrow(con_o.sql("SELECT * FROM chunks").to_arrow_table())
        finally:
            con_o.close()
        st.append_requests(req.with_columns(pl.lit(rid_s).alias("run_id")))
        st.append_chunks(ch.with_columns(pl.lit(rid_s).alias("run_id")).sample(fraction=1.0, shuffle=True, seed=1))
        st.finish_run(rid_s, status="done", end_reason="completed", duration_s=dur)
    a, b = open_store(ordered), open_store(shuffled)
    try:
        ca, cb = chunk_stats(a, rid_o, Selection()), chunk_stats(b, rid_s, Selection())
    finally:
        a.close()
        b.close()
    assert ca["gap_path"] == "adjacent rows" and cb["gap_path"] == "sorted per request"
    sa, sb = summarize(ordered, rid_o), summarize(shuffled, rid_s)
    for m in ("itl_ms", "itl_token_ms"):
        for stat, v in sa[m].items():
            assert sb[m][stat] == pytest.approx(v, rel=1e-12), f"{m}.{stat}"
    assert sa["itl_ms"] == pytest.approx(vllm_reference(reqs, dur)["itl_ms"] | {"n": sa["itl_ms"]["n"]})


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_adjacent_pass_cut_into_row_ranges_finds_every_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          parts: int) -> None:
    """Large stores cut the adjacent-row pass into overlapping row ranges run in parallel;
    no gap may be lost or invented at a cut, including cuts inside a request."""
    from burstbench.analysis import metrics as M

    reqs = random_run(np.random.default_rng(30 + parts), 120)
    dur = max(r.end for r in reqs) + 0.1
    db = tmp_path / "p.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=dur)
    monkeypatch.setattr(M, "ADJ_PARTS", parts)
    con = open_store(db)
    try:
        cs = M.chunk_stats(con, rid, M.Selection())
    finally:
        con.close()
    assert cs["gap_path"] == "adjacent rows"
    ref = vllm_reference(reqs, dur)["itl_ms"]
    ours = summarize(db, rid)["itl_ms"]
    for stat, v in ref.items():
        assert ours[stat] == pytest.approx(v, rel=1e-9), stat


def test_token_itl_equals_numpy_on_the_expanded_tokens(tmp_path: Path) -> None:
    """Token ITL: each chunk gap split evenly over the tokens the chunk carried."""
    reqs = random_run(np.random.default_rng(44), 300)
    dur = max(r.end for r in reqs) + 0.1
    db = tmp_path / "tok.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=dur)
    s = summarize(db, rid)["itl_token_ms"]
    tok = []
    for r in reqs:
        if r.phase == "measure" and r.ok:
            for gap, k in zip(np.diff(r.chunk_times), r.chunk_tokens[1:], strict=True):
                tok += [gap / k] * k
    a = np.asarray(tok) * 1000
    assert s["n"] == len(a)
    assert s["mean"] == pytest.approx(a.mean(), rel=1e-9) and s["std"] == pytest.approx(a.std(), rel=1e-9)
    assert s["max"] == pytest.approx(a.max(), rel=1e-12)
    for p in (50, 90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(a, p), rel=1e-9), p
