"""Aggregations that turn a results store into a few thousand numbers to plot.

Why this exists: a run of a million requests (and a hundred million chunks) cannot
go into an HTML file point by point; a figure needs ~1-2k quantile points per CDF
and a few hundred windows per time series. Every aggregation here runs inside
DuckDB (quantiles, window buckets, sweep-line counts), so only the aggregates cross
into Python. The latency *definitions* (what TTFT or TPOT is) come from the
analysis package's per-request view; this module only decides how to summarise
them for a picture. All user values (run ids, names) are bound as parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from burstbench.analysis.quantiles import exact_quantiles
from burstbench.store import RequestCounts, request_counts

# Probability grid for CDFs: dense in the body, denser still in the upper tail,
# where SLOs live (p99, p99.9). ~1.1k points in all.
_BODY = np.linspace(0.0, 1.0, 1001)
_TAIL = 1.0 - np.logspace(-2, -5, 120)
CDF_PROBS: list[float] = sorted({round(float(p), 9) for p in np.concatenate([_BODY, _TAIL])})

# Nice window widths for time series (seconds).
_NICE_WINDOWS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)

LATENCY_METRICS: dict[str, str] = {
    "ttft": "TTFT",
    "tpot": "TPOT",
    "itl": "ITL (chunk)",
    "e2el": "E2EL",
}


def nice_window(duration_s: float, max_windows: int = 400) -> float:
    """The smallest round window width giving at most ``max_windows`` windows."""
    target = max(duration_s, 1e-9) / max_windows
    for w in _NICE_WINDOWS:
        if w >= target:
            return float(w)
    return float(math.ceil(target / 86400) * 86400)


def _finite(values: Sequence[Any]) -> list[float | None]:
    """Floats with NaN/inf as None (JSON null), rounded to 6 significant digits for size."""
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        out.append(float(f"{f:.6g}") if math.isfinite(f) else None)
    return out


@dataclass
class RunRow:
    """One run as the report shows it."""

    run_id: str
    label: str | None
    model: str | None
    backend: str | None
    endpoint: str | None
    clock: str | None
    target_rate: float | None
    duration_s: float | None
    status: str | None
    end_reason: str | None
    started_at: str | None
    requests: int  # every row (counts.total)
    notes: list[str] = field(default_factory=list)
    counts: RequestCounts | None = None  # the one accounting (store.request_counts) card and table show

    @property
    def name(self) -> str:
        """Short display name: the label when given, else the run id."""
        return self.label or self.run_id


def runs(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[RunRow]:
    """The asked runs (in the given order) with their request counts."""
    import json

    out: list[RunRow] = []
    for rid in run_ids:
        row = con.execute(
            "SELECT run_id, label, model, backend, endpoint, clock, target_rate, duration_s, status,"
            " end_reason, CAST(started_at AS VARCHAR), notes"
            " FROM runs r WHERE run_id = ?",
            [rid],
        ).fetchone()
        if row is None:
            continue
        try:
            notes = [str(n) for n in json.loads(row[11])] if row[11] else []
        except (ValueError, TypeError):
            notes = [str(row[11])]
        counts = request_counts(con, rid)
        out.append(RunRow(*row[:11], requests=counts.total, notes=notes, counts=counts))  # type: ignore[arg-type]
    return out


def run_span(con: duckdb.DuckDBPyConnection, run_id: str) -> float:
    """The run's length in seconds: its recorded duration, else its last event."""
    dur, last = con.execute(
        "SELECT (SELECT duration_s FROM runs WHERE run_id = $r),"
        " (SELECT max(greatest(coalesce(end_s, 0), coalesce(sent_s, 0), coalesce(scheduled_s, 0)))"
        "  FROM requests WHERE run_id = $r)",
        {"r": run_id},
    ).fetchone()  # type: ignore[misc]
    return float(dur or last or 0.0)


# -- latency distributions ------------------------------------------------------------

VIEW = "request_metrics"  # per-request latencies, defined by burstbench.analysis.metrics


def install_views(con: duckdb.DuckDBPyConnection) -> str:
    """Install analysis's metric views (TEMP, so read-only files work); returns the view name."""
    from burstbench.analysis.metrics import install_views as _install

    _install(con)
    return VIEW


# Above this many chunk gaps in a run, the ITL CDF is drawn from a hash sample of its
# requests (~this many gaps): 1k plotted points do not need 100M sorted values, and the
# sampling error of a p99 from 1M gaps is far below a pixel.
ITL_SAMPLE_GAPS = 1_000_000
_HASH_SPACE = 1_000_000


def _metric_sql(metric: str, view: str) -> tuple[str, str]:
    """(FROM clause, value expression in seconds) for one latency metric of one run.

    ITL pools every chunk gap of the run's successful measured requests, as the
    summary's ``itl_ms`` does: the gap expression is analysis's (``chunk_gaps`` view,
    ``chunk_stats``), restricted to the run before the window function, which is
    ~3x faster than filtering the all-runs view. ``$keep`` (out of ``_HASH_SPACE``)
    selects a deterministic hash sample of requests.
    """
    if metric == "itl":
        return (
            "(SELECT c.t_s - lag(c.t_s) OVER (PARTITION BY c.request_id ORDER BY c.seq) AS v"
            " FROM chunks c SEMI JOIN (SELECT request_id FROM " + view
            + " WHERE run_id = $r AND ok AND phase = 'measure'"
            f" AND hash(request_id) % {_HASH_SPACE} < $keep) q ON c.request_id = q.request_id"
            " WHERE c.run_id = $r)",
            "v",
        )
    col = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2el_s", "ttfvt": "ttfvt_s",
           "schedule_lag": "schedule_lag_s"}[metric]
    return (f"(SELECT {col} AS v FROM {view} WHERE run_id = $r AND ok AND phase = 'measure')", "v")


@dataclass
class CDF:
    """Quantile points of one metric of one run (ms); ``sampled`` = gaps used / all gaps."""

    x: list[float | None]
    p: list[float]
    n: int
    total: int

    @property
    def sampled(self) -> bool:
        return self.n < self.total


def latency_cdf(
    con: duckdb.DuckDBPyConnection, run_id: str, metric: str, *, view: str = VIEW,
    max_gaps: int = ITL_SAMPLE_GAPS, total_gaps: int | None = None,
) -> CDF:
    """CDF of one latency metric (milliseconds) as ~1.1k quantile points.

    Quantiles interpolate linearly, the convention of the summary's percentiles, so
    the curve passes exactly through the reported p50/p90/p99 (for ITL when the run
    has at most ``max_gaps`` gaps; beyond, from a hash sample of its requests).
    ``total_gaps``: the run's gap count when already known (``summarize``'s
    ``itl_ms.n``), which saves a pass over the chunks.
    """
    src, _ = _metric_sql(metric, view)
    params: dict[str, Any] = {"r": run_id}
    n = total = None
    if metric == "itl":
        # every selected request's chunks but its first are gaps: counts without the window
        def count(keep: int) -> int:
            return int(con.execute(
                "SELECT count(*) - count(DISTINCT c.request_id) FROM chunks c SEMI JOIN (SELECT request_id"
                " FROM " + view + " WHERE run_id = $r AND ok AND phase = 'measure'"
                f" AND hash(request_id) % {_HASH_SPACE} < $keep) q ON c.request_id = q.request_id"
                " WHERE c.run_id = $r",
                {"r": run_id, "keep": keep},
            ).fetchone()[0])  # type: ignore[index]

        n = total = count(_HASH_SPACE) if total_gaps is None else int(total_gaps)
        params["keep"] = _HASH_SPACE
        if total > max_gaps:
            params["keep"] = max(1, int(_HASH_SPACE * max_gaps / total))
            n = count(params["keep"])
    xs, n = exact_quantiles(con, src, params, CDF_PROBS)
    if not n:
        return CDF([], [], 0, total or 0)
    return CDF(_finite([v * 1000.0 for v in xs]), CDF_PROBS, n, total if total is not None else n)


# -- time series ----------------------------------------------------------------------


@dataclass
class WindowSeries:
    """Per-window aggregates of one run; ``t`` is each window's start (s)."""

    window_s: float
    t: list[float]
    sent_rate: list[float | None]
    completed_rate: list[float | None]
    failed_rate: list[float | None]
    in_flight: list[float | None]
    output_tok_rate: list[float | None]
    ttft_p50_ms: list[float | None]
    ttft_p90_ms: list[float | None]
    lag_p50_ms: list[float | None]
    lag_p99_ms: list[float | None]
    lag_max_ms: list[float | None]
    streamed_tok_rate: list[float | None]  # tokens in chunks received per second


def window_series(
    con: duckdb.DuckDBPyConnection, run_id: str, window_s: float, *, view: str = VIEW
) -> WindowSeries:
    """Sent vs completed rate, in-flight count, token throughput, TTFT and lag per window.

    In-flight is exact at each window's end by a sweep line: requests sent up to t
    minus requests ended up to t (a request with no end is still in flight).
    Output throughput counts a request's output tokens in the window where it ended;
    streamed throughput counts tokens by the window their chunk arrived in (smooth,
    but only for runs that recorded chunks). Windows cover sends and completions;
    chunk windows beyond them are dropped (chunks arrive before their request ends).
    """
    rows = con.execute(
        f"""
        WITH q AS (SELECT * FROM {view} WHERE run_id = $r),
        sent AS (
            SELECT floor(sent_s / $w)::BIGINT AS k, count(*) AS n,
                   quantile_cont(ttft_s, 0.5) FILTER (WHERE ok) AS ttft50,
                   quantile_cont(ttft_s, 0.9) FILTER (WHERE ok) AS ttft90,
                   quantile_cont(schedule_lag_s, 0.5) AS lag50,
                   quantile_cont(schedule_lag_s, 0.99) AS lag99,
                   max(schedule_lag_s) AS lagmax
            FROM q WHERE sent_s IS NOT NULL GROUP BY k),
        done AS (
            SELECT floor(end_s / $w)::BIGINT AS k,
                   count(*) FILTER (WHERE ok) AS ok_n,
                   count(*) FILTER (WHERE NOT ok) AS bad_n,
                   count(*) AS ended,
                   sum(output_tokens) FILTER (WHERE ok) AS tok
            FROM q WHERE end_s IS NOT NULL GROUP BY k),
        streamed AS (
            SELECT floor(t_s / $w)::BIGINT AS k, sum(coalesce(tokens, 1)) AS tok
            FROM chunks WHERE run_id = $r GROUP BY k),
        ks AS (SELECT range AS k FROM range(0, (SELECT greatest(coalesce(max(k), 0) + 1, 1)
                   FROM (SELECT k FROM sent UNION ALL SELECT k FROM done))))
        SELECT ks.k, coalesce(sent.n, 0), coalesce(done.ok_n, 0), coalesce(done.bad_n, 0),
               sum(coalesce(sent.n, 0) - coalesce(done.ended, 0)) OVER (ORDER BY ks.k),
               coalesce(done.tok, 0), ttft50, ttft90, lag50, lag99, lagmax, coalesce(streamed.tok, 0)
        FROM ks LEFT JOIN sent USING (k) LEFT JOIN done USING (k) LEFT JOIN streamed USING (k)
        ORDER BY ks.k
        """,
        {"r": run_id, "w": window_s},
    ).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(12)]
    w = window_s

    def per_s(col: Sequence[Any]) -> list[float | None]:
        return _finite([(v or 0) / w for v in col])

    def ms(col: Sequence[Any]) -> list[float | None]:
        return _finite([None if v is None else v * 1000.0 for v in col])

    return WindowSeries(
        window_s=w,
        t=[float(k) * w for k in cols[0]],
        sent_rate=per_s(cols[1]),
        completed_rate=per_s(cols[2]),
        failed_rate=per_s(cols[3]),
        in_flight=_finite(cols[4]),
        output_tok_rate=per_s(cols[5]),
        ttft_p50_ms=ms(cols[6]),
        ttft_p90_ms=ms(cols[7]),
        lag_p50_ms=ms(cols[8]),
        lag_p99_ms=ms(cols[9]),
        lag_max_ms=ms(cols[10]),
        streamed_tok_rate=per_s(cols[11]),
    )


@dataclass
class Series:
    """One telemetry metric's bucketed time series; counters are shown as rates.

    ``final``: the metric was reported once per label set (a worker's peak RSS and CPU
    seconds, sent when it ends), so it is one value, summed over the label sets, at
    the last report's time: a quantity of the run, not a series (nor a rate).
    """

    source: str
    name: str
    t: list[float]
    value: list[float | None]
    counter: bool = False
    final: bool = False

    @property
    def title(self) -> str:
        return f"{self.name} rate (/s)" if self.counter else self.name


# Histogram parts are unreadable as time series; their _sum/_count duplicate counters.
_SKIP_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
_COUNTER_SUFFIX = "_total"
# What a reader looks at first on an LLM server (vLLM names, without the prefix).
_PREFERRED = (
    "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "gpu_cache_usage_perc",
    "generation_tokens_total", "prompt_tokens_total", "num_preemptions_total",
    "request_success_total", "prefix_cache_hits_total", "prefix_cache_queries_total",
    "process_cpu_percent", "cpu_percent", "process_rss_bytes", "rss_bytes",
)


# vLLM renamed these gauges and counters (V1: ``gpu_cache_usage_perc`` became
# ``kv_cache_usage_perc``); servers in between export both names for one quantity.
_RENAMED = {
    "gpu_cache_usage_perc": "kv_cache_usage_perc",
    "gpu_prefix_cache_hits_total": "prefix_cache_hits_total",
    "gpu_prefix_cache_queries_total": "prefix_cache_queries_total",
}


def _without_old_names(names: list[tuple[str, str, int, bool]]) -> list[tuple[str, str, int, bool]]:
    """Drop a metric's old vLLM name where the same source also reports its new name,
    so one quantity is drawn once (the new name wins; an old server keeps its old one)."""
    have = {(n[0], n[1]) for n in names}

    def renamed(name: str) -> str | None:
        prefix, _, bare = name.rpartition(":")
        new = _RENAMED.get(bare)
        return None if new is None else (f"{prefix}:{new}" if prefix else new)

    return [n for n in names if (n[0], renamed(n[1])) not in have]


def _rank(name: str, n: int) -> tuple[int, int, str]:
    bare = name.split(":")[-1]
    pref = _PREFERRED.index(bare) if bare in _PREFERRED else len(_PREFERRED)
    return (pref, -n, name)


def telemetry_series(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    sources: Sequence[str],
    *,
    max_names: int = 12,
    max_points: int = 400,
) -> tuple[list[Series], int]:
    """Telemetry of the given sources, bucketed to at most ``max_points`` per metric.

    Values with several label sets (per-worker client CPU, labelled server gauges)
    are summed across label sets within a sample time, then averaged per bucket, so
    a gauge like ``num_requests_running`` reads as the total. Counters (``*_total``)
    become rates: the difference between consecutive samples over their time
    difference (negative steps, i.e. counter resets, dropped); a metric reported once
    per label set is one ``final`` value (see ``Series``). Histogram parts
    (``_bucket``, ``_sum``, ``_count``) are skipped, and so is a metric's old vLLM name
    when its new one is there too. Returns up to ``max_names``
    series, well-known serving metrics first, and how many metrics qualified.
    """
    names = con.execute(
        "SELECT source, name, count(*) AS n,"
        " count(*) = count(DISTINCT (coalesce(labels, ''), coalesce(worker_id, -1))) AS final"
        " FROM telemetry WHERE run_id = $r AND source IN"
        " (SELECT unnest($s::VARCHAR[])) GROUP BY source, name",
        {"r": run_id, "s": list(sources)},
    ).fetchall()
    names = _without_old_names([n for n in names if not n[1].endswith(_SKIP_SUFFIXES)])
    if not names:
        return [], 0
    names.sort(key=lambda n: _rank(n[1], n[2]))
    span = con.execute(
        "SELECT min(t_s), max(t_s) FROM telemetry WHERE run_id = $r", {"r": run_id}
    ).fetchone()
    t0, t1 = float(span[0] or 0.0), float(span[1] or 0.0)  # type: ignore[index]
    w = max((t1 - t0) / max_points, 1e-9)
    chosen = names[:max_names]
    order = {(c[0], c[1]): i for i, c in enumerate(chosen)}
    grouped: dict[tuple[str, str], Series] = {}
    finals = [c for c in chosen if c[3]]
    if finals:
        for source, name, t, v in con.execute(
            "SELECT source, name, max(t_s), sum(value) FROM telemetry WHERE run_id = $r"
            " AND (source, name) IN (SELECT (unnest($src::VARCHAR[]), unnest($nm::VARCHAR[])))"
            " AND value IS NOT NULL GROUP BY source, name",
            {"r": run_id, "src": [c[0] for c in finals], "nm": [c[1] for c in finals]},
        ).fetchall():
            grouped[(source, name)] = Series(source, name, [float(f"{t:.6g}")], _finite([v]), final=True)
    chosen = [c for c in chosen if not c[3]]
    counters = [c[1].endswith(_COUNTER_SUFFIX) for c in chosen]
    rows = con.execute(
        """
        WITH pick AS (SELECT unnest($src::VARCHAR[]) AS source, unnest($nm::VARCHAR[]) AS name,
                             unnest($ctr::BOOLEAN[]) AS counter),
        s AS (SELECT t.source, t.name, pick.counter, t.t_s, sum(t.value) AS v FROM telemetry t
              JOIN pick USING (source, name) WHERE t.run_id = $r AND t.value IS NOT NULL
              GROUP BY ALL),
        d AS (SELECT source, name, counter, t_s,
                     CASE WHEN counter THEN (v - lag(v) OVER win) / nullif(t_s - lag(t_s) OVER win, 0)
                          ELSE v END AS y
              FROM s WINDOW win AS (PARTITION BY source, name ORDER BY t_s))
        SELECT source, name, floor((t_s - $t0) / $w)::BIGINT AS k, avg(y)
        FROM d WHERE y IS NOT NULL AND isfinite(y) AND NOT (counter AND y < 0)
        GROUP BY source, name, k ORDER BY source, name, k
        """,
        {"r": run_id, "src": [c[0] for c in chosen], "nm": [c[1] for c in chosen], "ctr": counters,
         "t0": t0, "w": w},
    ).fetchall()
    is_counter = {(c[0], c[1]): f for c, f in zip(chosen, counters, strict=True)}
    for source, name, k, v in rows:
        s = grouped.setdefault((source, name), Series(source, name, [], [], is_counter[(source, name)]))
        s.t.append(float(f"{t0 + (k + 0.5) * w:.6g}"))
        s.value.append(_finite([v])[0])
    return sorted(grouped.values(), key=lambda s: order[(s.source, s.name)]), len(names)


def histogram(
    con: duckdb.DuckDBPyConnection, sql_values: str, params: dict[str, Any], *, bins: int = 60, log: bool = False
) -> tuple[list[float], list[int]]:
    """Bin edges (``bins + 1``) and counts of a value column, computed in DuckDB.

    ``sql_values`` is a query yielding one column ``v``; ``log`` bins on log10 of
    positive values, which suits token lengths spanning 1 to 100k.
    """
    expr = "log10(v)" if log else "v"
    where = "v > 0" if log else "v IS NOT NULL"
    row = con.execute(
        f"SELECT min({expr}), max({expr}) FROM ({sql_values}) WHERE {where}", params
    ).fetchone()
    if row is None or row[0] is None:
        return [], []
    lo, hi = float(row[0]), float(row[1])
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = con.execute(
        f"SELECT least(floor(({expr} - $lo) / $bw)::BIGINT, $nb - 1) AS b, count(*) FROM ({sql_values})"
        f" WHERE {where} GROUP BY b ORDER BY b",
        {**params, "lo": lo, "bw": width, "nb": bins},
    ).fetchall()
    edges = [lo + i * width for i in range(bins + 1)]
    full = [0] * bins
    for b, n in counts:
        full[int(b)] = int(n)
    if log:
        edges = [10**e for e in edges]
    return _finite(edges), full  # type: ignore[return-value]
