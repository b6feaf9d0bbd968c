"""Report sections about runs: latency CDFs, load over time, client and server health.

Why separate from the numbers: the metric values and SLO verdicts come from
``burstbench.analysis`` (see ``summary.py``); this module only aggregates the
results store into pictures (``plotdata``) and lays them out. Runs are overlaid
in one figure per quantity, so a reader compares them at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb

from burstbench.reports import figures as fg
from burstbench.reports import plotdata as pd
from burstbench.reports.html import Section, note, table

CLIENT_SOURCES = ("client",)
SERVER_SOURCES = ("server", "engine", "gpu")
WINDOWS = 120  # at most this many windows per time series: readable, and small files
MIN_WINDOWS = 20  # a run on its own time axis gets at least this many
REQUESTS_PER_WINDOW = 10


def latency_section(
    con: duckdb.DuckDBPyConnection,
    runs: Sequence[pd.RunRow],
    view: str,
    slo_ms: Mapping[str, float],
    itl_counts: Mapping[str, int] | None = None,
) -> Section:
    """CDFs of TTFT, TPOT, ITL and E2EL, one line per run, SLO thresholds marked.

    ``itl_counts``: run id -> pooled chunk-gap count from the summary, if known.
    """
    sec = Section(
        "latency",
        "Latency distributions",
        intro="Empirical CDFs over successful measured requests (ITL: every gap between "
        "consecutive token-carrying chunks). Dashed line: the SLO threshold.",
    )
    for metric, name in pd.LATENCY_METRICS.items():
        series = []
        sizes = []
        for r in runs:
            known = (itl_counts or {}).get(r.run_id) if metric == "itl" else None
            c = pd.latency_cdf(con, r.run_id, metric, view=view, total_gaps=known)
            if c.n:
                series.append((r.name, c.x, c.p))
                sizes.append(f"{r.name}: n={c.n:,}" + (f" (hash sample of requests; {c.total:,} gaps in all)"
                                                      if c.sampled else ""))
        if not series:
            sec.blocks.append(note(f"{name}: no samples in the selected runs."))
            continue
        thr = slo_ms.get(metric)
        sec.blocks.append(
            fg.cdf(
                f"{name} CDF",
                f"{name} (ms)",
                series,
                threshold=thr,
                threshold_label=f"SLO {thr:g} ms" if thr is not None else "SLO",
                caption="; ".join(sizes),
            )
        )
    lengths = _lengths_figure(con, runs, view)
    if lengths is not None:
        sec.blocks.append(lengths)
    return sec


def _lengths_figure(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], view: str) -> fg.Figure | None:
    """Input and output tokens of each run's successful requests, log-binned in DuckDB."""
    series = []
    for r in runs:
        for col, what in (("input_tokens", "input"), ("output_tokens", "output")):
            edges, counts = pd.histogram(
                con, f"SELECT {col} AS v FROM {view} WHERE run_id = $r AND ok AND phase = 'measure'",
                {"r": r.run_id}, bins=50, log=True)
            if counts:
                series.append((f"{r.name} {what}", edges, counts))
    if not series:
        return None
    return fg.bars("Request lengths (tokens)", "tokens (log bins)", "requests", series, x_log=True,
                   caption="Input (server count, else sent) and output tokens of successful requests.")


SQUASH_RATIO = 3.0  # longest / shortest run beyond which a shared seconds axis squashes the short ones


@dataclass
class TimeAxis:
    """How the time-series figures place each run's windows on their x axis.

    Why: runs of 30 s and 30 min on one axis in seconds leave the short run a sliver at
    the left edge, drawn from a handful of the long run's windows. When the longest run
    is more than ``SQUASH_RATIO`` times the shortest, each run gets windows sized for
    its own length and the x axis reads in percent of each run; otherwise runs share
    one window width and an axis in seconds, where times compare directly.
    """

    spans: dict[str, float]
    normalised: bool
    window: dict[str, float]  # run id -> window width (s)

    @property
    def title(self) -> str:
        return "time (% of each run)" if self.normalised else "time (s)"

    def x(self, run_id: str, ts: Sequence[float]) -> list[float]:
        """Positions of times ``ts`` (s from the run's start) on the axis."""
        span = self.spans.get(run_id) or 0.0
        if not self.normalised or span <= 0:
            return list(ts)
        return [float(f"{t / span * 100.0:.6g}") for t in ts]

    def describe(self) -> str:
        if not self.normalised:
            return f"Per {next(iter(self.window.values()), 1.0):g} s window from each run's start."
        widths = ", ".join(sorted({f"{w:g} s" for w in self.window.values()}, key=lambda t: float(t[:-2])))
        return (f"Runs differ in length by more than {SQUASH_RATIO:g}x, so time reads in percent of "
                f"each run, with windows sized per run ({widths}).")


def time_axis(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow]) -> TimeAxis:
    """The time axis and per-run window widths for ``runs`` (see ``TimeAxis``)."""
    spans = {r.run_id: pd.run_span(con, r.run_id) for r in runs}
    longest = max(spans.values(), default=0.0)
    shortest = min((v for v in spans.values() if v > 0), default=longest)
    normalised = shortest > 0 and longest / shortest > SQUASH_RATIO
    if normalised:
        window = {r.run_id: pd.nice_window(spans[r.run_id], _windows_for(r.requests)) for r in runs}
    else:
        window = {r.run_id: pd.nice_window(longest, WINDOWS) for r in runs}
    return TimeAxis(spans, normalised, window)


def _windows_for(requests: int) -> int:
    """How many windows a run's own time axis gets: about ``REQUESTS_PER_WINDOW`` requests
    per window (a rate from 10 Poisson arrivals is within ~30%), at least ``MIN_WINDOWS``
    for shape, at most ``WINDOWS``. Without this a 100-request run cut into 120 windows
    reads as spikes of 0 and 10 per second."""
    return max(MIN_WINDOWS, min(WINDOWS, requests // REQUESTS_PER_WINDOW))


def load_section(
    con: duckdb.DuckDBPyConnection,
    runs: Sequence[pd.RunRow],
    view: str,
    attainment: Mapping[str, tuple[list[float], list[float | None]]],
    axis: TimeAxis,
) -> tuple[Section, dict[str, pd.WindowSeries]]:
    """Sent vs completed rate, in-flight, throughput, TTFT and attainment per window.

    Returns the per-run window series too, which the health section reuses (one pass
    over a run's requests and chunks, not two).
    """
    sec = Section(
        "load",
        "Load over time",
        intro=f"{axis.describe()} Sent counts every request written; "
        "completed counts successful ones by the window they ended in; in-flight is exact "
        "at each window's end.",
    )
    ws = {r.run_id: pd.window_series(con, r.run_id, axis.window[r.run_id], view=view) for r in runs}
    rate, infl, tput, ttft = [], [], [], []
    for i, r in enumerate(runs):
        s = ws[r.run_id]
        c = fg.color(i)
        x = axis.x(r.run_id, s.t)
        rate.append({"name": f"{r.name} sent", "x": x, "y": s.sent_rate, "color": c, "dash": "dot"})
        rate.append({"name": f"{r.name} completed", "x": x, "y": s.completed_rate, "color": c})
        if any(v for v in s.failed_rate):
            rate.append({"name": f"{r.name} failed", "x": x, "y": s.failed_rate, "color": c,
                         "dash": "dashdot"})
        infl.append({"name": r.name, "x": axis.x(r.run_id, [t + s.window_s for t in s.t]), "y": s.in_flight,
                     "color": c})
        streamed = any(s.streamed_tok_rate)
        tput.append({"name": r.name + ("" if streamed else " (by completion)"), "x": x,
                     "y": s.streamed_tok_rate if streamed else s.output_tok_rate, "color": c})
        ttft.append({"name": f"{r.name} p50", "x": x, "y": s.ttft_p50_ms, "color": c})
        ttft.append({"name": f"{r.name} p90", "x": x, "y": s.ttft_p90_ms, "color": c, "dash": "dot"})
    sec.blocks.append(fg.lines("Request rate: sent vs completed", axis.title, "requests/s", rate))
    sec.blocks.append(fg.lines("Requests in flight", axis.title, "requests", infl, step=True))
    sec.blocks.append(fg.lines("Output token throughput", axis.title, "tokens/s", tput,
                               caption="Tokens streamed per second, by the window each chunk arrived in "
                               "(runs without recorded chunks: output tokens by completion window)."))
    sec.blocks.append(fg.lines("TTFT per window", axis.title, "TTFT (ms)", ttft,
                               caption="By the window each request was sent in."))
    att = []
    for i, r in enumerate(runs):
        if r.run_id in attainment:
            t, y = attainment[r.run_id]
            att.append({"name": r.name, "x": axis.x(r.run_id, t), "y": y, "color": fg.color(i)})
    if att:
        fig = fg.lines("SLO attainment per window", axis.title, "attainment (%)", att,
                       caption="Good requests / requests sent in the window (failures count as misses).")
        fig.layout["yaxis"]["range"] = [0, 102]
        sec.blocks.append(fig)
    return sec, ws


def health_section(
    con: duckdb.DuckDBPyConnection,
    runs: Sequence[pd.RunRow],
    view: str,
    axis: TimeAxis,
    series: Mapping[str, pd.WindowSeries] | None = None,
) -> Section:
    """Schedule lag (is the client keeping up?) and the client's own CPU and memory."""
    sec = Section(
        "client",
        "Schedule lag and client health",
        intro="Schedule lag is sent − scheduled; a growing lag means the load generator, not "
        "the server, limited the offered load.",
    )
    lag = []
    for i, r in enumerate(runs):
        s = (series or {}).get(r.run_id) or pd.window_series(con, r.run_id, axis.window[r.run_id], view=view)
        c = fg.color(i)
        x = axis.x(r.run_id, s.t)
        lag.append({"name": f"{r.name} p50", "x": x, "y": s.lag_p50_ms, "color": c})
        lag.append({"name": f"{r.name} p99", "x": x, "y": s.lag_p99_ms, "color": c, "dash": "dot"})
        lag.append({"name": f"{r.name} max", "x": x, "y": s.lag_max_ms, "color": c, "dash": "dash"})
    sec.blocks.append(fg.lines("Schedule lag per window", axis.title, "lag (ms)", lag))
    virtual = [r.name for r in runs if r.clock == "virtual"]
    if virtual:
        sec.blocks.append(note(f"Simulated in virtual time (no load generator, lag 0 by construction): "
                               f"{', '.join(virtual)}."))
    sec.blocks.extend(_telemetry_figures(con, runs, CLIENT_SOURCES, axis, max_names=6, what="client"))
    return sec


def server_section(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow], axis: TimeAxis) -> Section | None:
    """Server metrics scraped during the runs (``/metrics``, engine and GPU telemetry)."""
    blocks = _telemetry_figures(con, runs, SERVER_SOURCES, axis, max_names=12, what="server")
    if not blocks:
        return None
    return Section(
        "server",
        "Server metrics",
        blocks,
        intro="Telemetry scraped from the server while the run went (summed over label sets, "
        "averaged per time bucket).",
    )


def _telemetry_figures(
    con: duckdb.DuckDBPyConnection,
    runs: Sequence[pd.RunRow],
    sources: Sequence[str],
    axis: TimeAxis,
    *,
    max_names: int,
    what: str,
) -> list[fg.Figure | str]:
    by_name: dict[tuple[str, str], list[dict]] = {}
    hidden = 0
    for i, r in enumerate(runs):
        series, total = pd.telemetry_series(con, r.run_id, sources, max_names=max_names)
        hidden = max(hidden, total - len(series))
        for s in series:
            by_name.setdefault((s.source, s.title), []).append(
                {"name": r.name, "x": axis.x(r.run_id, s.t), "y": s.value, "color": fg.color(i),
                 "final": s.final}
            )
    out: list[fg.Figure | str] = [
        _telemetry_figure(f"{name} ({source})", name, lines_, axis)
        for (source, name), lines_ in list(by_name.items())[:max_names]
    ]
    if not out:
        out.append(note(f"No {what} telemetry recorded in the selected runs."))
    elif hidden > 0:
        out.append(note(f"{hidden} further {what} metrics not plotted (the {max_names} with most samples are)."))
    return out


def _telemetry_figure(title: str, name: str, lines_: list[dict], axis: TimeAxis) -> fg.Figure:
    """A metric over time; a bar per run when it is one value per run (``Series.final``).

    Why the bars: some values are reported once per worker, at its end (peak RSS,
    ``process_max_rss_bytes``); as a time series that is a dot or two per run at the
    very right edge (the panel looked empty), stacked on each other when the axis is
    normalised, and a counter's "rate" between two workers' totals means nothing.
    """
    if all(ln["final"] for ln in lines_):
        bars = [(ln["name"], [ln["name"]], ln["y"][:1]) for ln in lines_]
        return fg.bars(title, "run", name, bars,
                       caption="One value per run: reported once by each client worker when it ended, summed.")
    return fg.lines(title, axis.title, name, [{k: v for k, v in ln.items() if k != "final"} for ln in lines_])


def errors_block(con: duckdb.DuckDBPyConnection, runs: Sequence[pd.RunRow]) -> str | None:
    """A table of failure classes with an example message each (escaped)."""
    rows = []
    for r in runs:
        for cls, status, n, msg in con.execute(
            "SELECT coalesce(error_class, status), status, count(*), any_value(error_message)"
            " FROM requests WHERE run_id = ? AND status <> 'ok' GROUP BY ALL ORDER BY 3 DESC LIMIT 20",
            [r.run_id],
        ).fetchall():
            rows.append((r.name, cls, status, f"{n:,}", (msg or "")[:300]))
    if not rows:
        return None
    return "<h3>Failures</h3>" + table(
        ["run", "error class", "status", "requests", "example message"], rows, cls="text"
    )


def runs_table(runs: Sequence[pd.RunRow]) -> str:
    rows = [
        (r.name, r.run_id, r.model or "", r.backend or "", r.endpoint or "", r.clock or "",
         "" if r.target_rate is None else f"{r.target_rate:g}",
         "" if r.duration_s is None else f"{r.duration_s:.1f}",
         r.counts.describe() if r.counts is not None else f"{r.requests:,}",
         r.status or "", r.end_reason or "")
        for r in runs
    ]
    html_ = table(["run", "id", "model", "backend", "endpoint", "clock", "target rate (req/s)",
                   "duration (s)", "requests", "status", "ended by"], rows)
    warn = [note(f"{r.name}: {n}", "warn") for r in runs for n in r.notes]
    return html_ + "".join(warn)

