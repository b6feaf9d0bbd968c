"""``burstbench analyze`` and ``burstbench sweep``: parse flags, call the library, print.

The result (rich tables) goes to stdout, so ``analyze R > f`` keeps it; ``--json``
writes one object to stdout instead and the tables go to stderr. Progress and notes
always go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from burstbench.errors import UsageError
from burstbench.output import CONTEXT_SETTINGS, console, emit_json, print_whole, results_console

CTX = CONTEXT_SETTINGS


def _console() -> Any:
    return console()


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _time_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    a, sep, b = text.partition(":")
    try:
        t0, t1 = float(a), float(b)
    except ValueError:
        raise UsageError(f"--time-range '{text}': give START:END in seconds from run start, e.g. 60:120") from None
    if not sep or not t1 > t0:
        raise UsageError(f"--time-range '{text}': give START:END with END > START, e.g. 60:120")
    return t0, t1


# -- tables ----------------------------------------------------------------------------------------


def summary_table(s: dict[str, Any]) -> Any:
    """vLLM's ``bench serve`` result block as a rich table, plus our extra metrics."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"Serving Benchmark Result — run {s['run_id']}" + (f" ({s['label']})" if s.get("label") else ""),
              show_header=False, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")

    def row(label: str, value: Any, digits: int = 2) -> None:
        t.add_row(label, _fmt(value, digits))

    row("Successful requests:", s["completed"])
    row("Failed requests:", s["failed"])
    row("Benchmark duration (s):", s["duration_s"])
    row("Total input tokens:", s["total_input_tokens"])
    row("Total generated tokens:", s["total_output_tokens"])
    row("Request rate target / achieved (req/s):",
        f"{_fmt(s['target_rate'])} / {_fmt(s['achieved_rate'])}")
    row("Request throughput (req/s):", s["request_throughput"])
    row("Output token throughput (tok/s):", s["output_throughput"])
    row("Total Token throughput (tok/s):", s["total_token_throughput"])
    row("Peak concurrent requests:", s["peak_concurrency"])
    g = s.get("goodput")
    if g:
        row("Request goodput (req/s):", g["request_goodput"])
        row("SLO attainment (failures count):", g["slo_attainment"], 4)
        for m, v in g["per_metric_attainment"].items():
            row(f"  attainment {m} <= {g['slo_ms'][m]:g} ms:", v, 4)
        row("Token goodput (tok/s):", g["token_goodput"])
    for key, title, short in (("ttft_ms", "Time to First Token", "TTFT"),
                              ("tpot_ms", "Time per Output Token (excl. 1st token)", "TPOT"),
                              ("itl_ms", "Inter-token Latency (chunks)", "ITL"),
                              ("itl_token_ms", "Inter-token Latency (per token)", "token ITL"),
                              ("e2el_ms", "End-to-end Latency", "E2EL"),
                              ("ttfvt_ms", "Time to First Visible Token", "TTFVT"),
                              ("schedule_lag_ms", "Schedule lag (sent - scheduled)", "lag"),
                              ("e2el_from_schedule_ms", "E2EL from schedule", "E2EL-sched")):
        st = s[key]
        if st["mean"] is None:
            continue
        t.add_section()
        t.add_row(Text(title, style="bold"), "")
        for stat in ("mean", "median", "p90", "p99"):
            row(f"{stat.capitalize() if stat in ('mean', 'median') else stat.upper()} {short} (ms):", st[stat])
    return t


def _kv_table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[_fmt(r.get(c), 4 if isinstance(r.get(c), float) and abs(r.get(c)) <= 1 else 2) for c in cols])
    return t


def decomposition_table(d: dict[str, Any]) -> Any:
    """TTFT split into client, network, server remainder, queue and prefill (ms)."""
    from rich.table import Table

    from burstbench.analysis.phases import PARTS

    names = {"client": "client lag", "network": "network", "server_other": "server other",
             "queue": "queue", "prefill": "prefill"}
    t = Table(title=f"TTFT from schedule, by part (server spans joined: {d['joined']} of {d['completed']}"
                    f", {d['missing']} missing)", title_justify="left")
    for c in ("part", "mean ms", "p50 ms", "p90 ms", "p99 ms", "share", "< 0"):
        t.add_column(c, justify="right")
    for p in PARTS:
        st = d["parts_ms"][p]
        share = d["mean_share"][p]
        t.add_row(names[p], _fmt(st["mean"]), _fmt(st["p50"]), _fmt(st["p90"]), _fmt(st["p99"]),
                  "-" if share is None else f"{100 * share:.1f}%", str(d["negative"][p]))
    for key, label in (("ttft_ms", "client TTFT"), ("server_ttft_ms", "server TTFT")):
        st = d[key]
        t.add_row(label, _fmt(st["mean"]), _fmt(st["p50"]), _fmt(st["p90"]), _fmt(st["p99"]), "", "")
    return t


# -- analyze -------------------------------------------------------------------------------------


@click.command("analyze", context_settings=CTX)
@click.argument("store", required=False, type=click.Path(dir_okay=False))
@click.option("--run", "run_id", default=None, help="Run id, unique id prefix or label [latest run].")
@click.option("--slo", default=None, help="SLOs, e.g. ttft=500ms,tpot=50ms,e2el=10s (<= for latencies).")
@click.option("--window", type=float, default=None, help="Also show SLO attainment per window of S seconds.")
@click.option("--time-range", default=None, help="Only requests sent in START:END seconds from run start.")
@click.option("--tenant", default=None, help="Only this tenant's requests.")
@click.option("--model", default=None, help="Only this model's requests.")
@click.option("--session", default=None, help="Only this session's requests.")
@click.option("--tenants", "by_tenant", is_flag=True, help="Per-tenant attainment and Jain's fairness index.")
@click.option("--compare", "compare_to", default=None, help="Compare --run (A) with this run (B, id or label): deltas with CIs.")
@click.option("--metrics", default=None,
              help="For --compare: e.g. ttft.p99,itl.p99,e2el.mean,slo_attainment (names as in analyze: itl pools "
                   "chunk gaps, itl_request_mean is each request's mean gap).")
@click.option("--boot", type=int, default=1000, show_default=True, help="Bootstrap replicates for --compare.")
@click.option("--sql", default=None, help="Run read-only SQL against the store (views: request_metrics, chunk_gaps, token_itl).")
@click.option("--import", "import_file", default=None, type=click.Path(dir_okay=False),
              help="Import a vLLM/GuideLLM/AIPerf result file into the store first.")
@click.option("--format", "import_format", type=click.Choice(["vllm", "guidellm", "aiperf"]), default=None,
              help="Format of --import [detected].")
@click.option("--label", default=None, help="Label for the imported run (then --run LABEL selects it).")
@click.option("--list", "list_runs", is_flag=True, help="List the runs in the store (id, label, backend, ...).")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="Results store (same as STORE).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def analyze(store: str | None, run_id: str | None, slo: str | None, window: float | None, time_range: str | None,
            tenant: str | None, model: str | None, session: str | None, by_tenant: bool, compare_to: str | None,
            metrics: str | None, boot: int, sql: str | None, import_file: str | None, import_format: str | None,
            label: str | None, list_runs: bool, out: str | None, as_json: bool) -> None:
    """Metrics, SLO attainment and goodput of a run (vLLM bench serve's formulas).

    \b
    Examples:
      burstbench analyze results.duckdb --slo ttft=500ms,tpot=50ms,e2el=10s
      burstbench analyze results.duckdb --run 2025 --tenant chat --window 60 --json
      burstbench analyze results.duckdb --run A --compare B --slo ttft=1s
      burstbench analyze results.duckdb --sql "SELECT tenant, avg(ttft_s) FROM request_metrics GROUP BY 1"
      burstbench analyze --import vllm_result.json -o results.duckdb --label vllm-a
      burstbench analyze results.duckdb --list
      burstbench analyze results.duckdb --run vllm-a --slo ttft=500ms
    """
    from rich.text import Text

    if store and out and Path(store) != Path(out):
        raise UsageError("give the results store once: as STORE or as -o, not two different files")
    path = store or out
    if path is None:
        raise UsageError("name the results store: burstbench analyze results.duckdb (or -o with --import)")
    con_out: dict[str, Any] = {}
    if import_file:
        from burstbench.analysis.importers import import_results
        from burstbench.outfile import check_output

        check_output(path, kind="duckdb", inputs=[import_file])
        err = _console()
        ids = import_results(import_file, path, fmt=import_format, label=label,
                             warn=lambda n: err.print(Text(f"note: {n}"), soft_wrap=True))
        con_out["imported"] = ids
        run_id = run_id or ids[-1]
        err.print(Text(f"imported {len(ids)} run(s) from {import_file} into {path}: {', '.join(ids)}"), soft_wrap=True)
    if list_runs:
        from burstbench.analysis.metrics import list_runs as runs_of

        rows = runs_of(path)
        if as_json:
            emit_json({"runs": rows})
        else:
            print_whole(results_console(), _kv_table(f"runs in {path}", rows, ["run_id", "label", "backend", "model",
                                                                               "started_at", "requests", "status"]))
        return
    if sql:
        from burstbench.analysis.sql import run_sql

        res = run_sql(path, sql)
        if as_json:
            emit_json(res)
        else:
            rows = [dict(zip(res["columns"], r, strict=True)) for r in res["rows"]]
            print_whole(results_console(), _kv_table("query result" + (" (truncated)" if res["truncated"] else ""),
                                                     rows, res["columns"]))
        return

    from burstbench.analysis import slo as slo_mod
    from burstbench.analysis.metrics import open_store, summarize

    slo_s = slo_mod.parse_slo(slo) if slo else None
    where = {"time_range": _time_range(time_range), "tenant": tenant, "model": model, "session": session}
    con = open_store(path)
    status = _console().status(f"analysing {path} ...")
    status.start()
    try:
        s = summarize(con, run_id, slo=slo_s, where=where)
        result: dict[str, Any] = {**con_out, **s}
        tables = [summary_table(s)]
        from burstbench.analysis.metrics import Selection
        from burstbench.analysis.phases import decomposition

        dec = decomposition(con, s["run_id"], Selection.of(where))
        if dec is not None:
            result["ttft_decomposition"] = dec
            tables.append(decomposition_table(dec))
        if window is not None:
            if not slo_s:
                raise UsageError("--window shows attainment over time; it needs --slo")
            rows = slo_mod.attainment_over_time(con, s["run_id"], slo_s, window)
            result["attainment_over_time"] = rows
            tables.append(_kv_table(f"SLO attainment per {window:g} s window", rows,
                                    ["t_start_s", "t_end_s", "requests", "good", "failed", "attainment"]))
        if by_tenant:
            if not slo_s:
                raise UsageError("--tenants shows per-tenant attainment; it needs --slo")
            pt = slo_mod.per_tenant(con, s["run_id"], slo_s)
            result["per_tenant"] = pt
            tables.append(_kv_table(f"Per tenant (Jain's fairness index {_fmt(pt['jain_index'], 4)})", pt["tenants"],
                                    ["tenant", "requests", "good", "failed", "slo_attainment", "request_goodput"]))
        if compare_to:
            from burstbench.analysis.compare import compare_runs

            specs = [m for m in (metrics or "").split(",") if m.strip()] or None
            cmp = compare_runs(con, s["run_id"], compare_to, metrics=specs, slo=slo_s, n_boot=boot)
            result["compare"] = cmp
            rows = [{"metric": f"{r['metric']}.{r['stat']}", "A": r["a"], "B": r["b"], "delta": r["delta"],
                     "ci_low": r["ci"][0] if r["ci"] else None, "ci_high": r["ci"][1] if r["ci"] else None,
                     "significant": "yes" if r["significant"] else "no"} for r in cmp["metrics"]]
            tables.append(_kv_table(f"B ({cmp['run_b']}) − A ({cmp['run_a']}), 95% bootstrap CI", rows,
                                    ["metric", "A", "B", "delta", "ci_low", "ci_high", "significant"]))
            from burstbench.analysis.schedseries import read_series, series_rows

            sa, sb = read_series(con, cmp["run_a"]), read_series(con, cmp["run_b"])
            if sa is not None and sb is not None:  # both recorded the scheduler's gauges: set them side by side
                from burstbench.analysis.schedseries import compare_series

                sc = compare_series(sa, sb)
                result["scheduler"] = {k: v for k, v in sc.items() if k != "series"}
                tables.append(_kv_table("Scheduler series, B against A (e.g. A measured, B its replay; distance: "
                                        "area between the curves / area under A's)", series_rows(sc),
                                        ["quantity", "A", "B", "distance"]))
    finally:
        status.stop()
        con.close()
    if as_json:
        emit_json(result)
    else:
        c = results_console()
        for t in tables:
            print_whole(c, t)
    for n in s["notes"] if s["run_id"] not in con_out.get("imported", ()) else ():  # imports said them already
        _console().print(Text(f"note: run {s['run_id']}: {n}"), soft_wrap=True)


# -- sweep ---------------------------------------------------------------------------------------


@click.command("sweep", context_settings=CTX)
@click.option("--rates", default=None, help="Run each rate (req/s), e.g. 1,2,4,8.")
@click.option("--concurrencies", default=None, help="Run each closed-loop concurrency, e.g. 1,4,16 (live only).")
@click.option("--search", type=click.Choice(["goodput"]), default=None, help="Search the max goodput rate.")
@click.option("--slo", default=None, help="SLOs for attainment, e.g. ttft=500ms,tpot=50ms.")
@click.option("--target", type=float, default=0.9, show_default=True, help="Attainment the rate must keep.")
@click.option("--start", type=float, default=1.0, show_default=True, help="First rate of the search (req/s).")
@click.option("--tolerance", type=float, default=0.05, show_default=True, help="Stop when (hi-lo)/hi is below this.")
@click.option("--max-steps", type=int, default=12, show_default=True, help="At most this many runs in a search.")
@click.option("--url", default=None, help="Live endpoint, e.g. http://127.0.0.1:8000.")
@click.option("--simulate", is_flag=True, help="Use the reference engine in virtual time instead of a URL.")
@click.option("--model", default=None, help="Model preset or config for --simulate (sent to the server when live).")
@click.option("--hardware", default=None, help="Hardware preset or profile for --simulate.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor parallelism for --simulate.")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="Trace to replay.")
@click.option("--duration", type=float, default=None,
              help="Each rate step lasts S seconds: the rescaled trace repeats to fill it (live: sending stops at S).")
@click.option("--requests", "max_requests", type=int, default=None, help="Live: at most N requests per step.")
@click.option("--tokenizer", default=None, type=click.Path(),
              help="Live: the served model's tokenizer.json (or its folder), so prompts have exactly the trace's length.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Live: prompt seed of the first step (step k uses seed + k). A second sweep against a server "
                   "with a prefix cache needs seeds the first did not use (or a restarted server).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Results DuckDB file (appended).")
@click.option("--json", "as_json", is_flag=True, help="Every step and the max goodput rate as one JSON object.")
def sweep(rates: str | None, concurrencies: str | None, search: str | None, slo: str | None, target: float,
          start: float, tolerance: float, max_steps: int, url: str | None, simulate: bool, model: str | None,
          hardware: str | None, tp: int, trace_path: str, duration: float | None, max_requests: int | None,
          tokenizer: str | None, seed: int, out: str, as_json: bool) -> None:
    """Sweep request rates or concurrencies, or search the max goodput rate.

    Each step is a run in OUT labelled sweep:<rate>; live, each step sends prompts
    of its own (seed + step), so a server's prefix cache never answers one step
    from the last; a second sweep against the same server needs another --seed.
    The search doubles the rate
    until attainment drops below --target, then bisects; the answer is the highest
    rate measured to pass, with the Wilson 95% interval of its attainment. A rate
    step whose achieved rate falls short of its target (a trace too short for the
    rate, or a server falling behind) does not count; --duration makes every step
    last long enough.

    \b
    Examples:
      burstbench sweep --rates 1,2,4,8 --simulate --model llama-3-8b --hardware a100-80g \\
          --trace T.parquet -o sweep.duckdb
      burstbench sweep --search goodput --slo ttft=500ms,tpot=50ms --simulate --model llama-3-8b \\
          --hardware h100-sxm --trace T.parquet -o sweep.duckdb --json
      burstbench sweep --concurrencies 1,4,16 --url http://127.0.0.1:8000 --trace T.parquet \\
          --duration 30 -o sweep.duckdb
    """
    from burstbench.analysis import sweep as sw
    from burstbench.analysis.slo import parse_slo

    modes = [m for m in (rates, concurrencies, search) if m]
    if len(modes) != 1:
        raise UsageError("give exactly one of --rates, --concurrencies or --search goodput")
    if bool(url) == bool(simulate):
        raise UsageError("give exactly one of --url URL or --simulate --model M --hardware H")
    if simulate and (not model or not hardware):
        raise UsageError("--simulate needs --model and --hardware (presets: see 'burstbench simulate --help')")
    if concurrencies and simulate:
        raise UsageError("--concurrencies needs a live --url; the simulator replays arrivals (use --rates)")
    if tokenizer and simulate:
        raise UsageError("--tokenizer is for a live --url (the simulator counts the trace's tokens as they are)")
    slo_s = parse_slo(slo) if slo else None
    from burstbench.outfile import check_output
    from burstbench.traces.schema import load_trace

    check_output(out, kind="duckdb", inputs=[trace_path])

    trace = load_trace(trace_path)
    outp = Path(out)
    if simulate:
        driver: Any = sw.SimDriver(trace=trace, out=outp, model=model, hardware=hardware, tp=tp,  # type: ignore[arg-type]
                                   duration_s=duration)
    else:
        overrides = {k: v for k, v in {"model": model, "duration_s": duration, "max_requests": max_requests,
                                       "tokenizer": tokenizer, "seed": seed}.items() if v is not None}
        driver = sw.LiveDriver(trace=trace, out=outp, url=url or "", overrides=overrides, progress=not as_json)
    console = _console()

    def on_step(st: sw.Step) -> None:
        att = f", attainment {st.slo_attainment:.3f}" if st.slo_attainment is not None else ""
        verdict = " SHORT (does not count)" if st.short else ("" if st.passed is None else
                                                               (" pass" if st.passed else " FAIL"))
        console.print(f"step {st.label}: {st.completed}/{st.requests} ok, "
                      f"{_fmt(st.request_throughput)} req/s{att}{verdict}")

    if search:
        res = sw.search_max_goodput(driver, outp, slo_s or {}, target=target, start=start, tolerance=tolerance,
                                    max_steps=max_steps, on_step=on_step)
    elif rates:
        res = sw.sweep_values(driver, outp, sw.parse_values(rates), kind="rates", slo=slo_s, target=target,
                              on_step=on_step)
    else:
        res = sw.sweep_values(driver, outp, sw.parse_values(concurrencies or "", integer=True, flag="--concurrencies"),
                              kind="concurrencies", slo=slo_s, target=target, on_step=on_step)
    d = res.to_dict()
    if as_json:
        emit_json(d)
    result_con = results_console(as_json)  # the table and the answer are the result; step lines were progress
    rows = [{"value": s["value"], "run_id": s["run_id"], "ok": s["completed"], "req/s": s["request_throughput"],
             "ttft p99": s["ttft_p99_ms"], "attainment": s["slo_attainment"]} for s in d["steps"]]
    result_con.print(_kv_table(f"sweep ({res.mode})", rows, ["value", "run_id", "ok", "req/s", "ttft p99", "attainment"]))
    if res.max_goodput_rate is not None:
        ci = res.attainment_ci95 or [None, None]
        result_con.print(f"max goodput rate: {res.max_goodput_rate:.4g} req/s (attainment {_fmt(res.attainment_at_max, 3)}, "
                         f"95% CI {_fmt(ci[0], 3)}–{_fmt(ci[1], 3)}; bracket {res.bracket})")
    for n in res.notes:
        console.print(f"note: {n}")
