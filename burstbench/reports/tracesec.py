"""The trace section of a report: what the workload looked like and how well it was fitted.

Why here and not in ``traces``: the characterisation and the fits are
``burstbench.traces.stats.characterise`` and ``burstbench.traces.fit.fit_trace``;
this module only turns a Trace and those results into a bounded number of points
(quantiles, bins), so a ten-million-row trace still makes a small figure.
Fitted curves are drawn through ``traces.processes.ppf``, the same inverse CDF that
synthesis samples from, so the overlay is exactly the model ``trace synth`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from burstbench.errors import InputError
from burstbench.reports import figures as fg
from burstbench.reports import plotdata as pd
from burstbench.reports.html import Section, esc, note, table
from burstbench.traces.schema import Trace

# Quantile grid for trace CDFs and QQ plots (avoid 0 and 1, where fitted ppfs diverge).
_P = np.unique(np.concatenate([np.linspace(0.001, 0.999, 999), 1 - np.logspace(-3, -4.5, 30)]))


def _q(x: np.ndarray, p: np.ndarray = _P) -> list[float | None]:
    return pd._finite(np.quantile(x, p)) if x.size else []


def _log_bins(values: np.ndarray, bins: int = 60) -> tuple[list[float], list[int]]:
    v = values[values >= 1].astype(np.float64)
    if v.size == 0:
        return [], []
    lo, hi = math.log10(v.min()), math.log10(v.max())
    if hi <= lo:
        hi = lo + 1
    counts, edges = np.histogram(np.log10(v), bins=bins, range=(lo, hi))
    return pd._finite(10**edges), [int(c) for c in counts]  # type: ignore[return-value]


def _kv_table(title: str, items: list[tuple[str, Any]]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "–" if v is None else str(v)

    return f"<h3>{esc(title)}</h3>" + table(["quantity", "value"], [(k, show(v)) for k, v in items], cls="kvt")


def trace_section(
    trace: Trace,
    name: str,
    *,
    progress: Callable[[str], None] = lambda _s: None,
) -> Section:
    """Arrivals over time, inter-arrival CDF with fits, QQ plot, lengths, joint density, sessions."""
    from burstbench.traces.fit import fit_trace, prepare_gaps
    from burstbench.traces.processes import ppf
    from burstbench.traces.spec import Dist
    from burstbench.traces.stats import characterise

    df = trace.df
    if df.height == 0:
        raise InputError("trace is empty: nothing to report", path=name)
    sec = Section("trace", f"Trace: {name}", intro=f"{df.height:,} requests over {trace.duration_s:,.1f} s.")
    progress("characterising the trace")
    stats = characterise(trace)
    t = np.sort(df["arrival_s"].to_numpy().astype(np.float64))

    # Arrivals over time
    # ~20 arrivals per window on average (so a window's rate means something), 10-200 windows
    w = pd.nice_window(float(t[-1] - t[0]) if t.size > 1 else 1.0, int(min(200, max(10, t.size / 20))))
    k = ((t - t[0]) // w).astype(np.int64)
    counts = np.bincount(k)
    series = [{"name": "arrivals", "x": [float(i * w) for i in range(counts.size)], "y": pd._finite(counts / w)}]
    sec.blocks.append(fg.lines("Arrival rate over time", "time (s)", "requests/s", series, step=True,
                               caption=f"Requests per second in {w:g} s windows."))

    fit = None
    if df.height >= 3:
        progress("fitting arrival and length distributions")
        try:
            fit = fit_trace(trace)
        except InputError as exc:
            sec.blocks.append(note(f"No fit: {exc}", "warn"))

    # Inter-arrival CDF with the fitted families, and a QQ plot against the best one
    if fit is not None:
        gaps, gnotes = prepare_gaps(t, seed=0)
        gaps = gaps[gaps > 0]
        emp = _q(gaps)
        cdf_series: list[tuple[str, Any, Any]] = [("empirical", emp, list(_P))]
        best = fit.arrivals.best
        for c in fit.arrivals.candidates:
            xs = ppf(Dist(c.family, dict(c.params)), _P)
            cdf_series.append((f"{c.family} (KS {c.ks:.3f}){' best' if c is best else ''}", pd._finite(xs), list(_P)))
        tie = " Tied timestamps were spread within their resolution before taking gaps (as the fit does)." \
            if gnotes.get("method") not in (None, "none") else ""
        sec.blocks.append(fg.cdf("Inter-arrival time CDF with fitted families", "inter-arrival time (s)",
                                 cdf_series, caption=f"{gaps.size:,} gaps.{tie}"))
        model_q = pd._finite(ppf(Dist(best.family, dict(best.params)), _P))
        finite = [v for v in model_q + emp if v is not None and v > 0]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        sec.blocks.append(fg.scatter_xy(
            f"QQ plot: inter-arrival times against {best.family}", f"{best.family} quantile (s)",
            "empirical quantile (s)",
            [{"name": "quantiles", "x": model_q, "y": emp, "mode": "markers", "size": 4},
             {"name": "y = x", "x": [lo, hi], "y": [lo, hi], "mode": "lines", "dash": "dash", "color": "#444"}],
            x_log=lo > 0 and hi / lo > 100, y_log=lo > 0 and hi / lo > 100,
            caption="Points on the diagonal: the fitted family reproduces the gaps; a tail above it "
            "means the trace is burstier than the model."))
        rows = []
        for q in (fit.arrivals, fit.input_tokens, fit.output_tokens):
            for c in q.candidates:
                if c.family == "empirical":
                    continue
                params = ", ".join(f"{k}={v:.4g}" for k, v in c.params.items() if isinstance(v, int | float))
                rows.append((q.quantity, c.family + (" (best)" if c is q.best else ""), params,
                             "–" if c.aic is None else f"{c.aic:.1f}", "–" if c.bic is None else f"{c.bic:.1f}",
                             f"{c.ks:.4f}"))
        sec.blocks.append("<h3>Fitted families</h3>" + table(
            ["quantity", "family", "parameters", "AIC", "BIC", "KS"], rows))

    # Length histograms and joint density
    inp = df["input_tokens"].to_numpy()
    out = df["output_tokens"].to_numpy()
    hin, hout = _log_bins(inp), _log_bins(out)
    sec.blocks.append(fg.bars("Token length histograms", "tokens (log bins)", "requests",
                              [("input", *hin), ("output", *hout)], x_log=True,
                              caption="Log-spaced bins; zero-length outputs (failed requests) excluded."))
    keep = (inp >= 1) & (out >= 1)
    if keep.sum() >= 2:
        li, lo_ = np.log10(inp[keep]), np.log10(out[keep])
        nb = 40
        h, xe, ye = np.histogram2d(li, lo_, bins=nb,
                                   range=[[li.min(), max(li.max(), li.min() + 1)],
                                          [lo_.min(), max(lo_.max(), lo_.min() + 1)]])
        z = [[int(v) if v > 0 else None for v in row] for row in h.T]
        corr = stats.get("token_correlation") or {}
        sp = corr.get("spearman")
        sec.blocks.append(fg.heatmap(
            "Input vs output tokens (joint density)", "input tokens", "output tokens",
            pd._finite(10 ** ((xe[:-1] + xe[1:]) / 2)), pd._finite(10 ** ((ye[:-1] + ye[1:]) / 2)), z,
            log_axes=True,
            caption=f"{int(keep.sum()):,} requests in {nb}×{nb} log bins"
            + (f"; Spearman ρ = {sp:.3f}" if sp is not None else "") + "."))

    # Tenants
    tenants = stats.get("tenants")
    if tenants:
        top = list(tenants.items())[:25]
        sec.blocks.append(fg.bars("Requests per tenant", "tenant", "requests",
                                  [("requests", [k for k, _ in top], [v["count"] for _, v in top])],
                                  caption=f"{len(tenants)} tenants" + (" (top 25 shown)" if len(tenants) > 25 else "")))
        sec.blocks[-1].layout["xaxis"]["type"] = "category"

    # Sessions
    sess = stats.get("sessions")
    if sess:
        sid = df["session_id"].drop_nulls()
        turns = sid.value_counts()["count"].to_numpy()
        bins = np.bincount(np.minimum(turns, 50))
        sec.blocks.append(fg.bars("Turns per session", "turns (50 = 50 or more)", "sessions",
                                  [("sessions", list(range(1, bins.size)), [int(b) for b in bins[1:]])]))
        td, tt = sess.get("turns") or {}, sess.get("think_time_s") or {}
        sec.blocks.append(_kv_table("Sessions", [
            ("sessions", sess["sessions"]), ("requests in sessions", sess["requests_in_sessions"]),
            ("single-turn share", sess["single_turn_share"]), ("turns mean", td.get("mean")),
            ("turns p90", td.get("p90")), ("turns max", td.get("max")),
            ("think time median (s)", tt.get("median")), ("think time p90 (s)", tt.get("p90")),
        ]) + note(str(sess.get("think_time_note", ""))))

    ia = stats.get("inter_arrival_s") or {}
    disp = stats.get("dispersion") or {}
    items: list[tuple[str, Any]] = [
        ("requests", stats["requests"]), ("span (s)", stats["span_s"]), ("mean rate (req/s)", stats["mean_rate"]),
        ("peak rate (req/s, per window)", stats.get("peak_rate")),
        ("inter-arrival mean (s)", ia.get("mean")), ("inter-arrival CV", ia.get("cv")),
        ("timestamp resolution (s)", (stats.get("timestamps") or {}).get("resolution_s")),
        ("tied timestamps share", (stats.get("timestamps") or {}).get("tied_share")),
        *((f"index of dispersion ({k})", v) for k, v in disp.items()),
        ("input tokens median / p99", f"{stats['input_tokens']['median']:.0f} / {stats['input_tokens']['p99']:.0f}"),
        ("output tokens median / p99", f"{stats['output_tokens']['median']:.0f} / {stats['output_tokens']['p99']:.0f}"),
        ("failed in source", (stats.get("failed") or {}).get("count")),
    ]
    sec.blocks.insert(0, _kv_table("Characterisation", items))
    return sec
