"""``burstbench calibrate``, ``whatif`` and ``plan``: parse flags, call ``twin``, print.

Human output (rich tables) goes to stderr; ``--json`` writes one object to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from burstbench.errors import InputError, UsageError
from burstbench.limits import MAX_BAND, MAX_REPLICAS
from burstbench.outfile import check_output, force_option
from burstbench.output import CONTEXT_SETTINGS, console, emit_json, results_console

CTX = CONTEXT_SETTINGS
# a scale's log standard deviation beyond which its 95% interval spans more than 10^6 x:
# the runs did not pin it down (another term explains what it would), whatever its value
UNPINNED_LOG_STD = 3.5


def _console() -> Any:
    return console(highlight=False)


def _results(as_json: bool) -> Any:
    return results_console(as_json, highlight=False)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:+.1f}%"


def _load_trace(path: str) -> Any:
    from burstbench.traces.schema import load_trace

    p = Path(path)
    if not p.exists():
        raise InputError("no such trace file", path=p)
    return load_trace(p)


def _int_or_auto(name: str, value: str) -> int | None:
    """A scheduler limit from the command line: a positive integer, or None for 'auto'."""
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be a positive integer or 'auto', got {value!r}") from None


def _sched_opts(max_num_seqs: int | None, max_num_batched_tokens: int | None) -> dict[str, Any]:
    for name, v in (("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1, got {v}")
    return {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}


# -- calibrate -----------------------------------------------------------------------------


@click.command("calibrate", context_settings=CTX)
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--run", "run_ids", multiple=True,
              help="The measured run to fit (id, unique id prefix or label); repeat to fit several runs of the endpoint "
                   "together (e.g. two rates).")
@click.option("--probe", "probe_url", default=None,
              help="Measure this endpoint with a designed probe first (single requests over prompt lengths, "
                   "batches of decodes, a mixed phase; ~150 requests, recorded into RESULTS) and fit to it "
                   "(with any --run given).")
@click.option("--tokenizer", default=None,
              help="With --probe: the served model's tokenizer.json (or folder), so prompts have exact lengths.")
@click.option("--model", required=True, help="Model preset or config.json the endpoint serves.")
@click.option("--hardware", required=True, help="Hardware preset or profile JSON to start from.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor parallelism of the endpoint.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Data-parallel replicas behind the endpoint.")
@click.option("--max-num-seqs", default="256", show_default=True,
              help="The endpoint's scheduler limit, or 'auto' to fit it when unknown.")
@click.option("--max-num-batched-tokens", default="8192", show_default=True,
              help="The endpoint's token budget, or 'auto' to fit it when unknown.")
@click.option("--holdout", default=None, help="A second run (id, prefix or label) to check the fit on (not used to fit).")
@click.option("--time-scale", type=float, default=None,
              help="How many times faster than modelled time the endpoint ran (serve --time-scale); "
                   "default: the run's scenario time_scale (1 for simulated runs).")
@click.option("--max-requests", type=int, default=2000, show_default=True,
              help="Fit on at most the first N completed requests (each evaluation replays them).")
@click.option("--max-evals", type=int, default=150, show_default=True,
              help="Simulation budget of each of up to three fits (without, with, again without a per-sequence "
                   "step cost): least squares, then a Nelder-Mead polish.")
@click.option("--spans", "use_spans", is_flag=True,
              help="Measure the frontend latency from the runs' server spans (run --server-spans) as client "
                   "TTFT - server queue - prefill, instead of profiling it from TTFT.")
@click.option("--jitter", "step_jitter", is_flag=True,
              help="Also fit a random time per engine step from the runs' chunk gaps (a real engine's stalls): the "
                   "twin's gaps between tokens (ITL) then spread as the endpoint's did. Off by default: on vLLM's CPU "
                   "build it cut the ITL error by about half and moved TTFT's either way (twin.jitter).")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="twin.yaml to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the twin (with errors) as one JSON object.")
@force_option
def calibrate(results: str, run_ids: tuple[str, ...], probe_url: str | None, tokenizer: str | None, model: str,
              hardware: str, tp: int, replicas: int, max_num_seqs: str,
              max_num_batched_tokens: str, holdout: str | None, time_scale: float | None, max_requests: int,
              max_evals: int, use_spans: bool, step_jitter: bool, out: str, as_json: bool, force: bool) -> None:
    """Fit the reference engine to a measured run and write a digital twin (twin.yaml).

    The run's own schedule (send times, prompt and output lengths) is replayed in
    virtual time (a closed-loop run as a closed loop of its users) and the cost
    model's free coefficients (bandwidth and FLOP/s efficiency scales,
    per-step/per-layer overheads, per-sequence and per-token step costs kept only when
    the runs show them, a fixed frontend latency) are fitted
    so simulated TTFT, TPOT and E2EL quantiles match the measured ones. Scheduler
    limits given as 'auto' are chosen too, among the values the run allows (slower:
    each candidate is scored after a short re-fit). Fit on the busiest run you have and
    hold out a lighter one: a busy run spans more batch sizes, which is what separates
    the bandwidth efficiency from the per-step overhead.

    \b
    Example:
      burstbench run --url http://127.0.0.1:8000 --trace T.parquet -o results.duckdb
      burstbench calibrate results.duckdb --run 20261124T0010 --model llama-3.1-8b \\
          --hardware l40s --holdout 20261124T0020 -o twin.yaml
      burstbench calibrate probe.duckdb --probe http://127.0.0.1:8000 --model config.json \\
          --hardware hw.json -o twin.yaml
    """
    from rich.progress import Progress

    from burstbench.twin.calibrate import calibrate as fit
    from burstbench.twin.vsim import Sched

    if not run_ids and not probe_url:
        raise UsageError("give the runs to fit (--run ID, repeatable) or an endpoint to probe (--probe URL)")
    if tokenizer and not probe_url:
        raise UsageError("--tokenizer is for --probe (recorded runs already have their token counts)")
    if not probe_url and not Path(results).exists():
        from burstbench.errors import StoreError

        raise StoreError(f"{results}: no such results file; record a run with 'burstbench run' first")
    if max_evals < 5:
        raise UsageError("--max-evals must be at least 5")
    check_output(out, kind="yaml", inputs=[results], force=force)
    limits = {"max_num_seqs": _int_or_auto("--max-num-seqs", max_num_seqs),
              "max_num_batched_tokens": _int_or_auto("--max-num-batched-tokens", max_num_batched_tokens)}
    fit_limits = tuple(k for k, v in limits.items() if v is None)
    sched = Sched(**{k: v for k, v in _sched_opts(**limits).items() if v is not None})
    if probe_url:
        from burstbench.backends.reference.models import load_model
        from burstbench.twin.probe import run_probe

        _console().print(f"probing {probe_url} (about 150 requests in 5 closed-loop phases) into {results}")
        probed = run_probe(probe_url, results, tokenizer=tokenizer, max_context=load_model(model).max_context)
        # a phase named as --holdout is recorded but not fitted
        run_ids = (*run_ids, *[rid for label, rid in probed if label != holdout])
    from burstbench.analysis.metrics import open_store, resolve_run

    store = open_store(results)  # a wrong file or run id fails here, before the progress bar
    try:
        for rid in (*run_ids, holdout):
            if rid is not None:
                resolve_run(store, rid)
    finally:
        store.close()
    con = _console()
    with Progress(console=con, transient=True) as bar:
        task = bar.add_task("calibrating", total=max_evals)
        cal = fit(results, list(run_ids), model=model, hardware=hardware, tp=tp, replicas=replicas, sched=sched,
                  fit_limits=fit_limits, holdout=holdout, time_scale=time_scale, max_requests=max_requests, max_evals=max_evals,
                  progress=lambda i, n: bar.update(task, completed=i, total=n), use_spans=use_spans,
                  step_jitter=step_jitter)
    cal.spec.write(out)
    spec = cal.spec
    fitted_on = ", ".join(f"{len(r.work)} requests of run {r.run_id}" for r in cal.fit_runs)
    con.print(f"twin written to {out} ({cal.evaluations} simulations, fit on {fitted_on}, "
              f"time scale {cal.fit_run.time_scale:g}"
              + ("; frontend latency measured from server spans)" if spec.provenance.get("frontend_from_spans") else ")"))
    result_con = _results(as_json)  # the fitted values and errors are the result: stdout
    for name, u in spec.uncertainty.items():
        lo, hi = u["ci95"]
        loose = u.get("log_std", 0.0) > UNPINNED_LOG_STD
        result_con.print(f"  {name:28s} {u['value']:.4g}  (95% CI {lo:.4g} .. {hi:.4g}"
                         + ("; not pinned down by these runs)" if loose else ")")
                         + ("  [at bound]" if u.get("at_bound") else ""))
    jit = spec.provenance.get("step_jitter") or {}
    if spec.scheduler.get("step_jitter"):
        lo, hi = jit["std_ci95_s"]
        result_con.print(f"  {'step jitter (sd)':28s} {jit['std_s'] * 1e3:.3g} ms  (95% CI {lo * 1e3:.3g} .. {hi * 1e3:.3g}; "
                         f"p99 {jit['p99_s'] * 1e3:+.3g} ms; {jit['pairs']} chunk gaps)")
    elif step_jitter:
        result_con.print(f"  {'step jitter':28s} none: {jit.get('why_none', '')}")
    for name, f in spec.provenance.get("scheduler_fit", {}).items():
        why = (f"at least {f['lower_bound']} requests decoded at once" if "lower_bound" in f
               else f"longest prompt {f['longest_prompt']} tokens")
        result_con.print(f"  {name:28s} {f['value']}  ({why}; "
                         + ("fitted)" if f["binding"] else
                            f"not reached in this run: any value from {f['fits_from']} up fits as well)"))
    parts = [("fit", spec.errors.get("fit")), *[("fit", e) for e in spec.errors.get("fit_more", [])],
             ("holdout", spec.errors.get("holdout"))]
    for part, e in parts:
        if not e:
            continue
        result_con.print(f"{part} run {e['run_id']} ({e['requests']} requests): measured vs twin")
        for metric, qs in e["percentiles"].items():
            result_con.print("  " + f"{metric:8s} " + "  ".join(
                f"{q} {_ms(v['measured'])} vs {_ms(v['twin'])} ({_pct(v['rel_err'])})" for q, v in qs.items()))
    if as_json:
        emit_json({"twin": str(out), **spec.to_dict()})


# -- whatif ----------------------------------------------------------------------------------


@click.command("whatif", context_settings=CTX)
@click.argument("twin_file", type=click.Path(dir_okay=False))
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="Trace to replay.")
@click.option("--hardware", default=None, help="Variant hardware (preset or profile JSON).")
@click.option("--tp", type=int, default=None, help="Variant tensor parallelism.")
@click.option("--replicas", type=int, default=None,
              help="Variant replica count (colocated); with --layout disagg, the colocated baseline's.")
@click.option("--max-num-seqs", type=int, default=None, help="Variant scheduler max_num_seqs.")
@click.option("--max-num-batched-tokens", type=int, default=None, help="Variant token budget.")
@click.option("--rate-scale", type=float, default=None,
              help="Variant sees arrivals K times as dense (with --layout disagg, both sides).")
@click.option("--layout", type=click.Choice(["colocated", "disagg"]), default="colocated", show_default=True,
              help="disagg: DistServe's prefill/decode pools for the variant.")
@click.option("--prefill", type=int, default=1, show_default=True, help="Prefill instances (--layout disagg).")
@click.option("--decode", type=int, default=1, show_default=True, help="Decode instances (--layout disagg).")
@click.option("--kv-link-gbps", type=float, default=None,
              help="KV transfer bandwidth in GB/s per rank (--layout disagg; default the hardware's link).")
@click.option("--slo", default=None, help="SLOs, e.g. ttft=500ms,tpot=50ms (ttft, tpot, e2el).")
@click.option("--target", type=float, default=0.9, show_default=True, help="Attainment target of max goodput.")
@click.option("--max-requests", type=int, default=2000, show_default=True, help="Use at most the first N requests.")
@click.option("--no-search", is_flag=True, help="Skip the max goodput search (attainment at the trace's rate only).")
@click.option("--band", type=int, default=0, show_default=True, metavar="N",
              help="Also run N twins drawn from the calibration's uncertainty and show the range of each figure.")
@click.option("-o", "--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Results DuckDB to keep every simulated run in (analyze/report can read it).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def whatif(twin_file: str, trace_path: str, hardware: str | None, tp: int | None, replicas: int | None,
           max_num_seqs: int | None, max_num_batched_tokens: int | None, rate_scale: float | None, layout: str,
           prefill: int, decode: int, kv_link_gbps: float | None, slo: str | None, target: float,
           max_requests: int, no_search: bool, band: int, out: str | None, as_json: bool) -> None:
    """Replay a trace through the twin and a changed deployment, side by side.

    Prints SLO attainment, latency percentiles and the max goodput rate (highest rate
    with attainment >= --target, searched in virtual time) for the baseline (the twin
    as calibrated) and the variant (the twin with the flags' changes). With --layout
    disagg the comparison is DistServe's: the variant is a prefill pool and a decode
    pool (KV moved over --kv-link-gbps), the baseline a colocated fleet of as many
    instances (or --replicas) of the same hardware, both on the same trace; goodput
    per GPU is the figure to compare.

    \b
    Examples:
      burstbench whatif twin.yaml --trace $(burstbench trace examples)/azure_llm_2023_conv.csv \\
          --hardware h200 --slo ttft=500ms,tpot=50ms
      burstbench whatif twin.yaml --trace T.parquet --layout disagg --prefill 1 --decode 1 \\
          --slo ttft=400ms,tpot=40ms --json
    """
    from burstbench.analysis.slo import parse_slo
    from burstbench.twin.spec import load_twin
    from burstbench.twin.whatif import whatif as run

    if out is not None:
        check_output(out, kind="duckdb", inputs=[twin_file, trace_path])
    twin = load_twin(twin_file)
    slo_s = parse_slo(slo) if slo is not None else None
    if not 0 <= band <= MAX_BAND:
        raise UsageError(f"--band must be 0 to {MAX_BAND:,}, got {band:,}")
    for name, v in (("--tp", tp), ("--replicas", replicas), ("--prefill", prefill), ("--decode", decode),
                    ("--max-requests", max_requests)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1, got {v}")
    if kv_link_gbps is not None and not kv_link_gbps > 0:
        raise UsageError(f"--kv-link-gbps must be positive, got {kv_link_gbps}")
    trace = _load_trace(trace_path)
    con = _console()
    changes: dict[str, Any] = {"hardware": hardware, "tp": tp, "replicas": replicas,
                               **_sched_opts(max_num_seqs, max_num_batched_tokens), "layout": layout}
    if layout == "disagg":
        changes.update(prefill=prefill, decode=decode,
                       link_bandwidth=kv_link_gbps * 1e9 if kv_link_gbps else None)
    with con.status("simulating baseline and variant") as status:
        res = run(twin, trace, slo=slo_s, target=target, rate_scale=rate_scale, max_requests=max_requests,
                  out=out, search=not no_search and slo_s is not None, band=band,
                  on_band=_band_progress(con, status),
                  on_step=lambda s: status.update(f"goodput search: {s.value:.3g} req/s -> "
                                                  f"{(s.slo_attainment or 0) * 100:.1f}% attainment"), **changes)
    _print_whatif(_results(as_json), con, res)
    if as_json:
        emit_json(res)


def _band_progress(con: Any, status: Any) -> Any:
    """Progress of ``--band``: the spinner on a terminal, else a line per tenth of the draws."""
    def tick(i: int, n: int) -> None:
        status.update(f"uncertainty band: {i}/{n} twins simulated")
        if not con.is_terminal and (i == n or i % max(1, n // 10) == 0):
            con.print(f"uncertainty band: {i}/{n} twins simulated")

    return tick


def _print_whatif(result_con: Any, con: Any, res: dict[str, Any]) -> None:
    """The comparison on ``result_con`` (the result), notes on ``con`` (stderr)."""
    from rich.table import Table

    b, v = res["baseline"], res["variant"]
    t = Table(title=f"what-if ({', '.join(f'{k}={x}' for k, x in res['changes'].items()) or 'no change'})")
    t.add_column("")
    t.add_column(f"baseline: {b['name']}")
    t.add_column(f"variant: {v['name']}")
    rows = [("GPUs", str(b["gpus"]), str(v["gpus"])), ("requests ok", f"{b['completed']}/{b['requests']}",
                                                         f"{v['completed']}/{v['requests']}")]
    if res.get("slo_ms"):
        rows.append(("SLO attainment", f"{b['slo_attainment'] * 100:.1f}%", f"{v['slo_attainment'] * 100:.1f}%"))
    for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
        for q in ("p50", "p99"):
            rows.append((f"{key[:-3].upper()} {q} (ms)", _ms(b[key][q]), _ms(v[key][q])))
    if "max_goodput_rate" in b:
        def rate(x: float | None) -> str:
            return "none met the target" if x is None else f"{x:.3g} req/s"

        rows.append((f"max goodput (>= {res['target'] * 100:g}%)", rate(b["max_goodput_rate"]), rate(v["max_goodput_rate"])))
        rows.append(("goodput per GPU", rate(b.get("goodput_per_gpu")), rate(v.get("goodput_per_gpu"))))
    for r in rows:
        t.add_row(*r)
    result_con.print(t)
    for side, r in (("baseline", b), ("variant", v)):
        bd = r.get("band")
        if bd:
            att = bd["slo_attainment"]
            result_con.print(f"{side} over {bd['draws']} twins drawn from the calibration's uncertainty: "
                             + (f"attainment {att[0] * 100:.1f}-{att[1] * 100:.1f}%, " if att else "")
                             + ", ".join(f"{key[:-3].upper()} p99 {_ms(bd[key]['p99'][0])}-{_ms(bd[key]['p99'][1])} ms"
                                         for key in ("ttft_ms", "tpot_ms", "e2el_ms") if bd[key].get("p99")))
    if "goodput_per_gpu_ratio" in res:
        result_con.print(f"variant / baseline: max goodput x{res['max_goodput_ratio']:.2f}, "
                         f"per GPU x{res['goodput_per_gpu_ratio']:.2f}")
    for n in res.get("notes", []):
        con.print(f"note: {n}")
    if res.get("results"):
        con.print(f"every simulated run is in {res['results']}")


# -- plan ------------------------------------------------------------------------------------


@click.command("plan", context_settings=CTX)
@click.argument("trace_path", type=click.Path(dir_okay=False))
@click.option("--slo", required=True, help="SLOs, e.g. ttft=500ms,tpot=50ms (ttft, tpot, e2el).")
@click.option("--hardware", required=True, help="Instance types to consider, e.g. a100-80g,h100-sxm,l40s.")
@click.option("--price", default=None,
              help="USD per GPU-hour per type, e.g. a100-80g=1.79,h100-sxm=2.99,l40s=0.86. Without it, "
                   "EXAMPLE prices are used, not quotes: a100-80g 1.79 and h100-sxm 2.99 (inside the typical "
                   "early-2026 on-demand ranges $1.49-2.49 and $2.49-3.99 per GPU-hour listed at "
                   "pricegpu.pages.dev/blog/h100-vs-a100-cloud-price), h200 3.79 and l40s 0.86 (assumed).")
@click.option("--target", type=float, default=0.9, show_default=True, help="SLO attainment to meet at the peak.")
@click.option("--model", default=None, help="Model preset (default: the twin's, else llama-3.1-8b).")
@click.option("--twin", "twin_file", default=None, type=click.Path(dir_okay=False),
              help="A calibrated twin.yaml: its model, corrections and scheduler limits.")
@click.option("--tp", "tp_text", default="1,2,4,8", show_default=True, help="TP degrees to try (those that fit).")
@click.option("--max-instances", type=int, default=64, show_default=True, help="GPUs per type at most.")
@click.option("--window", type=float, default=300.0, show_default=True, help="Window (s) for the peak rate.")
@click.option("--max-requests", type=int, default=2000, show_default=True, help="Peak load: at most N requests.")
@click.option("--no-mix", is_flag=True, help="Only fleets of one instance type.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and every candidate as one JSON object.")
def plan(trace_path: str, slo: str, hardware: str, price: str | None, target: float, model: str | None,
         twin_file: str | None, tp_text: str, max_instances: int, window: float, max_requests: int, no_mix: bool,
         as_json: bool) -> None:
    """Find the cheapest fleet that meets the SLO attainment target at the trace's peak.

    The peak is the busiest --window of the trace (as 'trace stats' reports it); every
    candidate fleet (type, TP, count, and two-type mixes) runs that load in virtual
    time, and its attainment is printed as evidence.

    \b
    Example:
      burstbench plan $(burstbench trace examples)/azure_llm_2023_conv.csv \\
          --slo ttft=500ms,tpot=50ms --hardware a100-80g,h100-sxm,l40s \\
          --price a100-80g=1.79,h100-sxm=2.99,l40s=0.86 --target 0.9
    """
    from rich.table import Table

    from burstbench.analysis.slo import parse_slo
    from burstbench.twin.plan import parse_prices
    from burstbench.twin.plan import plan as run

    slo_s = parse_slo(slo)
    types = [t.strip() for t in hardware.split(",") if t.strip()]
    if not types:
        raise UsageError("--hardware is empty; give e.g. a100-80g,h100-sxm,l40s")
    from burstbench.backends.hardware.profile import load_hardware

    for t in types:
        load_hardware(t)
    try:
        tps = sorted({int(x) for x in tp_text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--tp '{tp_text}': give whole numbers, e.g. 1,2,4") from None
    if not tps or min(tps) < 1:
        raise UsageError(f"--tp '{tp_text}': give positive whole numbers, e.g. 1,2,4")
    if max_instances < 1 or max_requests < 1 or not window > 0:
        raise UsageError("--max-instances, --max-requests and --window must be positive")
    if max_instances > MAX_REPLICAS // 2:  # a mix of two types may hold up to twice as many
        raise UsageError(f"--max-instances {max_instances:,} is over the limit of {MAX_REPLICAS // 2:,} per type "
                         f"(a mixed fleet of two types stays within {MAX_REPLICAS:,} instances)")
    prices = parse_prices(price, types)
    kw: dict[str, Any] = {}
    if twin_file:
        from burstbench.twin.spec import load_twin

        tw = load_twin(twin_file)
        model = model or tw.model
        kw = {"sched": tw.sched(), "overrides": tw.overrides}
    trace = _load_trace(trace_path)
    con = _console()
    if not price:
        con.print("note: no --price given; using EXAMPLE prices " + ", ".join(f"{k}={v}" for k, v in prices.items())
                  + " USD/GPU-hour (see --help)")
    with con.status("planning") as status:
        res = run(trace, model=model or "llama-3.1-8b", hardware=types, prices=prices, slo=slo_s, target=target,
                  tp_options=tps, max_instances=max_instances, window_s=window, max_requests=max_requests,
                  mixes=not no_mix,
                  on_candidate=lambda c: status.update(f"{c['name']}: {c['slo_attainment'] * 100:.1f}%"), **kw)
    load = res["load"]
    result_con = _results(as_json)
    result_con.print(f"peak: {load['peak_rate']:.3g} req/s in the {load['window_s']:g} s window at "
                     f"{load['peak_window_start_s']:g} s (mean {load['mean_rate']:.3g} req/s); load = {load['load']}")
    t = Table(title=f"candidates (target {target * 100:g}% attainment)")
    for col in ("fleet", "GPUs", "USD/h", "attainment", "meets", "TTFT p99 ms", "TPOT p99 ms"):
        t.add_column(col)
    for c in sorted(res["candidates"], key=lambda c: c["usd_per_hour"]):
        t.add_row(c["name"], str(c["gpus"]), f"{c['usd_per_hour']:.2f}", f"{c['slo_attainment'] * 100:.1f}%",
                  "yes" if c["meets_target"] else "no", _ms(c["p99_ms"]["ttft_ms"]), _ms(c["p99_ms"]["tpot_ms"]))
    result_con.print(t)
    for s in res["skipped"]:
        con.print(f"skipped {s['hardware']} tp{s['tp']}: {s['reason']}")
    best = res["best"]
    if best:
        result_con.print(f"cheapest: {best['name']} at {best['usd_per_hour']:.2f} USD/h "
                         f"({best['slo_attainment'] * 100:.1f}% attainment at the peak)")
    for n in res["notes"]:
        con.print(f"note: {n}")
    if as_json:
        emit_json(res)
