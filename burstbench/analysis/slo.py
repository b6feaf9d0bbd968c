"""SLOs: parsing ``--slo``, goodput, attainment (overall, per metric, over time, per tenant).

Three tools define "goodput" three ways and users quote all three, so all are
reported (DESIGN section 4):

- request goodput (vLLM): successful requests that met every SLO, per second;
- SLO attainment (SGLang, AIPerf): good requests / every request sent, so failures
  count against it, overall and per metric;
- token goodput: output tokens of good requests per second.

A request meets a latency SLO when its value is ``<=`` the threshold. As in vLLM,
TPOT of a request with at most one output token counts as 0 (it meets any TPOT SLO);
any other metric missing on a successful request (no visible token for TTFVT, one
chunk for ITL) fails that SLO, since it cannot be shown to hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import duckdb

from burstbench.analysis.metrics import (
    METRIC_NAMES,
    Selection,
    install_views,
    measured_window,
    require_timeline,
    resolve_run,
    run_info,
)
from burstbench.errors import UsageError

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}
_PART = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:=|<=)\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]*)\s*$", re.I)
_ALIASES = {"latency": "e2el", "e2e": "e2el", "lag": "schedule_lag"}


def parse_slo(text: str | None) -> dict[str, float]:
    """``"ttft=500ms,tpot=50ms,e2el=10s"`` -> ``{"ttft": 0.5, "tpot": 0.05, "e2el": 10.0}`` (seconds).

    A unit is required (``us``, ``ms``, ``s``, ``min``): vLLM's ``--goodput`` takes bare
    milliseconds and guessing would silently be off by 1000.
    """
    if text is None or not text.strip():
        raise UsageError("--slo is empty; give e.g. --slo ttft=500ms,tpot=50ms,e2el=10s")
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        m = _PART.match(part)
        if not m:
            raise UsageError(
                f"--slo part '{part.strip()}' is not NAME=VALUEUNIT; e.g. ttft=500ms (metrics: {', '.join(METRIC_NAMES)})"
            )
        name, value, unit = m.group(1).lower(), float(m.group(2)), m.group(3).lower()
        name = _ALIASES.get(name, name)
        if name in ("itl", "itl_chunk"):
            raise UsageError(f"--slo part '{part.strip()}': ITL pools every chunk gap of a run, so a request has "
                             "no ITL of its own to judge; bound tpot (what AIPerf and GuideLLM call ITL) or "
                             "itl_request_mean (the request's mean chunk gap)")
        if name not in METRIC_NAMES:
            raise UsageError(f"--slo part '{part.strip()}': unknown metric '{name}'; use one of {', '.join(METRIC_NAMES)}")
        if not unit:
            raise UsageError(f"--slo part '{part.strip()}' has no unit; write e.g. {m.group(2)}ms or {m.group(2)}s")
        if unit not in _UNITS:
            raise UsageError(f"--slo part '{part.strip()}': unknown unit '{unit}'; use us, ms, s or min")
        if name in out:
            raise UsageError(f"--slo names '{name}' twice; give each metric once")
        seconds = value * _UNITS[unit]
        if not seconds > 0 or not math.isfinite(seconds):
            raise UsageError(f"--slo part '{part.strip()}': the threshold must be a positive time")
        out[name] = seconds
    if not out:
        raise UsageError("--slo is empty; give e.g. --slo ttft=500ms,tpot=50ms,e2el=10s")
    return out


def format_slo(slo: Mapping[str, float]) -> str:
    """The inverse of ``parse_slo`` in milliseconds, for labels and reports."""
    return ",".join(f"{k}={v * 1000:g}ms" for k, v in slo.items())


def _meets_sql(metric: str) -> str:
    """SQL boolean: the request (a row of request_metrics) meets the SLO on ``metric``.

    The threshold is a bound parameter.
    """
    if metric == "tpot":
        return "(ok AND COALESCE(tpot_s, 0) <= ?)"
    return f"(ok AND COALESCE({metric}_s <= ?, false))"


def good_sql(slo: Mapping[str, float]) -> tuple[str, list[float]]:
    """SQL boolean for "succeeded and met every SLO", with its parameters."""
    parts = [_meets_sql(m) for m in slo]
    return "(" + " AND ".join(parts) + ")", list(slo.values())


def _check(slo: Mapping[str, float]) -> None:
    for m in slo:
        if m not in METRIC_NAMES:
            raise UsageError(f"SLO metric '{m}' unknown; use one of {', '.join(METRIC_NAMES)}")


def goodput(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    slo: Mapping[str, float],
    *,
    sel: Selection | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """Request goodput, SLO attainment, per-metric attainment and token goodput of a run."""
    _check(slo)
    install_views(con)
    sel = sel or Selection()
    cond, cparams = sel.sql()
    if duration_s is None:
        t0, t1 = measured_window(con, run_id, sel)
        duration_s = t1 - t0
    good, gparams = good_sql(slo)
    per_metric = [f"count(*) FILTER (WHERE {_meets_sql(m)})" for m in slo]
    sql = (
        f"SELECT count(*), count(*) FILTER (WHERE {good}),"
        f" COALESCE(sum(output_tokens) FILTER (WHERE {good}), 0)"
        + "".join(", " + p for p in per_metric)
        + " FROM request_metrics r WHERE r.run_id = ? AND r.phase = 'measure'"
        + cond
    )
    params = [*gparams, *gparams, *slo.values(), run_id, *cparams]
    row = con.execute(sql, params).fetchone()
    n, n_good, good_tokens = int(row[0]), int(row[1]), int(row[2])
    per = {m: (int(c) / n if n else None) for m, c in zip(slo, row[3:], strict=True)}
    rate = (lambda x: x / duration_s) if duration_s and duration_s > 0 else (lambda x: None)
    lo, hi = wilson_interval(n_good, n)
    return {
        "slo_ms": {m: v * 1000.0 for m, v in slo.items()},
        "requests": n,
        "good_requests": n_good,
        "request_goodput": rate(n_good),
        "slo_attainment": (n_good / n) if n else None,
        "slo_attainment_ci95": [lo, hi] if n else None,
        "per_metric_attainment": per,
        "token_goodput": rate(good_tokens),
    }


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n == 0.

    Chosen over the normal interval because attainment sits near 1, where the
    normal interval overshoots 1 and collapses to a point for k == n.
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def attainment_over_time(
    con: duckdb.DuckDBPyConnection,
    run_id: str | None,
    slo: Mapping[str, float],
    window_s: float,
) -> list[dict[str, Any]]:
    """SLO attainment per window of ``window_s`` seconds of send time, from the measured start.

    Each row: ``t_start_s``, ``t_end_s``, ``requests``, ``good``, ``failed``,
    ``attainment`` (None for an empty window), ``per_metric`` attainment.
    """
    if not window_s > 0:
        raise UsageError(f"--window {window_s}: give a positive number of seconds")
    _check(slo)
    install_views(con)
    rid = resolve_run(con, run_id)
    require_timeline(run_info(con, rid), "SLO attainment over time")
    t0, t1 = measured_window(con, rid)
    good, gparams = good_sql(slo)
    per_metric = [f"count(*) FILTER (WHERE {_meets_sql(m)}) AS m{i}" for i, m in enumerate(slo)]
    sql = f"""
    SELECT CAST(floor((sent_s - ?) / ?) AS BIGINT) AS w, count(*) AS n,
           count(*) FILTER (WHERE {good}) AS g, count(*) FILTER (WHERE NOT ok) AS f
           {"".join(", " + p for p in per_metric)}
    FROM request_metrics r WHERE r.run_id = ? AND r.phase = 'measure' AND r.sent_s IS NOT NULL
    GROUP BY w ORDER BY w
    """
    rows = con.execute(sql, [t0, window_s, *gparams, *slo.values(), rid]).fetchall()
    by_w = {int(r[0]): r for r in rows}
    n_windows = max(math.ceil((t1 - t0) / window_s), (max(by_w) + 1) if by_w else 0)
    out = []
    for w in range(min(by_w, default=0), n_windows):
        r = by_w.get(w)
        n = int(r[1]) if r else 0
        out.append(
            {
                "t_start_s": t0 + w * window_s,
                "t_end_s": t0 + (w + 1) * window_s,
                "requests": n,
                "good": int(r[2]) if r else 0,
                "failed": int(r[3]) if r else 0,
                "attainment": (int(r[2]) / n) if n else None,
                "per_metric": {m: (int(r[4 + i]) / n if n else None) for i, m in enumerate(slo)},
            }
        )
    return out


def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when all equal, 1/n when one gets all."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    sq = sum(x * x for x in xs)
    if sq == 0:
        return 1.0  # everyone got the same: nothing
    return sum(xs) ** 2 / (len(xs) * sq)


def per_tenant(con: duckdb.DuckDBPyConnection, run_id: str | None, slo: Mapping[str, float]) -> dict[str, Any]:
    """Attainment and goodput per tenant, and Jain's fairness index over the attainments.

    Requests without a tenant are grouped under ``None``. The index is over
    attainment (each tenant's share of its own requests served within SLO), so a
    tenant sending more does not look favoured for it.
    """
    _check(slo)
    install_views(con)
    rid = resolve_run(con, run_id)
    t0, t1 = measured_window(con, rid)
    dur = t1 - t0
    good, gparams = good_sql(slo)
    sql = f"""
    SELECT tenant, count(*) AS n, count(*) FILTER (WHERE {good}) AS g, count(*) FILTER (WHERE NOT ok) AS f,
           COALESCE(sum(output_tokens) FILTER (WHERE {good}), 0) AS gt
    FROM request_metrics r WHERE r.run_id = ? AND r.phase = 'measure'
    GROUP BY tenant ORDER BY tenant NULLS LAST
    """
    rows = con.execute(sql, [*gparams, *gparams, rid]).fetchall()
    tenants = []
    for tenant, n, g, f, gt in rows:
        lo, hi = wilson_interval(int(g), int(n))
        tenants.append(
            {
                "tenant": tenant,
                "requests": int(n),
                "good": int(g),
                "failed": int(f),
                "slo_attainment": int(g) / int(n) if n else None,
                "slo_attainment_ci95": [lo, hi],
                "request_goodput": int(g) / dur if dur > 0 else None,
                "token_goodput": int(gt) / dur if dur > 0 else None,
            }
        )
    return {
        "run_id": rid,
        "slo_ms": {m: v * 1000.0 for m, v in slo.items()},
        "tenants": tenants,
        "jain_index": jain_index([t["slo_attainment"] for t in tenants]),
    }
