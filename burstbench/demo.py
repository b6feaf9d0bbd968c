"""``burstbench demo``: the whole pipeline in about a minute, with nothing to install or run.

Why it exists: it is the first command in the README. It shows what burstbench
does end to end on this machine alone: it synthesises a BurstGPT-like workload
(Gamma arrivals, Zipf lengths), starts the reference engine in-process on
127.0.0.1 (a cost-modelled Llama-3.1-8B on an L40S), replays the workload through
the load generator, analyses the results against default SLOs and writes a
self-contained HTML report. Every step is the real component (no mocks), so the
demo also fails loudly when a piece of the build is missing.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from burstbench.errors import BurstbenchError, UsageError
from burstbench.outfile import force_option
from burstbench.output import emit_json, results_console

DEFAULT_SLO = "ttft=250ms,tpot=35ms"
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_HARDWARE = "l40s"
OUTPUT_FILES = ("results.duckdb", "trace.parquet", "report.html")
OUTPUT_KINDS = ("duckdb", "parquet", "html")


class MissingPieceError(BurstbenchError):
    """A part of burstbench the demo needs is not in this build."""

    exit_code = 7


# piece -> (module, attribute) the demo uses
PIECES: dict[str, tuple[str, str]] = {
    "workload presets (traces.presets)": ("burstbench.traces.presets", "preset"),
    "trace synthesis (traces.synth)": ("burstbench.traces.synth", "synthesise"),
    "reference engine server (backends.reference.server)": ("burstbench.backends.reference.server", "start_in_thread"),
    "load generator (loadgen.runner)": ("burstbench.loadgen.runner", "execute"),
    "load generator scenario (loadgen.scenario)": ("burstbench.loadgen.scenario", "Scenario"),
    "analysis (analysis.metrics)": ("burstbench.analysis.metrics", "summarize"),
    "HTML reports (reports.build)": ("burstbench.reports.build", "build_report"),
}


def require(piece: str) -> Any:
    """The attribute the demo needs for ``piece``, or a MissingPieceError naming it."""
    module, attr = PIECES[piece]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise MissingPieceError(
            f"the demo needs the {piece}, which is missing from this build ({exc}); "
            "install a complete burstbench"
        ) from exc
    except AttributeError as exc:
        raise MissingPieceError(
            f"the demo needs {module}.{attr} (the {piece}), which this build lacks"
        ) from exc


@dataclass
class DemoResult:
    """Where the demo wrote its files and the numbers it headlines."""

    out_dir: Path
    report: Path
    results: Path
    trace: Path
    run_id: str
    slo: str
    summary: dict[str, Any]
    seconds: float

    def headline(self) -> dict[str, Any]:
        s = self.summary
        gp = s.get("goodput") or {}
        return {
            "report": str(self.report), "results": str(self.results), "trace": str(self.trace),
            "run_id": self.run_id, "requests": s["requests"], "completed": s["completed"],
            "failed": s["failed"], "duration_s": s["duration_s"],
            "request_throughput": s["request_throughput"], "output_throughput": s["output_throughput"],
            "ttft_ms": {k: s["ttft_ms"].get(k) for k in ("p50", "p90", "p99")},
            "tpot_ms": {k: s["tpot_ms"].get(k) for k in ("p50", "p90", "p99")},
            "e2el_ms": {k: s["e2el_ms"].get(k) for k in ("p50", "p90", "p99")},
            "slo": self.slo, "slo_attainment": gp.get("slo_attainment"),
            "request_goodput": gp.get("request_goodput"), "seconds": round(self.seconds, 1),
        }


def run_demo(
    out_dir: str | Path = "burstbench-demo",
    *,
    requests: int = 200,
    seed: int = 0,
    rate: float = 8.0,
    model: str = DEFAULT_MODEL,
    hardware: str = DEFAULT_HARDWARE,
    time_scale: float = 1.0,
    slo: str = DEFAULT_SLO,
    progress: bool = True,
    say: Any = None,
    force: bool = False,
) -> DemoResult:
    """Synthesise, serve, send, analyse, report; see the module doc."""
    t0 = time.perf_counter()
    say = say or (lambda _m: None)
    if not 1 <= requests <= 100_000:
        raise UsageError(f"--requests {requests}: give between 1 and 100000 (the demo runs in real time)")
    if not (rate > 0 and time_scale > 0):
        raise UsageError("--rate and --time-scale must be positive")
    preset = require("workload presets (traces.presets)")
    synthesise = require("trace synthesis (traces.synth)")
    start_in_thread = require("reference engine server (backends.reference.server)")
    execute = require("load generator (loadgen.runner)")
    scenario_cls = require("load generator scenario (loadgen.scenario)")
    summarize = require("analysis (analysis.metrics)")
    build_report = require("HTML reports (reports.build)")
    from burstbench.analysis.slo import format_slo, parse_slo
    from burstbench.traces.schema import write_trace

    slo_s = parse_slo(slo)
    # The engine runs ``time_scale`` times faster than the modelled hardware and the
    # trace is replayed as fast, so the SLOs shrink by the same factor.
    slo_scaled = {k: v / time_scale for k, v in slo_s.items()}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror}); pick a writable folder") from exc
    _check_outputs(out, force)
    for name in OUTPUT_FILES:  # a demo starts fresh; only our own files are replaced
        for p in (out / name, out / f"{name}.wal"):
            p.unlink(missing_ok=True)
    results, trace_path, report_path = (out / n for n in OUTPUT_FILES)

    say(f"[1/5] synthesising a BurstGPT-like workload: {requests} requests at {rate:g} req/s (seed {seed})")
    trace = synthesise(preset("burstgpt"), seed=seed, requests=requests, rate=rate)
    write_trace(trace, trace_path)

    say(f"[2/5] starting the reference engine ({model} on {hardware}, time scale {time_scale:g}) on 127.0.0.1")
    with start_in_thread(model=model, hardware=hardware, time_scale=time_scale, host="127.0.0.1", port=0) as srv:
        say(f"[3/5] sending the workload to {srv.url} (trace span {trace.duration_s:.0f} s"
            f"{f', replayed {time_scale:g}x faster' if time_scale != 1 else ''})")
        sc = scenario_cls(url=srv.url, model=model, time_scale=time_scale, seed=seed,
                          scrape_interval_s=0.5)
        res = execute(trace, sc, results, label="demo", progress=progress)
    if res.status != "done":
        raise BurstbenchError(f"the demo run ended early: {res.end_reason}; partial results are in {results}")

    say(f"[4/5] analysing against SLOs {format_slo(slo_scaled)}")
    summary = summarize(results, res.run_id, slo=slo_scaled)

    say("[5/5] writing the report")
    build_report(results, report_path, trace=trace_path, slo=slo_scaled, title="burstbench demo")
    return DemoResult(out, report_path, results, trace_path, res.run_id, format_slo(slo_scaled), summary,
                      time.perf_counter() - t0)


def _check_outputs(out: Path, force: bool) -> None:
    """Refuse to delete what is not a demo's own: the demo replaces its three files, and a
    user's results store or trace may carry the same name (``--out .`` in a work folder)."""
    from burstbench.outfile import check_output

    for name, kind in zip(OUTPUT_FILES, OUTPUT_KINDS, strict=True):
        path = check_output(out / name, kind=kind, force=force, flag="--out")
        if kind != "duckdb" or force or not path.is_file() or path.stat().st_size == 0:
            continue
        import duckdb

        con = duckdb.connect(str(path), read_only=True)
        try:
            (n,) = con.execute("SELECT count(*) FROM runs WHERE label IS DISTINCT FROM 'demo'").fetchone()
            theirs = f"{n} runs the demo did not make" if n else None
        except duckdb.Error:
            theirs = "a DuckDB database that is not a results store"
        finally:
            con.close()
        if theirs:
            raise UsageError(f"--out {out}: {name} holds {theirs}; choose another --out folder, "
                             "or add --force to replace it")


def _fmt(v: float | None, unit: str = "") -> str:
    return "–" if v is None else f"{v:,.1f}{unit}"


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("burstbench-demo"), show_default=True,
              help="Folder for results.duckdb, trace.parquet and report.html (replaced if present).")
@click.option("--requests", type=int, default=200, show_default=True, help="Requests to send.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic workload.")
@click.option("--rate", type=float, default=8.0, show_default=True, help="Mean arrival rate (req/s).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model preset of the engine.")
@click.option("--hardware", default=DEFAULT_HARDWARE, show_default=True, help="Hardware preset of the engine.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Run the engine and the replay this many times faster (SLOs shrink to match).")
@click.option("--slo", default=DEFAULT_SLO, show_default=True, help="SLOs for the verdicts.")
@click.option("--json", "as_json", is_flag=True, help="Print the headline numbers as one JSON object.")
@force_option
def demo(out_dir: Path, requests: int, seed: int, rate: float, model: str, hardware: str,
         time_scale: float, slo: str, as_json: bool, force: bool) -> None:
    """Run the whole pipeline on the bundled reference engine and write an HTML report.

    \b
    Examples:
      burstbench demo
      burstbench demo --out /tmp/demo --requests 100 --seed 7
    """
    from burstbench.output import console as make_console

    console = make_console()
    res = run_demo(out_dir, requests=requests, seed=seed, rate=rate, model=model, hardware=hardware,
                   time_scale=time_scale, slo=slo, progress=True, force=force,
                   say=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True))
    h = res.headline()
    att = h["slo_attainment"]
    console.print("")
    console = results_console(as_json)  # the headline is the result: stdout (stderr beside --json)
    console.print(f"report:   {h['report']}  ({res.report.resolve().as_uri()})", highlight=False, markup=False,
                  soft_wrap=True)
    console.print(f"results:  {h['results']} (run {h['run_id']})", highlight=False, markup=False)
    console.print(f"requests: {h['requests']} sent, {h['completed']} ok, {h['failed']} failed in "
                  f"{h['duration_s']:.1f} s; {_fmt(h['request_throughput'])} req/s, "
                  f"{_fmt(h['output_throughput'])} output tok/s", highlight=False, markup=False)
    for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2EL")):
        m = h[key]
        console.print(f"{name:<5} p50 {_fmt(m['p50'], ' ms')}  p90 {_fmt(m['p90'], ' ms')}  "
                      f"p99 {_fmt(m['p99'], ' ms')}", highlight=False, markup=False)
    console.print(f"SLO {h['slo']}: attainment {'–' if att is None else f'{att * 100:.1f}%'}, "
                  f"goodput {_fmt(h['request_goodput'])} req/s", highlight=False, markup=False)
    console.print(f"done in {h['seconds']:.0f} s; open the report in a browser", highlight=False, markup=False)
    if as_json:
        emit_json(h)
