"""Exact quantiles in bounded memory (analysis.quantiles) against NumPy's percentile.

The bucket-and-pick passes are forced on small columns by lowering FETCH_CAP, so every
path (one level, two levels, constant buckets, infinite ends, weights) is exercised on
data NumPy can check exactly.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from burstbench.analysis import quantiles as qmod
from burstbench.analysis.quantiles import exact_quantiles

PROBS = [0.0, 0.001, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]


def _con(values: np.ndarray, weights: np.ndarray | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    w = np.ones(len(values), dtype=np.int64) if weights is None else weights
    con.execute("CREATE TABLE t AS SELECT * FROM (SELECT unnest($v::DOUBLE[]) AS v, unnest($w::BIGINT[]) AS k)",
                {"v": values.tolist(), "w": w.tolist()})
    return con


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    body = rng.gamma(2.0, 0.01, 50_000)
    return {
        "gamma": body,
        # a body of near-equal gaps and a far outlier: most values land in one bucket
        "outlier": np.concatenate([0.02 + rng.random(50_000) * 1e-6, [30.0]]),
        "ties": rng.integers(0, 5, 50_000).astype(float),
        "constant": np.full(20_000, 0.025),
        "negative": rng.normal(0.0, 1.0, 30_000),
    }


@pytest.mark.parametrize("cap", [10**9, 1_000, 10])
@pytest.mark.parametrize("name", list(_datasets()))
def test_equals_numpy_percentile_on_every_path(monkeypatch, name, cap):
    monkeypatch.setattr(qmod, "FETCH_CAP", cap)
    monkeypatch.setattr(qmod, "QUANTILE_CONT_MAX", 0 if cap < 10**9 else 10**9)
    v = _datasets()[name]
    got, n = exact_quantiles(_con(v), "SELECT v FROM t", None, PROBS)
    assert n == len(v)
    np.testing.assert_allclose(got, np.percentile(v, [p * 100 for p in PROBS]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cap", [10**9, 100])
def test_weights_count_each_value_k_times(monkeypatch, cap):
    monkeypatch.setattr(qmod, "FETCH_CAP", cap)
    monkeypatch.setattr(qmod, "QUANTILE_CONT_MAX", 0)
    rng = np.random.default_rng(3)
    v = rng.exponential(0.02, 5_000)
    k = rng.integers(1, 6, 5_000)
    got, n = exact_quantiles(_con(v, k), "SELECT v, k FROM t", None, PROBS, weight="k")
    assert n == int(k.sum())
    np.testing.assert_allclose(got, np.percentile(np.repeat(v, k), [p * 100 for p in PROBS]), rtol=1e-12)


@pytest.mark.parametrize("cap", [10**9, 10])
def test_infinite_values_sit_at_the_ends_as_in_duckdb(monkeypatch, cap):
    monkeypatch.setattr(qmod, "FETCH_CAP", cap)
    monkeypatch.setattr(qmod, "QUANTILE_CONT_MAX", 0)
    rng = np.random.default_rng(5)
    v = np.concatenate([rng.random(1_000), [np.inf] * 30, [-np.inf] * 2])
    con = _con(v)
    got, _ = exact_quantiles(con, "SELECT v FROM t", None, [0.0, 0.5, 0.97, 0.99, 1.0])
    want = con.execute("SELECT quantile_cont(v, [0.0, 0.5, 0.97, 0.99, 1.0]) FROM t").fetchone()[0]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] == np.inf and got[0] == -np.inf


def test_no_value_gives_nothing_and_params_are_bound():
    con = _con(np.arange(10, dtype=float))
    assert exact_quantiles(con, "SELECT v FROM t WHERE v > $cut", {"cut": 100.0}, [0.5]) == ([], 0)
    got, n = exact_quantiles(con, "SELECT v FROM t WHERE v > $cut", {"cut": 4.5}, [0.5])
    assert (got, n) == ([7.0], 5)


def test_matches_duckdb_quantile_cont_on_a_store_sized_column(monkeypatch):
    """Two bucket levels over a million values (cap 1k): the same numbers as quantile_cont."""
    monkeypatch.setattr(qmod, "FETCH_CAP", 1_000)
    monkeypatch.setattr(qmod, "QUANTILE_CONT_MAX", 0)
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 0.01 + 0.05 * random() ^ 3 + CASE WHEN i % 100000 = 0 THEN 10 ELSE 0 END"
                " AS v FROM range(1000000) r(i)")
    probs = [0.5, 0.9, 0.95, 0.99, 0.9999]
    want = con.execute(f"SELECT quantile_cont(v, {probs}) FROM t").fetchone()[0]
    got, n = exact_quantiles(con, "SELECT v FROM t", None, probs)
    assert n == 1_000_000
    assert got == pytest.approx(want, rel=1e-12)
