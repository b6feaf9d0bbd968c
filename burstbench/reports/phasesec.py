"""Report section: where TTFT went, from the server spans joined to each request.

The numbers come from ``burstbench.analysis.phases`` (the same SQL view ``analyze``
prints from); this module aggregates them into pictures: per run, the mean of each
part per time window stacked (so queueing that builds under load is seen as it
builds), and the distribution of each part across runs side by side as box plots
drawn from quantiles (a million requests cost five numbers a box, not a million
points). A simulated run and a measured one sit next to each other, decomposed alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from burstbench.analysis.phases import PARTS, decomposition, has_spans, install_view
from burstbench.reports import figures as fg
from burstbench.reports import plotdata as pd
from burstbench.reports.html import Section, note, table

NAMES = {"client": "client lag", "network": "network + frontend", "server_other": "server remainder",
         "queue": "queue", "prefill": "prefill"}
WINDOWS = 60


def _over_time(con: duckdb.DuckDBPyConnection, run: pd.RunRow) -> fg.Figure | None:
    w = pd.nice_window(pd.run_span(con, run.run_id), WINDOWS)
    cols = ", ".join(f"avg({p}_s) * 1000 AS {p}" for p in PARTS)
    rows = con.execute(
        f"SELECT floor(sent_s / ?) * ? AS t, count(*) AS n, {cols} FROM request_phases"
        " WHERE run_id = ? AND phase = 'measure' AND ok AND joined AND queue_s IS NOT NULL"
        " AND prefill_s IS NOT NULL AND server_ttft_s IS NOT NULL AND ttft_s IS NOT NULL GROUP BY 1 ORDER BY 1",
        [w, w, run.run_id]).fetchall()
    if not rows:
        return None
    ts = [r[0] for r in rows]
    # stacked bars, not areas: a burst sent in one window is one bar (an area of one point is
    # invisible), and 'relative' stacking draws a negative part below zero instead of hiding it
    data = [{"type": "bar", "name": fg.label(NAMES[p]), "x": [t + w / 2 for t in ts], "width": w,
             "y": pd._finite([r[2 + i] for r in rows]), "marker": {"color": fg.color(i)},
             "hovertemplate": "%{y:.3g} ms<extra>" + fg.label(NAMES[p]) + "</extra>"}
            for i, p in enumerate(PARTS)]
    layout = {"barmode": "relative", "bargap": 0.05,
              "xaxis": {"title": {"text": "time since run start (s)"}, "automargin": True},
              "yaxis": {"title": {"text": "mean per window (ms)"}, "automargin": True},
              "hovermode": "x unified"}
    return fg.Figure(f"TTFT from schedule by part over time — {run.name}", data, layout,
                     f"Mean of each part over requests sent in each {w:g} s window; the stack's top is the mean "
                     "TTFT from schedule. A part below zero (clock or definition mismatch) pulls the stack down.")


def _distributions(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow]) -> fg.Figure:
    qs = "[0.0, 0.25, 0.5, 0.75, 1.0]"
    data = []
    for i, r in enumerate(runs):
        xs, q1, med, q3, lo, hi = [], [], [], [], [], []
        for p in PARTS:
            row = con.execute(
                f"SELECT quantile_cont({p}_s, {qs}) FROM request_phases WHERE run_id = ? AND phase = 'measure'"
                " AND ok AND joined AND queue_s IS NOT NULL AND prefill_s IS NOT NULL AND server_ttft_s IS NOT NULL"
                " AND ttft_s IS NOT NULL", [r.run_id]).fetchone()
            if not row or row[0] is None:
                continue
            q = [v * 1000 for v in row[0]]
            xs.append(NAMES[p])
            lo.append(q[0])
            q1.append(q[1])
            med.append(q[2])
            q3.append(q[3])
            hi.append(q[4])
        data.append({"type": "box", "name": fg.label(r.name), "x": xs, "q1": pd._finite(q1),
                     "median": pd._finite(med), "q3": pd._finite(q3), "lowerfence": pd._finite(lo),
                     "upperfence": pd._finite(hi), "marker": {"color": fg.color(i)}})
    layout = {"boxmode": "group", "xaxis": {"automargin": True},
              "yaxis": {"title": {"text": "ms"}, "automargin": True}}
    return fg.Figure("Distribution of each TTFT part, runs side by side", data, layout,
                     "Boxes: quartiles; whiskers: min and max over decomposed requests.")


def phases_section(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow]) -> Section | None:
    """The decomposition section, or None when no selected run has server spans."""
    with_spans = [r for r in runs if has_spans(con, r.run_id)]
    if not with_spans:
        return None
    install_view(con)
    sec = Section("phases", "Where TTFT went (server spans)",
                  intro="Each request's TTFT from schedule = client lag (sent − scheduled) + network and "
                  "frontend (client TTFT − server TTFT) + server remainder (server TTFT − queue − prefill) + "
                  "queue + prefill, from the server's OpenTelemetry span joined by trace id.")
    rows = []
    for r in with_spans:
        d = decomposition(con, r.run_id)
        if d is None:
            continue
        if d["missing"]:
            sec.blocks.append(note(f"{r.name}: {d['missing']} of {d['completed']} completed requests have no server "
                                   "span (it never arrived); they are left out of this section.", "warn"))
        for p in PARTS:
            st = d["parts_ms"][p]
            neg = d["negative"][p]
            rows.append([r.name, NAMES[p], *(None if st[k] is None else round(st[k], 3)
                                              for k in ("mean", "p50", "p90", "p99")),
                         "-" if d["mean_share"][p] is None else f"{100 * d['mean_share'][p]:.1f}%", neg])
    sec.blocks.append(table(["run", "part", "mean ms", "p50 ms", "p90 ms", "p99 ms", "share of mean", "< 0"], rows))
    sec.blocks.append(_distributions(con, with_spans))
    for r in with_spans:
        fig = _over_time(con, r)
        if fig is not None:
            sec.blocks.append(fig)
    runs_without = [r.name for r in runs if r not in with_spans]
    if runs_without:
        sec.blocks.append(note(f"No server spans recorded for: {', '.join(runs_without)} "
                               "(run with --server-spans against a server that exports them)."))
    return sec
