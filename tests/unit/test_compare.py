"""Run comparison: bootstrap intervals that find real differences and not noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench.analysis.compare import compare_runs
from burstbench.analysis.metrics import open_store
from burstbench.errors import UsageError
from burstbench.store import REQUEST_COLUMNS, ResultsStore, RunInfo


def add_run(store: ResultsStore, ttfts: np.ndarray, *, fail_every: int = 0, label: str = "r") -> str:
    """A run whose requests have the given TTFTs, 10 tokens and a fixed 20 ms TPOT."""
    rid = store.create_run(RunInfo(backend="test", label=label))
    rows = []
    for i, ttft in enumerate(ttfts):
        sent = i * 0.1
        failed = fail_every and i % fail_every == 0
        first = None if failed else sent + float(ttft)
        last = None if failed else first + 9 * 0.02
        rows.append(
            (rid, i, None, None, None, None, "measure", sent, sent, first, first, last, last if last else sent + 1,
             5, None, 10, None if failed else 10, None, None, None, 0 if failed else 10,
             "error" if failed else "ok", None, None, None, 0)
        )
    store.append_requests(pl.DataFrame(rows, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None))
    store.finish_run(rid, status="done", end_reason="completed", duration_s=len(ttfts) * 0.1)
    return rid


def test_real_shift_is_significant_and_ci_covers_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    db = tmp_path / "c.duckdb"
    with ResultsStore(db) as st:
        a = add_run(st, rng.gamma(4.0, 0.05, 400))
        b = add_run(st, rng.gamma(4.0, 0.05, 400) + 0.1)
    con = open_store(db)
    try:
        res = compare_runs(con, a, b, metrics=["ttft.mean", "ttft.p50", "ttft.p90", "tpot.mean"], n_boot=400)
    finally:
        con.close()
    rows = {(r["metric"], r["stat"]): r for r in res["metrics"]}
    for stat in ("mean", "p50", "p90"):
        r = rows[("ttft", stat)]
        assert r["significant"], stat
        assert r["ci"][0] < 100.0 < r["ci"][1] + 25.0  # the true shift is 100 ms
        assert r["ci"][0] < r["delta"] < r["ci"][1]
    # TPOT is identical in both runs: the delta is 0 and not significant.
    t = rows[("tpot", "mean")]
    assert t["delta"] == pytest.approx(0.0, abs=1e-9) and not t["significant"]


def test_bootstrap_ci_of_mean_matches_the_normal_interval(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xa, xb = rng.gamma(3.0, 0.05, 600), rng.gamma(3.0, 0.055, 500)
    db = tmp_path / "n.duckdb"
    with ResultsStore(db) as st:
        a, b = add_run(st, xa), add_run(st, xb)
    con = open_store(db)
    try:
        r = compare_runs(con, a, b, metrics=["ttft.mean"], n_boot=2000, seed=1)["metrics"][0]
    finally:
        con.close()
    half = 1.96 * np.sqrt(xa.var() / len(xa) + xb.var() / len(xb)) * 1000
    assert r["delta"] == pytest.approx((xb.mean() - xa.mean()) * 1000)
    width = r["ci"][1] - r["ci"][0]
    assert width == pytest.approx(2 * half, rel=0.12)


def test_same_distribution_is_rarely_significant(tmp_path: Path) -> None:
    # 30 A/A comparisons: a 95% interval should flag about 1.5 of them; a broken
    # (too narrow) interval flags many.
    rng = np.random.default_rng(11)
    db = tmp_path / "aa.duckdb"
    pairs = []
    with ResultsStore(db) as st:
        for i in range(30):
            pairs.append((add_run(st, rng.gamma(2.0, 0.1, 150), label=f"a{i}"),
                          add_run(st, rng.gamma(2.0, 0.1, 150), label=f"b{i}")))
    con = open_store(db)
    try:
        flagged = sum(
            compare_runs(con, a, b, metrics=["ttft.mean"], n_boot=200, seed=i)["metrics"][0]["significant"]
            for i, (a, b) in enumerate(pairs)
        )
    finally:
        con.close()
    assert flagged <= 5


def test_attainment_and_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    db = tmp_path / "s.duckdb"
    with ResultsStore(db) as st:
        a = add_run(st, rng.uniform(0.0, 0.2, 300))
        b = add_run(st, rng.uniform(0.0, 0.2, 300), fail_every=4)  # a quarter fail
    con = open_store(db)
    try:
        r = compare_runs(con, a, b, metrics=["slo_attainment"], slo={"ttft": 1.0}, n_boot=300)["metrics"][0]
        assert r["a"] == pytest.approx(1.0) and r["b"] == pytest.approx(0.75)
        assert r["significant"] and r["ci"][1] < 0
        with pytest.raises(UsageError, match="unknown metric 'ttfx'"):
            compare_runs(con, a, b, metrics=["ttfx.p99"])
        with pytest.raises(UsageError, match="unknown statistic 'p42'"):
            compare_runs(con, a, b, metrics=["ttft.p42"])
        with pytest.raises(UsageError, match="needs an SLO"):
            compare_runs(con, a, b, metrics=["slo_attainment"])
        with pytest.raises(UsageError, match="at least 100"):
            compare_runs(con, a, b, n_boot=10)
    finally:
        con.close()


def test_large_samples_use_the_asymptotic_interval_which_agrees_with_the_bootstrap(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    db = tmp_path / "big.duckdb"
    with ResultsStore(db) as st:
        a, b = add_run(st, rng.gamma(3.0, 0.05, 3000)), add_run(st, rng.gamma(3.0, 0.052, 3000))
    con = open_store(db)
    try:
        specs = ["ttft.mean", "ttft.p50", "ttft.p90"]
        boot = compare_runs(con, a, b, metrics=specs, n_boot=1500, seed=2)["metrics"]
        asym = compare_runs(con, a, b, metrics=specs, max_bootstrap_n=100)["metrics"]
    finally:
        con.close()
    for rb, ra in zip(boot, asym, strict=True):
        assert rb["method"] == "bootstrap" and ra["method"] == "asymptotic"
        assert ra["delta"] == pytest.approx(rb["delta"])
        wb, wa = rb["ci"][1] - rb["ci"][0], ra["ci"][1] - ra["ci"][0]
        assert wa == pytest.approx(wb, rel=0.2), rb["stat"]


def add_chunked_run(store: ResultsStore, rng: np.random.Generator, n: int, scale: float) -> str:
    """Requests with 2-40 chunks, one token each, gamma-distributed gaps whose scale varies
    per request: pooled chunk gaps, per-request mean gaps and TPOT all differ."""
    from burstbench.store import CHUNK_COLUMNS

    rid = store.create_run(RunInfo(backend="test", label="chunked"))
    rows, chunks = [], []
    for i in range(n):
        sent = i * 0.1
        k = int(rng.integers(2, 41))
        gaps = rng.gamma(2.0, scale * rng.uniform(0.2, 3.0), k - 1)
        t = sent + 0.05 + np.concatenate([[0.0], np.cumsum(gaps)])
        rows.append((rid, i, None, None, None, None, "measure", sent, sent, t[0], t[0], t[-1], t[-1],
                     5, None, k, k, k, None, None, k, "ok", 200, None, None, 0))
        chunks += [(rid, i, j, float(x), 1, False) for j, x in enumerate(t)]
    store.append_requests(pl.DataFrame(rows, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None))
    store.append_chunks(pl.DataFrame(chunks, schema=list(CHUNK_COLUMNS), orient="row"))
    store.finish_run(rid, status="done", end_reason="completed", duration_s=n * 0.1 + 5)
    return rid


def test_compare_names_mean_what_analyze_names_mean(tmp_path: Path) -> None:
    # itl is the pooled chunk gaps of analyze's ITL table; the per-request mean gap has
    # its own name; tpot is TPOT. Each compare point estimate equals analyze's figure.
    from burstbench.analysis.metrics import summarize

    rng = np.random.default_rng(4)
    db = tmp_path / "names.duckdb"
    with ResultsStore(db) as st:
        a, b = add_chunked_run(st, rng, 150, 0.01), add_chunked_run(st, rng, 150, 0.012)
    con = open_store(db)
    try:
        specs = ["itl.p50", "itl.p99", "itl.mean", "itl_request_mean.p99", "tpot.p99"]
        res = {(r["metric"], r["stat"]): r for r in compare_runs(con, a, b, metrics=specs, n_boot=300)["metrics"]}
        asym = {(r["metric"], r["stat"]): r
                for r in compare_runs(con, a, b, metrics=specs, max_bootstrap_n=10)["metrics"]}
        sa, sb = summarize(con, a), summarize(con, b)
    finally:
        con.close()
    for run, s in (("a", sa), ("b", sb)):
        assert res[("itl", "p50")][run] == pytest.approx(s["itl_ms"]["p50"])
        assert res[("itl", "p99")][run] == pytest.approx(s["itl_ms"]["p99"])
        assert res[("itl", "mean")][run] == pytest.approx(s["itl_ms"]["mean"])
        assert res[("itl_request_mean", "p99")][run] == pytest.approx(s["itl_request_mean_ms"]["p99"])
        assert res[("tpot", "p99")][run] == pytest.approx(s["tpot_ms"]["p99"])
    # the three are different quantities on these runs, so a mix-up could not pass unseen
    assert len({round(sa["itl_ms"]["p99"], 6), round(sa["itl_request_mean_ms"]["p99"], 6)}) == 2
    assert res[("itl", "p99")]["n_a"] > 150  # gaps, not requests
    # a request's gaps are resampled together: the cluster bootstrap and the cluster-robust
    # asymptotic interval agree, and both are wider than treating gaps as independent
    for key in (("itl", "p50"), ("itl", "mean")):
        wb = res[key]["ci"][1] - res[key]["ci"][0]
        wa = asym[key]["ci"][1] - asym[key]["ci"][0]
        assert wa == pytest.approx(wb, rel=0.35), key
    n_gaps = res[("itl", "mean")]["n_a"]
    with ResultsStore(db, read_only=True) as st:
        gaps = st.con.execute("SELECT gap_s FROM (SELECT t_s - lag(t_s) OVER (PARTITION BY request_id ORDER BY seq)"
                              " AS gap_s FROM chunks WHERE run_id = ?) WHERE gap_s IS NOT NULL", [a]).fetchnumpy()
    assert len(gaps["gap_s"]) == n_gaps
    naive = 2 * 1.96 * float(np.std(gaps["gap_s"])) / np.sqrt(n_gaps) * 1000 * np.sqrt(2)
    assert res[("itl", "mean")]["ci"][1] - res[("itl", "mean")]["ci"][0] > 1.3 * naive


def test_large_itl_stays_in_duckdb_and_equals_the_loaded_arrays(tmp_path: Path) -> None:
    # Past max_bootstrap_n the pooled gaps are not loaded (a 100M-gap run was 1.6 GB of
    # arrays per run); the SQL passes give the same point and cluster-robust interval
    # as the NumPy formulas on the loaded, sorted gaps.
    from burstbench.analysis import compare as cmp

    rng = np.random.default_rng(11)
    db = tmp_path / "gaps.duckdb"
    with ResultsStore(db) as st:
        a, b = add_chunked_run(st, rng, 120, 0.01), add_chunked_run(st, rng, 120, 0.011)
    con = open_store(db)
    try:
        stats = ["mean", "p50", "p90", "p99"]
        got = {r["stat"]: r for r in compare_runs(con, a, b, metrics=[f"itl.{s}" for s in stats],
                                                   max_bootstrap_n=10)["metrics"]}
        (xa, ga), (xb, gb) = cmp._values(con, a, "itl", None), cmp._values(con, b, "itl", None)
        z = cmp._norm_ppf(0.975)
        for s in stats:
            pa, pb = cmp._point(xa, s), cmp._point(xb, s)
            se = float(np.hypot(cmp._asymptotic_se(xa, s, z, ga), cmp._asymptotic_se(xb, s, z, gb)))
            r = got[s]
            assert r["method"] == "asymptotic" and r["n_a"] == len(xa) and r["n_b"] == len(xb)
            assert r["a"] == pytest.approx(pa * 1000, rel=1e-12) and r["b"] == pytest.approx(pb * 1000, rel=1e-12)
            assert r["ci"] == pytest.approx([((pb - pa) - z * se) * 1000, ((pb - pa) + z * se) * 1000], rel=1e-9), s
        # the temporary gap tables are gone
        assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_bb_cmp_gaps_%'").fetchone()[0]
    finally:
        con.close()
