"""Characterise a trace: rates, burstiness, lengths, mixes and sessions, as one JSON-able dict.

Everything is computed with vectorised Polars/NumPy so a multi-million-row trace takes
seconds. Burstiness is reported three ways because they answer different questions:
the inter-arrival CV (1 for Poisson), the index of dispersion of counts (variance / mean
of per-bin counts at 1 s, 10 s and 60 s; 1 for Poisson, growing with bin size for
long-range bursts), and the distribution of the gap CV within each window (how bursty
the trace is locally, which the global CV mixes with rate changes).

Think time between turns is the gap between consecutive turn *arrivals* of a session;
the trace does not say when each response ended, so it includes the response time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from burstbench.errors import InputError
from burstbench.limits import MAX_WINDOWS, MIN_WINDOW_S
from burstbench.traces.schema import Trace

RESOLUTION_CANDIDATES = (3600.0, 60.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6)
DISPERSION_BINS = (1.0, 10.0, 60.0)


def detect_resolution(t: np.ndarray, *, max_check: int = 200_000) -> float | None:
    """The coarsest grid all timestamps lie on (3600 s ... 1 us), or None if finer/continuous.

    Checked on up to ``max_check`` evenly spaced timestamps; a value is on the grid if it
    is within float rounding of a multiple.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size == 0:
        return None
    if t.size > max_check:
        t = t[:: max(1, t.size // max_check)]
    t = t - t.min()
    if not np.any(t > 0):
        return None
    # Off-grid by more than float rounding of the largest value (or 0.1 % of a tick) = not on it.
    slack = max(4e-16 * float(t.max()), 1e-12)
    for r in RESOLUTION_CANDIDATES:
        if np.max(np.abs(t - r * np.round(t / r))) <= min(1e-3 * r, slack + 1e-9 * r):
            return r
    return None


def _dist(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"mean": None, "median": None, "p90": None, "p99": None, "max": None}
    q = np.quantile(x, [0.5, 0.9, 0.99])
    return {
        "mean": float(x.mean()),
        "median": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "max": float(x.max()),
    }


def _f(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _dispersion(t: np.ndarray, span: float, bin_s: float) -> float | None:
    """Variance / mean of the per-bin counts, empty bins included.

    Computed from the non-empty bins only (at most one per request): a month of
    1 s bins is 2.6 million counters, while the sums need just the occupied ones.
    """
    nbins = math.floor(span / bin_s)
    if nbins < 2:
        return None
    idx = (t[t < nbins * bin_s] // bin_s).astype(np.int64)
    _, counts = np.unique(idx, return_counts=True)
    m = counts.sum() / nbins
    if m <= 0:
        return None
    var = float((counts.astype(np.float64) ** 2).sum()) / nbins - m * m
    return float(max(var, 0.0) / m)


def window_count(span: float, window_s: float) -> int:
    """How many windows of ``window_s`` cover ``span``; refused beyond ``MAX_WINDOWS``.

    Every per-window pass (stats, fit, plan) sizes its arrays by this count, so it
    is checked here, before any of them is allocated.
    """
    if not (window_s >= MIN_WINDOW_S and math.isfinite(window_s)):
        raise InputError(f"window must be a finite number >= {MIN_WINDOW_S:g} s, got {window_s}", field="--window")
    nwin = max(1, math.ceil(span / window_s)) if span > 0 else 1
    if nwin > MAX_WINDOWS:
        raise InputError(
            f"a {window_s:g} s window cuts the {span:,.6g} s trace into {nwin:,} windows, over the limit "
            f"of {MAX_WINDOWS:,}; use --window {math.ceil(span / MAX_WINDOWS):,} or more",
            field="--window",
        )
    return nwin


def _windows(t: np.ndarray, gaps: np.ndarray, span: float, window_s: float) -> dict[str, Any]:
    nwin = window_count(span, window_s)
    idx = np.minimum((t // window_s).astype(np.int64), nwin - 1)
    counts = np.bincount(idx, minlength=nwin)
    # The last window may be partial: divide by the time it actually covers.
    lengths = np.full(nwin, window_s, dtype=np.float64)
    lengths[-1] = max(span - (nwin - 1) * window_s, 1e-9) if span > 0 else window_s
    rates = counts / lengths
    # Gap CV per window: a gap belongs to the window of its later arrival.
    gidx = idx[1:]
    n = np.bincount(gidx, minlength=nwin).astype(np.float64)
    s1 = np.bincount(gidx, weights=gaps, minlength=nwin)
    s2 = np.bincount(gidx, weights=gaps * gaps, minlength=nwin)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        cv = np.sqrt(var) / mean
    cv = np.where(n >= 3, cv, np.nan)
    good = cv[np.isfinite(cv)]
    cv_dist = None
    if good.size:
        q = np.quantile(good, [0.1, 0.5, 0.9])
        cv_dist = {
            "windows": int(good.size),
            "mean": float(good.mean()),
            "p10": float(q[0]),
            "median": float(q[1]),
            "p90": float(q[2]),
            "min": float(good.min()),
            "max": float(good.max()),
        }
    return {
        "window_s": window_s,
        "count": nwin,
        "peak_rate": float(rates.max()),
        "peak_window_start_s": float(rates.argmax() * window_s),
        "min_rate": float(rates.min()),
        "cv": cv_dist,
        "start_s": [float(i * window_s) for i in range(nwin)],
        "rate": [float(r) for r in rates],
        "gap_cv": [_f(c) for c in cv],
    }


def _groups(df: pl.DataFrame, col: str) -> dict[str, dict[str, float]] | None:
    if col not in df.columns or df[col].null_count() == df.height:
        return None
    g = (
        df.group_by(col)
        .agg(pl.len().alias("count"), pl.col("failed").fill_null(False).mean().alias("failure_rate"))
        .sort("count", descending=True)
    )
    return {
        str(k) if k is not None else "(none)": {"count": int(c), "failure_rate": float(f)}
        for k, c, f in zip(g[col], g["count"], g["failure_rate"], strict=True)
    }


def _sessions(df: pl.DataFrame) -> dict[str, Any] | None:
    if "session_id" not in df.columns or df["session_id"].null_count() == df.height:
        return None
    s = df.filter(pl.col("session_id").is_not_null())
    order = ["session_id", "turn", "arrival_s"] if s["turn"].null_count() == 0 else ["session_id", "arrival_s"]
    s = s.sort(order)
    turns = s.group_by("session_id").len()["len"].to_numpy()
    think = (
        s.with_columns(pl.col("arrival_s").diff().over("session_id").alias("think"))["think"]
        .drop_nulls()
        .to_numpy()
    )
    td = _dist(turns.astype(np.float64))
    return {
        "sessions": int(turns.size),
        "requests_in_sessions": int(s.height),
        "turns": td,
        "single_turn_share": float(np.mean(turns == 1)),
        "think_time_s": _dist(think),
        "think_time_note": "gap between consecutive turn arrivals (includes the response time)",
    }


def characterise(trace: Trace, window_s: float = 300) -> dict[str, Any]:
    """Describe a trace (see module doc); the result is plain JSON-able types only."""
    df = trace.df
    n = df.height
    if n == 0:
        raise InputError("trace is empty: no requests to characterise")
    t = np.sort(df["arrival_s"].to_numpy().astype(np.float64))
    t = t - t[0]
    span = float(t[-1])
    window_count(span, window_s)  # refuse a window that is too small before any work
    gaps = np.diff(t)
    res = detect_resolution(t)
    out: dict[str, Any] = {
        "source": trace.meta.get("source_file") or trace.meta.get("source"),
        "requests": n,
        "span_s": span,
        "mean_rate": n / span if span > 0 else None,
        "timestamps": {
            "resolution_s": res,
            "tied_share": float(np.mean(gaps == 0)) if gaps.size else 0.0,
        },
    }
    if gaps.size:
        mean = float(gaps.mean())
        out["inter_arrival_s"] = {
            "mean": mean,
            "median": float(np.median(gaps)),
            "std": float(gaps.std()),
            "cv": float(gaps.std() / mean) if mean > 0 else None,
            "p99": float(np.quantile(gaps, 0.99)),
            "max": float(gaps.max()),
        }
    else:
        out["inter_arrival_s"] = None
    out["dispersion"] = {f"{int(b)}s": _dispersion(t, span, b) for b in DISPERSION_BINS}
    out["windows"] = _windows(t, gaps, span, window_s)
    out["peak_rate"] = out["windows"]["peak_rate"]
    inp = df["input_tokens"].to_numpy().astype(np.float64)
    outp = df["output_tokens"].to_numpy().astype(np.float64)
    corr: dict[str, float | None] = {"pearson": None, "spearman": None}
    if n >= 3 and inp.std() > 0 and outp.std() > 0:
        corr["pearson"] = _f(np.corrcoef(inp, outp)[0, 1])
        corr["spearman"] = _f(
            df.select(pl.corr("input_tokens", "output_tokens", method="spearman")).item()
        )
    out["input_tokens"] = _dist(inp)
    out["output_tokens"] = _dist(outp)
    out["token_correlation"] = corr
    failed = df["failed"].fill_null(False)
    out["failed"] = {"count": int(failed.sum()), "rate": float(failed.mean() or 0.0)}
    out["models"] = _groups(df, "model")
    out["tenants"] = _groups(df, "tenant")
    out["sessions"] = _sessions(df)
    return out
