"""``build_report``: a results store (and optionally a trace) to one HTML file.

Why the steps are ordered this way: the summary (verdicts) comes first because
that is what a reader wants at a glance; each later section adds depth. Sweep
steps (runs labelled ``sweep:<rate>`` or ``sweep-concurrency:<n>``) get their own section instead of being
overlaid with the other runs, where dozens of near-identical curves would hide
everything. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from burstbench.errors import StoreError, UsageError
from burstbench.outfile import write_text_atomic
from burstbench.reports import plotdata as pd
from burstbench.reports import runs as rs
from burstbench.reports import summary as sm
from burstbench.reports.html import Section, count_figures, default_meta, note, render

MAX_OVERLAY = 8
DEFAULT_TARGET = 0.9


@dataclass
class ReportResult:
    """What was written, for the CLI's JSON and the benchmark."""

    path: Path
    bytes: int
    figures: int
    sections: list[str]
    runs: list[str]
    sweep_steps: int
    seconds: float

    def to_json(self) -> dict:
        return {
            "path": str(self.path), "bytes": self.bytes, "figures": self.figures,
            "sections": self.sections, "runs": self.runs, "sweep_steps": self.sweep_steps,
            "seconds": round(self.seconds, 3),
        }


def _select_runs(con, run_ids: Sequence[str] | None) -> tuple[list[str], list[str], list[str]]:
    """(runs to overlay, sweep steps, notes)."""
    from burstbench.analysis.metrics import resolve_run

    all_ids = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at, run_id").fetchall()]
    if not all_ids:
        raise StoreError("the results store holds no runs; record one with 'burstbench run' or 'burstbench demo'")
    notes: list[str] = []
    if run_ids:
        chosen = []
        for rid in run_ids:
            r = resolve_run(con, rid)
            if r not in chosen:
                chosen.append(r)
        return chosen, [], notes
    labels = dict(con.execute("SELECT run_id, label FROM runs").fetchall())
    sweep = [r for r in all_ids if sm.SWEEP_LABEL.match(labels.get(r) or "")]
    main = [r for r in all_ids if r not in sweep]
    if len(main) > MAX_OVERLAY:
        notes.append(f"{len(main)} runs in the store; the latest {MAX_OVERLAY} are shown (pick others with --run).")
        main = main[-MAX_OVERLAY:]
    return main, sweep, notes


def _time_sections(con, runs: Sequence, view: str, slo_s: Mapping[str, float] | None) -> tuple[list[Section], rs.TimeAxis]:
    """Load over time and client health, for the runs that have a timeline, and the time axis.

    A run imported from a file without send times (vLLM before ``start_times``) has every
    request at t=0; a time series of it would show a burst that never happened, so it is
    left out and the section says so.
    """
    from burstbench.analysis.metrics import run_info

    timed = [r for r in runs if run_info(con, r.run_id)["timeline"]]
    skipped = [r.name for r in runs if r not in timed]
    why = (f"Not shown over time: {', '.join(skipped)} (the imported file recorded no request start times, "
           "so there is no timeline to draw)." if skipped else None)
    axis = rs.time_axis(con, timed or runs)
    if not timed:
        return [Section("load", "Load over time", [note(why or "", "warn")])], axis
    att = sm.attainment_series(con, timed, slo_s, axis.window)
    load, series = rs.load_section(con, timed, view, att, axis)
    if why:
        load.blocks.insert(0, note(why, "warn"))
    return [load, rs.health_section(con, timed, view, axis, series)], axis


def build_report(
    store: str | Path | None,
    out: str | Path,
    *,
    trace: str | Path | None = None,
    twin: Sequence[str | Path] = (),
    run_ids: Sequence[str] | None = None,
    slo: Mapping[str, float] | str | None = None,
    target: float = DEFAULT_TARGET,
    title: str = "burstbench report",
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write the report for ``store`` (and ``trace``, and the twin's result files ``twin``) to
    ``out``; see the module doc. Without a store the report holds the trace and twin parts."""
    from burstbench.analysis.metrics import open_store
    from burstbench.analysis.slo import parse_slo

    t_start = time.perf_counter()
    say = progress or (lambda _s: None)
    if not 0 < target <= 1:
        raise UsageError(f"--target {target}: give the attainment target as a fraction in (0, 1], e.g. 0.9")
    slo_s = parse_slo(slo) if isinstance(slo, str) else (dict(slo) if slo else None)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {out}: the report is HTML; name it e.g. report.html")
    trace_obj = None
    if trace is not None:
        from burstbench.traces.schema import load_trace

        say(f"reading trace {Path(trace).name}")
        trace_obj = load_trace(trace)

    if store is None and trace is None and not twin:
        raise UsageError("nothing to report: give a results store, a trace or --twin files")
    twin_secs: list[Section] = []
    twin_notes: list[str] = []
    twin_runs: list[str] = []
    if twin:
        from burstbench.reports.twinsec import twin_sections

        say("digital twin results")
        got = twin_sections(twin)  # bad files fail here, before the store is read
        twin_secs = got.sections
        if slo_s is None and got.slo_s:  # judge the measured runs by the SLO the what-if and plan used
            slo_s = got.slo_s
            if target == DEFAULT_TARGET and got.target is not None:
                target = got.target
            twin_notes.append(f"SLO and target taken from {got.slo_source} (give --slo to judge by another).")
        if got.slo_conflicts:
            twin_notes.append(f"{', '.join(got.slo_conflicts)} judged by another SLO than "
                              f"{got.slo_source or '--slo'}; their sections keep their own.")
        twin_runs = got.run_ids if run_ids is None else []
    sections: list[Section] = []
    runs: list = []
    steps: list = []
    if store is not None:
        say(f"opening {Path(store).name}")
        con = open_store(store)
        try:
            view = pd.install_views(con)
            if twin_runs:  # the calibration's runs, not whatever else the store holds
                known = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
                if any(r in known for r in twin_runs):
                    run_ids = [r for r in twin_runs if r in known]
                    twin_notes.append("Measured runs: those the twin was fitted and checked on "
                                      "(the store's other runs are left out; pick them with --run).")
            main_ids, sweep_ids, sel_notes = _select_runs(con, run_ids)
            runs = pd.runs(con, main_ids)
            steps = pd.runs(con, sweep_ids)
            if runs:
                say("summarising runs")
                sums = sm.summaries(con, runs, slo_s)
                summary = sm.summary_section(runs, sums, slo_s, target)
                summary.blocks[:0] = [note(n, "warn") for n in [*twin_notes, *sel_notes]]
                summary.blocks.append("<h3>Runs</h3>" + rs.runs_table(runs))
                summary.blocks.append(sm.latency_table(runs, sums))
                for block in (sm.tenant_block(con, runs, slo_s), rs.errors_block(con, runs)):
                    if block:
                        summary.blocks.append(block)
                sections.append(summary)
                say("latency distributions")
                itl_n = {rid: (s.get("itl_ms") or {}).get("n") or 0 for rid, s in sums.items()}
                sections.append(rs.latency_section(con, runs, view, {k: v * 1000.0 for k, v in (slo_s or {}).items()},
                                                   itl_counts=itl_n))
                say("time series, client and server health")
                timed, axis = _time_sections(con, runs, view, slo_s)
                sections.extend(timed)
                server = rs.server_section(con, runs, axis)
                if server:
                    sections.append(server)
                from burstbench.reports.phasesec import phases_section

                phases = phases_section(con, runs)
                if phases:
                    sections.append(phases)
                if len(runs) > 1:
                    say("comparing runs (bootstrap)")
                    cmp_ = sm.compare_section(con, runs, slo_s)
                    if cmp_:
                        sections.append(cmp_)
            if steps:
                say(f"sweep ({len(steps)} steps)")
                sections.extend(sm.sweep_sections(con, steps, slo_s, target))
        finally:
            con.close()

    if trace_obj is not None:
        from burstbench.reports.tracesec import trace_section

        sections.append(trace_section(trace_obj, Path(trace).name, progress=say))  # type: ignore[arg-type]

    sections.extend(twin_secs)
    say("writing HTML")
    doc = render(title, sections, meta=default_meta(store, trace))
    write_text_atomic(out, doc)
    return ReportResult(
        path=out, bytes=out.stat().st_size, figures=count_figures(sections),
        sections=[s.key for s in sections], runs=[r.run_id for r in runs],
        sweep_steps=len(steps), seconds=time.perf_counter() - t_start,
    )
