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
