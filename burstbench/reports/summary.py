"""Report sections whose numbers come from ``burstbench.analysis``: the summary with SLO
verdicts, per-tenant attainment, run comparison with confidence intervals, and sweeps.

Why a separate module: these sections never compute a metric themselves; they call
``summarize``, ``per_tenant``, ``compare_runs`` and ``attainment_over_time`` and
format the results, so the report always agrees with ``burstbench analyze``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from burstbench.analysis.compare import compare_runs
from burstbench.analysis.metrics import summarize
from burstbench.analysis.slo import attainment_over_time, format_slo, per_tenant
from burstbench.analysis.sweep import held_rate
from burstbench.reports import figures as fg
from burstbench.reports import plotdata as pd
from burstbench.reports.html import Raw, Section, badge, esc, note, table

# Labels written by burstbench.analysis.sweep: rate steps and concurrency steps.
SWEEP_LABEL = re.compile(r"^sweep(-concurrency)?:\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*$", re.I)
# The bootstrap costs O(replicates x requests) in Python; beyond this a report would
# take minutes, so the comparison is left to the analysis API.
COMPARE_MAX_REQUESTS = 200_000
SUMMARY_METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2el_ms", "E2EL"))


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def summaries(
    con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], slo: Mapping[str, float] | None
) -> dict[str, dict[str, Any]]:
    return {r.run_id: summarize(con, r.run_id, slo=slo) for r in runs}


def summary_section(
    runs: Sequence[pd.RunRow],
    sums: Mapping[str, Mapping[str, Any]],
    slo: Mapping[str, float] | None,
    target: float,
) -> Section:
    """One card per run: the verdict first, then the headline numbers."""
    cards = []
    for r in runs:
        s = sums[r.run_id]
        gp = s.get("goodput")
        if gp and gp.get("slo_attainment") is not None:
            att = gp["slo_attainment"]
            ok = att >= target
            ci = gp.get("slo_attainment_ci95") or [None, None]
            verdict = (
                f'<div class="verdict">{badge(ok).html} SLO attainment <b>{esc(pct(att))}</b>'
                f" (95% CI {esc(pct(ci[0]))}–{esc(pct(ci[1]))}; target {esc(pct(target))})</div>"
            )
            per = gp.get("per_metric_attainment") or {}
            verdict += "".join(
                f"{badge(v is not None and v >= target, f'{m} ≤ {slo[m] * 1000:g} ms: {pct(v)}').html} "
                for m, v in per.items()
                if slo and m in slo
            )
        elif slo:
            verdict = f'<div class="verdict">{badge(None, "no requests").html}</div>'
        else:
            verdict = f'<div class="verdict">{badge(None, "no SLO given").html}</div>'
        kv = [
            ("requests", r.counts.describe() if r.counts is not None
             else f"{s['requests']:,} ({s['completed']:,} ok, {s['failed']:,} failed)"),
            ("duration", f"{fmt(s['duration_s'])} s"),
            ("request throughput", f"{fmt(s['request_throughput'])} req/s"),
            ("output throughput", f"{fmt(s['output_throughput'])} tok/s"),
            ("peak concurrency", "–" if s.get("peak_concurrency") is None else str(s["peak_concurrency"])),
        ]
        if s.get("target_rate") is not None:
            kv.insert(2, ("offered / achieved", f"{fmt(s['target_rate'])} / {fmt(s.get('achieved_rate'))} req/s"))
        for key, name in SUMMARY_METRICS:
            m = s.get(key) or {}
            kv.append((f"{name} p50 / p99", f"{fmt(m.get('p50'))} / {fmt(m.get('p99'))} ms"))
        if gp:
            kv.append(("request goodput", f"{fmt(gp.get('request_goodput'))} req/s"))
            kv.append(("token goodput", f"{fmt(gp.get('token_goodput'))} tok/s"))
        kv_html = "".join(f"<span>{esc(k)}</span><span>{esc(v)}</span>" for k, v in kv)
        sub = " · ".join(x for x in (r.model or "", r.backend or "", r.run_id) if x)
        cards.append(
            f'<div class="card"><h3>{esc(r.name)}</h3><div class="sub">{esc(sub)}</div>'
            f'{verdict}<div class="kv">{kv_html}</div></div>'
        )
    intro = (
        f"SLO: {format_slo(slo)}; a run passes when its attainment (good requests / all sent, "
        f"failures count as misses) is at least {pct(target)}."
        if slo
        else "No SLO given: pass --slo ttft=500ms,tpot=50ms to get verdicts."
    )
    sec = Section("summary", "Summary", intro=intro)
    sec.blocks.append(f'<div class="cards">{"".join(cards)}</div>')
    return sec


def latency_table(runs: Sequence[pd.RunRow], sums: Mapping[str, Mapping[str, Any]]) -> str:
    """Every latency statistic of every run, in ms (what ``analyze`` prints)."""
    rows = []
    for key, name in (*SUMMARY_METRICS, ("ttfvt_ms", "TTFVT"), ("schedule_lag_ms", "schedule lag"),
                      ("e2el_from_schedule_ms", "E2EL from schedule")):
        for r in runs:
            m = sums[r.run_id].get(key) or {}
            rows.append((name, r.name, *(fmt(m.get(k)) for k in ("mean", "std", "p50", "p90", "p95", "p99", "max"))))
    return "<h3>Latency statistics (ms)</h3>" + table(
        ["metric", "run", "mean", "std", "p50", "p90", "p95", "p99", "max"], rows
    )


def attainment_series(
    con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], slo: Mapping[str, float] | None,
    window_s: Mapping[str, float],
) -> dict[str, tuple[list[float], list[float | None]]]:
    """Each run's SLO attainment per window (``window_s``: run id -> width), in percent."""
    if not slo:
        return {}
    out = {}
    for r in runs:
        rows = attainment_over_time(con, r.run_id, slo, window_s[r.run_id])
        out[r.run_id] = (
            [row["t_start_s"] for row in rows],
            [None if row["attainment"] is None else row["attainment"] * 100.0 for row in rows],
        )
    return out


def tenant_block(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], slo: Mapping[str, float] | None) -> str | None:
    """Per-tenant attainment and Jain's fairness index, when requests carry tenants."""
    if not slo:
        return None
    rows = []
    for r in runs:
        pt = per_tenant(con, r.run_id, slo)
        tenants = pt["tenants"]
        if len(tenants) < 2 and (not tenants or tenants[0]["tenant"] is None):
            continue
        for t in tenants[:50]:
            ci = t.get("slo_attainment_ci95") or [None, None]
            rows.append((r.name, t["tenant"] if t["tenant"] is not None else "(none)", f"{t['requests']:,}",
                         f"{t['failed']:,}", pct(t["slo_attainment"]), f"{pct(ci[0])}–{pct(ci[1])}",
                         fmt(t["request_goodput"]), fmt(pt["jain_index"])))
    if not rows:
        return None
    return "<h3>Per tenant</h3>" + table(
        ["run", "tenant", "requests", "failed", "attainment", "95% CI", "goodput (req/s)", "Jain index (run)"], rows
    )


def compare_section(
    con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], slo: Mapping[str, float] | None
) -> Section | None:
    """Each run against the first: deltas with bootstrap 95% CIs; real differences in bold."""
    if len(runs) < 2:
        return None
    base = runs[0]
    sec = Section(
        "compare",
        "Run comparison",
        intro=f"Each run against {base.name}: delta = run − baseline with a bootstrap 95% "
        "confidence interval (requests resampled; 1000 replicates, 200 above 50k requests); "
        "'real' when the interval excludes 0.",
    )
    for other in runs[1:]:
        n = max(base.requests, other.requests)
        if n > COMPARE_MAX_REQUESTS:
            sec.blocks.append(note(
                f"{other.name} vs {base.name}: not compared here; {n:,} requests is beyond what the "
                f"bootstrap does in a report's time (limit {COMPARE_MAX_REQUESTS:,}). Compare them with "
                "burstbench.analysis.compare.compare_runs directly.", "warn"))
            continue
        n_boot = 1000 if n <= 50_000 else 200
        res = compare_runs(con, base.run_id, other.run_id, slo=slo, n_boot=n_boot)
        rows = []
        for m in res["metrics"]:
            unit = m.get("unit", "ms")
            conv = (lambda v: pct(v)) if unit == "fraction" else (lambda v: fmt(v))
            ci = m.get("ci") or [None, None]
            sig = m.get("significant")
            rows.append((
                f"{m['metric']}.{m['stat']}", conv(m["a"]), conv(m["b"]), conv(m["delta"]),
                "–" if m.get("delta_pct") is None else f"{m['delta_pct']:+.1f}%",
                f"[{conv(ci[0])}, {conv(ci[1])}]",
                badge(None, "n/a") if sig is None else Raw(
                    f'<span class="sig">{"real" if sig else "noise"}</span>'),
            ))
        sec.blocks.append(f"<h3>{esc(other.name)} vs {esc(base.name)}</h3>")
        sec.blocks.append(table(["metric", base.name, other.name, "delta", "delta %",
                                 "95% CI of delta", "difference"], rows))
    return sec


def sweep_step(r: pd.RunRow) -> tuple[str, float] | None:
    """('rate' | 'concurrency', value) of a sweep step's label, or None."""
    m = SWEEP_LABEL.match(r.label or "")
    if m:
        return ("concurrency" if m.group(1) else "rate", float(m.group(2)))
    return None


def sweep_sections(
    con: duckdb.DuckDBPyConnection,
    steps: Sequence[pd.RunRow],
    slo: Mapping[str, float] | None,
    target: float,
) -> list[Section]:
    """One section per sweep kind present (rate steps, concurrency steps)."""
    out = []
    for kind in ("rate", "concurrency"):
        mine = [r for r in steps if (sweep_step(r) or ("", 0))[0] == kind]
        sec = sweep_section(con, mine, slo, target, kind=kind)
        if sec:
            out.append(sec)
    return out


def sweep_section(
    con: duckdb.DuckDBPyConnection,
    steps: Sequence[pd.RunRow],
    slo: Mapping[str, float] | None,
    target: float,
    *,
    kind: str = "rate",
) -> Section | None:
    """Latency and attainment against offered rate (or concurrency); the max goodput point starred."""
    if not steps:
        return None
    pts = sorted((((sweep_step(r) or ("", r.target_rate or 0.0))[1], r) for r in steps), key=lambda p: p[0])
    sums = {r.run_id: summarize(con, r.run_id, slo=slo) for _, r in pts}
    rates = [p[0] for p in pts]
    xt = "offered rate (req/s)" if kind == "rate" else "concurrency (users)"
    what = "offered rate" if kind == "rate" else "concurrency"
    star = (f"The star marks the max goodput rate: the highest swept rate whose SLO attainment "
            f"is ≥ {pct(target)} and that the server kept up with." if kind == "rate"
            else f"The star marks the highest concurrency whose SLO attainment is ≥ {pct(target)}.")
    sec = Section(
        "sweep" if kind == "rate" else "sweep-concurrency",
        "Sweep" if kind == "rate" else "Concurrency sweep",
        intro=f"{len(pts)} sweep steps (runs labelled "
        f"{'sweep:<rate>' if kind == 'rate' else 'sweep-concurrency:<users>'}). {star}",
    )
    lat = []
    for i, (key, name) in enumerate((("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2EL"))):
        for stat, dash in (("p50", "solid"), ("p99", "dot")):
            lat.append({"name": f"{name} {stat}", "x": rates, "color": fg.color(i), "dash": dash,
                        "y": [(sums[r.run_id].get(key) or {}).get(stat) for _, r in pts]})
    sec.blocks.append(fg.scatter_xy(f"Latency against {what}", xt, "latency (ms)", lat, y_log=True))
    tput = [
        {"name": "request throughput", "x": rates, "y": [sums[r.run_id]["request_throughput"] for _, r in pts]},
    ]
    if slo:
        tput.append({"name": "request goodput", "x": rates,
                     "y": [(sums[r.run_id].get("goodput") or {}).get("request_goodput") for _, r in pts]})
    sec.blocks.append(fg.scatter_xy(f"Throughput against {what}", xt, "requests/s", tput))
    rows = []
    if slo:
        att = [(sums[r.run_id].get("goodput") or {}).get("slo_attainment") for _, r in pts]
        cis = [(sums[r.run_id].get("goodput") or {}).get("slo_attainment_ci95") or [None, None] for _, r in pts]
        # a rate step the server finished slower than offered never held its rate: it cannot count
        short = [held_rate(con, r.run_id, rate)[2] if kind == "rate" else None for rate, r in pts]
        counts = [a is not None and a >= target and why is None for a, why in zip(att, short, strict=True)]
        passing = [(rate, a) for rate, a, ok in zip(rates, att, counts, strict=True) if ok]
        marks = []
        if passing:
            best = max(passing)
            marks.append({"x": best[0], "y": best[1] * 100,
                          "text": f"max goodput rate {best[0]:g} req/s" if kind == "rate"
                          else f"max concurrency in SLO: {best[0]:g} users"})
        series = [
            {"name": "attainment", "x": rates, "y": [None if a is None else a * 100 for a in att]},
            {"name": "95% CI low", "x": rates, "y": [None if c[0] is None else c[0] * 100 for c in cis],
             "dash": "dot", "mode": "lines", "color": "#9aa5b8"},
            {"name": "95% CI high", "x": rates, "y": [None if c[1] is None else c[1] * 100 for c in cis],
             "dash": "dot", "mode": "lines", "color": "#9aa5b8"},
            {"name": f"target {pct(target)}", "x": [rates[0], rates[-1]], "y": [target * 100] * 2,
             "dash": "dash", "mode": "lines", "color": "#444"},
        ]
        sec.blocks.append(fg.scatter_xy(f"SLO attainment against {what}", xt,
                                        "attainment (%)", series, marks=marks, y_range=[0, 102]))
        if not passing:
            sec.blocks.append(note(f"No swept {what} reaches {pct(target)} attainment.", "warn"))
        for (rate, r), a, c, ok, why in zip(pts, att, cis, counts, short, strict=True):
            rows.append((f"{rate:g}", r.name, fmt(sums[r.run_id]["request_throughput"]), pct(a),
                         f"{pct(c[0])}–{pct(c[1])}", badge(ok, "SHORT" if why else None)))
        sec.blocks.append(table([xt, "run", "throughput (req/s)", "attainment", "95% CI", "verdict"], rows))
        for (rate, _), why in zip(pts, short, strict=True):
            if why:
                sec.blocks.append(note(f"step {rate:g} req/s: {why}", "warn"))
    else:
        sec.blocks.append(note("No SLO given: pass --slo to see attainment and the max goodput rate."))
    return sec
