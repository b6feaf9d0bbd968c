"""Compare two runs: the delta of every metric with a bootstrap confidence interval.

A p99 that moved 4% between two configurations may be noise; a user needs to see
which differences are real. Each run's requests are resampled independently
(Poisson bootstrap: every request gets a Poisson(1) weight, which equals
resampling with replacement in the limit and is O(n) per replicate, so a million
requests stay tractable); the statistic of B minus that of A over the replicates
gives a percentile interval. A delta is ``significant`` when its interval excludes 0.

Metrics carry the names and definitions they have everywhere else (``analysis.metrics``):
the per-request quantities (TTFT, TTFVT, TPOT, E2EL, schedule lag, E2EL from schedule,
``itl_request_mean``), ``itl`` pooled over every chunk gap as in ``analyze``'s ITL, and
SLO attainment when an SLO is given (failures count as misses). Requests stay the
resampled unit for ``itl`` too: a request's gaps are drawn together (one weight per
request), because gaps of one stream are correlated and resampling them one by one
would make the interval too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

from burstbench.analysis.metrics import METRIC_NAMES, install_views, resolve_run
from burstbench.analysis.slo import good_sql
from burstbench.errors import UsageError
from burstbench.limits import MAX_BOOT

_COLUMNS = {**{m: f"{m}_s" for m in METRIC_NAMES}, "itl": "gap_s"}
STATS = ("mean", "p50", "p90", "p95", "p99")
DEFAULT_METRICS: tuple[str, ...] = tuple(
    f"{m}.{s}" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "p50", "p90", "p99")
)


def _norm_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def parse_metric(spec: str) -> tuple[str, str]:
    """``"ttft.p99"`` -> ``("ttft", "p99")``; ``"ttft"`` means its mean."""
    name, _, stat = spec.strip().partition(".")
    stat = stat or "mean"
    if name == "slo_attainment":
        return name, "mean"
    if name not in _COLUMNS:
        raise UsageError(f"compare metric '{spec}': unknown metric '{name}'; use {', '.join(_COLUMNS)} or slo_attainment")
    if stat == "median":
        stat = "p50"
    if stat not in STATS:
        raise UsageError(f"compare metric '{spec}': unknown statistic '{stat}'; use {', '.join(STATS)}")
    return name, stat


def _values(con: duckdb.DuckDBPyConnection, run_id: str, name: str,
            slo: Mapping[str, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted values of ``name`` in a run, and for pooled ``itl`` the request index of each."""
    if name == "slo_attainment":
        if not slo:
            raise UsageError("comparing slo_attainment needs an SLO (--slo ttft=500ms,...)")
        good, params = good_sql(slo)
        sql = f"SELECT CAST({good} AS DOUBLE) AS v FROM request_metrics WHERE run_id = ? AND phase = 'measure'"
        return np.sort(np.asarray(con.execute(sql, [*params, run_id]).fetchnumpy()["v"], dtype=float)), None
    if name == "itl":  # the gaps analyze's ITL pools: successful measured requests' chunk gaps
        cur = con.execute(
            "SELECT g.gap_s AS v, dense_rank() OVER (ORDER BY g.request_id) - 1 AS k FROM chunk_gaps g"
            " SEMI JOIN (SELECT request_id FROM request_metrics WHERE run_id = $r AND phase = 'measure' AND ok) q"
            " ON g.request_id = q.request_id WHERE g.run_id = $r ORDER BY v", {"r": run_id})
        got = cur.fetchnumpy()
        return np.asarray(got["v"], dtype=float), np.asarray(got["k"], dtype=np.int64)
    col = _COLUMNS[name]
    cur = con.execute(
        f"SELECT {col} AS v FROM request_metrics WHERE run_id = ? AND phase = 'measure' AND ok AND {col} IS NOT NULL",
        [run_id],
    )
    return np.sort(np.asarray(cur.fetchnumpy()["v"], dtype=float)), None


def _gap_count(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    """Gaps ``itl`` pools in a run (every chunk of a successful measured request but its
    first), counted without the window function."""
    return int(con.execute(
        "SELECT count(*) - count(DISTINCT c.request_id) FROM chunks c SEMI JOIN (SELECT request_id FROM request_metrics"
        " WHERE run_id = $r AND phase = 'measure' AND ok) q ON c.request_id = q.request_id WHERE c.run_id = $r",
        {"r": run_id}).fetchone()[0])  # type: ignore[index]


class _GapsInDuckDB:
    """A run's pooled ITL gaps kept in DuckDB (a TEMP table, which spills past the memory
    limit) for runs too large to load: a hundred million gaps and their request ids
    were 1.6 GB of NumPy arrays per run. Gives what ``_point`` and ``_asymptotic_se``
    give for the clustered gaps, from SQL passes and exact order statistics."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str) -> None:
        import uuid

        from burstbench.analysis.quantiles import SortedColumn

        self.con, self.table = con, f"_bb_cmp_gaps_{uuid.uuid4().hex[:12]}"
        con.execute(
            f"CREATE TEMP TABLE {self.table} AS SELECT g.request_id AS g, g.gap_s AS v FROM chunk_gaps g SEMI JOIN"
            " (SELECT request_id FROM request_metrics WHERE run_id = $r AND phase = 'measure' AND ok) q"
            " ON g.request_id = q.request_id WHERE g.run_id = $r", {"r": run_id})
        self.col = SortedColumn(con, f"SELECT v FROM {self.table}")
        self.n = self.col.n
        self.mean = float(con.execute(f"SELECT avg(v) FROM {self.table}").fetchone()[0]) if self.n else 0.0  # type: ignore[index]

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self.table}")

    def point(self, stat: str) -> float:
        if stat == "mean":
            return self.mean
        return self.col.quantiles([float(stat[1:]) / 100.0])[0]

    def se(self, stat: str, z: float) -> float:
        """``_asymptotic_se`` with ``groups``; the quantile's indicator is "below the value at
        rank ceil(q n)", the same as ranking when no value is tied with that one."""
        n = self.n
        if stat == "mean":
            var_sum = self.con.execute(f"SELECT sum(r * r) FROM (SELECT sum(v - ?) AS r FROM {self.table} GROUP BY g)",
                                       [self.mean]).fetchone()[0]  # type: ignore[index]
            return math.sqrt(float(var_sum or 0.0)) / n
        q = float(stat[1:]) / 100.0
        c = math.ceil(q * n)
        x_c = self.col.at([c])[c] if c < n else math.inf
        var_sum = self.con.execute(
            f"SELECT sum(r * r) FROM (SELECT count(*) FILTER (WHERE v < ?) - ? * count(*) AS r FROM {self.table} GROUP BY g)",
            [x_c, q]).fetchone()[0]  # type: ignore[index]
        half = z * math.sqrt(float(var_sum or 0.0))
        lo, hi = int(max(0, np.floor(n * q - half))), int(min(n - 1, np.ceil(n * q + half)))
        at = self.col.at([lo, hi])
        return float((at[hi] - at[lo]) / (2 * z))


def _point(x: np.ndarray, stat: str) -> float:
    if stat == "mean":
        return float(np.mean(x))
    return float(np.percentile(x, float(stat[1:])))


def _replicates(x: np.ndarray, stats: Sequence[str], n_boot: int, rng: np.random.Generator,
                groups: np.ndarray | None = None) -> np.ndarray:
    """``n_boot`` x ``len(stats)`` bootstrap replicates of each statistic of sorted ``x``.

    ``groups``: the request (0..m-1) each value belongs to; a request's values then share
    one Poisson weight (a cluster bootstrap)."""
    n = len(x)
    out = np.empty((n_boot, len(stats)))
    qs = [float(s[1:]) / 100.0 for s in stats if s != "mean"]
    m = int(groups.max()) + 1 if groups is not None else 0
    for b in range(n_boot):
        w = rng.poisson(1.0, m)[groups] if groups is not None else rng.poisson(1.0, n)
        tot = w.sum()
        if tot == 0:
            w[rng.integers(n)] = 1
            tot = 1
        cw = np.cumsum(w)
        j = 0
        for i, s in enumerate(stats):
            if s == "mean":
                out[b, i] = float(w @ x) / tot
            else:
                k = int(np.searchsorted(cw, qs[j] * tot, side="left"))
                out[b, i] = x[min(k, n - 1)]
                j += 1
    return out


def _asymptotic_se(x: np.ndarray, stat: str, z: float, groups: np.ndarray | None = None) -> float:
    """Standard error of a statistic of sorted ``x`` without resampling (large samples).

    Mean: s/sqrt(n). Quantile q: the distribution-free order-statistic interval
    (ranks n*q ± z*sqrt(n*q*(1-q))) divided by 2z. With ``groups`` (clustered values,
    pooled ITL), the variances are the cluster-robust ones: per-request sums of the
    residuals (of x, or of the indicator x <= x_q) squared, which reduce to the above
    when every request holds one value.
    """
    n = len(x)
    q = None if stat == "mean" else float(stat[1:]) / 100.0
    if groups is not None:
        resid = x - x.mean() if q is None else (np.arange(n) < math.ceil(q * n)).astype(float) - q
        var_sum = float(np.sum(np.bincount(groups, weights=resid) ** 2))
        if q is None:
            return math.sqrt(var_sum) / n
        half = z * math.sqrt(var_sum)
        lo, hi = int(max(0, np.floor(n * q - half))), int(min(n - 1, np.ceil(n * q + half)))
        return float((x[hi] - x[lo]) / (2 * z))
    if q is None:
        return float(np.std(x) / np.sqrt(n))
    half = z * np.sqrt(n * q * (1 - q))
    lo, hi = int(max(0, np.floor(n * q - half))), int(min(n - 1, np.ceil(n * q + half)))
    return float((x[hi] - x[lo]) / (2 * z))


def compare_runs(
    con: duckdb.DuckDBPyConnection,
    run_a: str,
    run_b: str,
    *,
    metrics: Sequence[str] | None = None,
    slo: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_bootstrap_n: int = 200_000,
) -> dict[str, Any]:
    """Deltas (B − A) of ``metrics`` (``"ttft.p99"``, ``"e2el.mean"``, ``"slo_attainment"``...).

    When both runs together hold more than ``max_bootstrap_n`` values of a metric, the
    interval is the normal one from each run's asymptotic standard error (order
    statistics for quantiles), which the bootstrap converges to at that size anyway
    and which costs one pass instead of ``n_boot``; ``method`` says which was used.
    """
    if n_boot < 100:
        raise UsageError(f"n_boot={n_boot}: use at least 100 bootstrap replicates")
    if n_boot > MAX_BOOT:
        raise UsageError(
            f"--boot {n_boot:,} is over the limit of {MAX_BOOT:,} replicates (each one a pass over the run); "
            "a 95% interval is stable to a few percent at 2,000"
        )
    install_views(con)
    ra, rb = resolve_run(con, run_a), resolve_run(con, run_b)
    specs = list(metrics) if metrics else list(DEFAULT_METRICS) + (["slo_attainment"] if slo else [])
    parsed = [parse_metric(s) for s in specs]
    by_name: dict[str, list[str]] = {}
    for name, stat in parsed:
        by_name.setdefault(name, [])
        if stat not in by_name[name]:
            by_name[name].append(stat)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for name, stats in by_name.items():
        if name == "itl" and _gap_count(con, ra) + _gap_count(con, rb) > max_bootstrap_n:
            results.update(_compare_large_itl(con, ra, rb, stats, alpha))
            continue
        (xa, ga), (xb, gb) = _values(con, ra, name, slo), _values(con, rb, name, slo)
        scale = 1.0 if name == "slo_attainment" else 1000.0
        if len(xa) == 0 or len(xb) == 0:
            for s in stats:
                results[(name, s)] = {"a": None, "b": None, "delta": None, "delta_pct": None,
                                      "ci": None, "significant": None, "n_a": len(xa), "n_b": len(xb)}
            continue
        boot = len(xa) + len(xb) <= max_bootstrap_n
        rep = (_replicates(xb, stats, n_boot, rng, gb) - _replicates(xa, stats, n_boot, rng, ga)) if boot else None
        z = float(_norm_ppf(1.0 - alpha))
        for i, s in enumerate(stats):
            a, b = _point(xa, s), _point(xb, s)
            if rep is not None:
                lo, hi = np.quantile(rep[:, i], [alpha, 1.0 - alpha])
            else:
                se = float(np.hypot(_asymptotic_se(xa, s, z, ga), _asymptotic_se(xb, s, z, gb)))
                lo, hi = (b - a) - z * se, (b - a) + z * se
            results[(name, s)] = {
                "a": a * scale,
                "b": b * scale,
                "delta": (b - a) * scale,
                "delta_pct": ((b - a) / a * 100.0) if a else None,
                "ci": [float(lo) * scale, float(hi) * scale],
                "significant": bool(lo > 0 or hi < 0),
                "method": "bootstrap" if rep is not None else "asymptotic",
                "n_a": len(xa),
                "n_b": len(xb),
            }
    rows = []
    for name, stat in parsed:
        r = results[(name, stat)]
        rows.append({"metric": name, "stat": stat, "unit": "fraction" if name == "slo_attainment" else "ms", **r})
    return {"run_a": ra, "run_b": rb, "n_boot": n_boot, "seed": seed, "confidence": confidence, "metrics": rows}


def _compare_large_itl(con: duckdb.DuckDBPyConnection, ra: str, rb: str, stats: Sequence[str],
                       alpha: float) -> dict[tuple[str, str], dict[str, Any]]:
    """``compare_runs``'s asymptotic rows for pooled ITL, the gaps staying in DuckDB."""
    z = float(_norm_ppf(1.0 - alpha))
    ga, gb = _GapsInDuckDB(con, ra), _GapsInDuckDB(con, rb)
    try:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for s in stats:
            if not ga.n or not gb.n:
                out[("itl", s)] = {"a": None, "b": None, "delta": None, "delta_pct": None, "ci": None,
                                   "significant": None, "n_a": ga.n, "n_b": gb.n}
                continue
            a, b = ga.point(s), gb.point(s)
            se = float(np.hypot(ga.se(s, z), gb.se(s, z)))
            lo, hi = (b - a) - z * se, (b - a) + z * se
            out[("itl", s)] = {
                "a": a * 1000.0, "b": b * 1000.0, "delta": (b - a) * 1000.0,
                "delta_pct": ((b - a) / a * 100.0) if a else None, "ci": [lo * 1000.0, hi * 1000.0],
                "significant": bool(lo > 0 or hi < 0), "method": "asymptotic", "n_a": ga.n, "n_b": gb.n,
            }
        return out
    finally:
        ga.close()
        gb.close()
