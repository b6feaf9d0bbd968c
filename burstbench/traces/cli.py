"""``burstbench trace ...``: thin click commands over the traces library."""

from __future__ import annotations

from typing import Any

import click

from burstbench.outfile import check_output, force_option
from burstbench.output import emit_json, results_console


@click.group()
def trace() -> None:
    """Ingest, characterise, fit and synthesise workload traces.

    \b
    Example:
      burstbench trace ingest $(burstbench trace examples)/burstgpt_v1_head400.csv -o t.parquet
      burstbench trace stats t.parquet --window 300
    """


# --- ingest (owned by the ingest work) -------------------------------------------------

from burstbench.traces.readers import FORMATS as INGEST_FORMATS  # noqa: E402  (light: no polars)


@trace.command("ingest")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Parquet trace to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(INGEST_FORMATS),
    default=None,
    help="Force a reader instead of detecting it from the header / first record.",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    help="Columns of a generic log: arrival=COL[:s|ms|us|ns|iso8601|epoch],input=COL,"
    "output=COL[,model=,session=,turn=,tenant=,failed=,prompt=]. Dotted keys reach nested JSON.",
)
@click.option("--skip-bad", is_flag=True, help="Drop malformed rows (counted per reason) instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@force_option
def ingest_cmd(src: str, output: str, fmt: str | None, mapping: tuple[str, ...], skip_bad: bool, as_json: bool,
               force: bool) -> None:
    """Convert a raw trace (BurstGPT, Azure, Mooncake, Bailian, OpenAI logs, any CSV/JSONL)
    into a Parquet Trace: arrivals rebased to 0 s and sorted, metadata recording the
    source, timestamp unit and resolution, tied arrivals and dropped rows.
    Gzip-compressed files (.gz) are read too.

    \b
    Examples:
      burstbench trace ingest $(burstbench trace examples)/burstgpt_v1_head400.csv -o t.parquet
      burstbench trace ingest requests.jsonl -o t.parquet \\
          --map arrival=ts:ms,input=usage.prompt_tokens,output=usage.completion_tokens
      burstbench trace ingest BurstGPT_1.csv -o t.parquet --skip-bad --json
    """

    from burstbench.output import console
    from burstbench.traces.ingest import ingest_file, summary

    check_output(output, kind="parquet", inputs=[src], force=force)
    err = console()
    with err.status(f"ingesting {src}", spinner="dots"):
        result = ingest_file(src, output, fmt, mapping=",".join(mapping) or None, skip_bad=skip_bad)
    info = summary(result) | {"output": str(output)}
    _print_ingest_summary(err, info)
    if as_json:
        emit_json(info)


def _print_ingest_summary(console: Any, info: dict[str, Any]) -> None:
    dropped = info["rows_dropped"]
    lines = [
        f"{info['rows']:,} requests from {info['source_format']} ({info['source_variant']}) "
        f"-> {info['output']}",
        f"  span {info['span_s']:,.3f} s; "
        + (
            "wall-clock timestamps"
            if info["timestamp_unit"] == "datetime"
            else f"timestamps in {info['timestamp_unit']} ({info['timestamp_unit_source']})"
        )
        + f", resolution {info['timestamp_resolution']}"
        + (
            f" (values written to {info['timestamp_written_precision']})"
            if info["timestamp_written_precision"] not in (None, info["timestamp_resolution"])
            else ""
        )
        + "; "
        f"tied arrivals {info['tied_share']:.1%}",
        f"  rows read {info['rows_read']:,}; dropped "
        + (", ".join(f"{n:,} {r.replace('_', ' ')}" for r, n in dropped.items()) if dropped else "none"),
        f"  failed {info['failed']:,}; sessions {info['sessions']:,}"
        + (f"; prefix block size {info['block_size']}" if info["block_size"] else ""),
    ]
    lines += [f"  note: {n}" for n in info["notes"]]
    lines += [f"  warning: {w}" for w in info["warnings"]]
    for line in lines:
        console.print(line, soft_wrap=True)


# --- stats / fit / synth (owned by the analytics work) ---------------------------------


def _load(path: str) -> Any:
    from burstbench.traces.schema import load_trace

    return load_trace(path)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


@trace.command("stats")
@click.argument("trace_path", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("--window", "window_s", type=float, default=300.0, show_default=True, help="Window (s) for per-window rates and CVs.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object on stdout.")
def stats_cmd(trace_path: str, window_s: float, as_json: bool) -> None:
    """Characterise a trace: rates, burstiness, lengths, mixes, sessions.

    TRACE is a Parquet trace or any raw log ``trace ingest`` reads.

    \b
    Examples:
      burstbench trace stats $(burstbench trace examples)/azure_llm_2023_conv.csv
      burstbench trace stats t.parquet --window 60 --json
    """

    from rich.table import Table

    from burstbench.traces.stats import characterise

    s = characterise(_load(trace_path), window_s=window_s)
    con = results_console(as_json)
    tab = Table(title=f"{trace_path}", show_header=True)
    tab.add_column("statistic")
    tab.add_column("value", justify="right")
    ia = s["inter_arrival_s"] or {}
    w = s["windows"]
    rows = [
        ("requests", f"{s['requests']:,}"),
        ("span (s)", _fmt(s["span_s"], 6)),
        ("mean rate (req/s)", _fmt(s["mean_rate"])),
        (f"peak rate per {window_s:g} s window", _fmt(w["peak_rate"])),
        ("inter-arrival mean / median (s)", f"{_fmt(ia.get('mean'))} / {_fmt(ia.get('median'))}"),
        ("inter-arrival CV", _fmt(ia.get("cv"))),
        ("index of dispersion 1 s / 10 s / 60 s", " / ".join(_fmt(v) for v in s["dispersion"].values())),
        ("per-window gap CV p10 / median / p90", " / ".join(_fmt((w["cv"] or {}).get(k)) for k in ("p10", "median", "p90"))),
        ("timestamp resolution (s)", _fmt(s["timestamps"]["resolution_s"])),
        ("tied arrivals", f"{s['timestamps']['tied_share']:.2%}"),
    ]
    for q in ("input_tokens", "output_tokens"):
        d = s[q]
        rows.append((f"{q} mean / median / p90 / p99 / max", " / ".join(_fmt(d[k]) for k in ("mean", "median", "p90", "p99", "max"))))
    c = s["token_correlation"]
    rows.append(("input/output correlation Pearson / Spearman", f"{_fmt(c['pearson'], 3)} / {_fmt(c['spearman'], 3)}"))
    rows.append(("failed", f"{s['failed']['count']:,} ({s['failed']['rate']:.2%})"))
    for key in ("models", "tenants"):
        for name, g in list((s[key] or {}).items())[:8]:
            rows.append((f"{key[:-1]} {name}", f"{g['count']:,} (failed {g['failure_rate']:.2%})"))
    if s["sessions"]:
        ss = s["sessions"]
        rows.append(("sessions / single-turn share", f"{ss['sessions']:,} / {ss['single_turn_share']:.2%}"))
        rows.append(("turns per session mean / max", f"{_fmt(ss['turns']['mean'])} / {_fmt(ss['turns']['max'])}"))
        rows.append(("think time median / p90 (s)", f"{_fmt(ss['think_time_s']['median'])} / {_fmt(ss['think_time_s']['p90'])}"))
    for k, v in rows:
        tab.add_row(k, v)
    con.print(tab)
    if as_json:
        emit_json(s)


@trace.command("fit")
@click.argument("trace_path", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="WorkloadSpec YAML to write.")
@click.option("--window", "window_s", type=float, default=None, help="Also fit each window of S seconds (piecewise spec).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tie-breaking jitter.")
@click.option("--json", "as_json", is_flag=True, help="Print the fits as one JSON object on stdout.")
@force_option
def fit_cmd(trace_path: str, output: str | None, window_s: float | None, seed: int, as_json: bool,
            force: bool) -> None:
    """Fit arrival gaps (exponential, gamma, Weibull, lognormal) and lengths
    (lognormal, gamma, Weibull, Zipf, empirical) by maximum likelihood; best by AIC.

    Tied or quantised timestamps are jittered uniformly within their resolution
    (seeded; the output names the method). Parameters use SciPy's names: gamma
    ``shape`` (a) and ``scale``; Weibull ``shape`` (c) and ``scale``; lognormal ``s``
    and ``scale``; exponential ``scale``; zipf ``a`` and support ``max``.

    \b
    Examples:
      burstbench trace fit $(burstbench trace examples)/azure_llm_2023_conv.csv -o spec.yaml
      burstbench trace fit t.parquet --window 600 -o piecewise.yaml --json
    """

    from rich.table import Table

    from burstbench.output import console
    from burstbench.traces.fit import fit_trace

    if output:
        check_output(output, kind="yaml", inputs=[trace_path], force=force)
    con = console()  # progress and notes
    out = results_console(as_json)  # the fitted tables
    tr = _load(trace_path)
    with con.status(f"fitting {len(tr):,} requests", spinner="dots"):
        res = fit_trace(tr, window_s=window_s, seed=seed)
    if res.source is None:
        res.source = str(trace_path)
    if output:  # the file first: a closed terminal pipe must not cost the result
        res.to_spec().to_yaml(output)
    for q in (res.arrivals, res.input_tokens, res.output_tokens):
        tab = Table(title=f"{q.quantity} (n={q.n:,}; best {q.best.family})")
        for col in ("family", "parameters", "AIC", "BIC", "KS"):
            tab.add_column(col, justify="left" if col in ("family", "parameters") else "right")
        for c in q.candidates:
            params = (
                f"{len(c.params['quantiles'])} quantiles"
                if c.family == "empirical"
                else ", ".join(f"{k}={_fmt(v, 5)}" for k, v in c.params.items())
            )
            star = " *" if c is q.best else ""
            tab.add_row(c.family + star, params, _fmt(c.aic, 8), _fmt(c.bic, 8), _fmt(c.ks, 3))
        out.print(tab)
    ties = res.arrivals.notes
    if ties.get("method") not in (None, "none"):
        con.print(
            f"tied/quantised arrivals ({ties['tied_share']:.1%} tied, resolution {ties['resolution_s']} s): "
            f"gaps fitted after moving each arrival uniformly within its {ties['jitter_s']} s tick "
            f"(method {ties['method']}, seed {ties['seed']})"
        )
    if res.joint is not None:
        j = res.joint
        out.print(
            f"input/output Spearman {j.spearman:.3f} (p={j.p_value:.2g}): "
            + ("kept as a Gaussian copula" if j.significant else "treated as independent")
        )
    if output:
        con.print(f"wrote {output}")
    if as_json:
        emit_json(res.to_json())


def _window_opt(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    from burstbench.errors import UsageError

    try:
        a, b = (float(v) for v in value.split(":"))
    except ValueError:
        raise UsageError(f"--window must be START:END in seconds (e.g. 0:3600), got {value!r}") from None
    return a, b


@trace.command("synth")
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--preset",
    type=click.Choice(["burstgpt", "reasoning-gamma", "azure-conv", "azure-code", "mooncake-prefix"]),
    default=None,
    help="A named workload (see above).",
)
@click.option("--replay", "replay_path", default=None, type=click.Path(dir_okay=False), help="Transform this real trace instead.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Parquet trace to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration", "duration_s", type=float, default=None, help="Seconds of trace (default: the spec's).")
@click.option("--requests", type=int, default=None, help="Exactly this many requests (the first N by arrival).")
@click.option("--rate", type=float, default=None, help="Mean arrival rate (req/s), keeping the burst shape.")
@click.option("--burstiness", type=float, default=None, help="Gamma shape (vLLM's burstiness) for gamma arrivals.")
@click.option("--time-scale", type=float, default=None, help="Replay: multiply arrival times (0.5 = twice as fast).")
@click.option("--window", "window", default=None, help="Replay: keep arrivals in START:END seconds.")
@click.option("--model", default=None, help="Replay: keep one model.")
@click.option("--tenant", default=None, help="Replay: keep one tenant.")
@click.option("--sample", type=float, default=None, help="Replay: keep a fraction (0-1) or a count (>=1) of requests.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as one JSON object on stdout.")
@force_option
def synth_cmd(
    spec_path: str | None,
    preset: str | None,
    replay_path: str | None,
    output: str,
    seed: int,
    duration_s: float | None,
    requests: int | None,
    rate: float | None,
    burstiness: float | None,
    time_scale: float | None,
    window: str | None,
    model: str | None,
    tenant: str | None,
    sample: float | None,
    as_json: bool,
    force: bool,
) -> None:
    """Synthesise a trace from a WorkloadSpec or a preset, or replay a real one transformed.

    Deterministic under --seed. Presets and their sources (details in
    burstbench/traces/presets.py):

    \b
      burstgpt         BurstGPT generator recipe (Wang et al., KDD'25): Gamma
                       arrivals shape 0.5, scale 2 s; Zipf(1.1) lengths < 1024
      reasoning-gamma  Gamma arrivals (rate 1, burstiness 0.5; --rate/--burstiness),
                       short math-style prompts, long outputs to a 32k context,
                       reasoning share ~0.74 (DeepSeek-R1 traffic) per request in
                       column reasoning_share
      azure-conv       fitted on the shipped Azure LLM 2023 conversation trace
                       (Splitwise, ISCA'24): Gamma 0.871 / 0.2076 s, empirical lengths
      azure-code       Splitwise's published coding medians (prompt 1500, output
                       13 tokens); spreads and rate (2 req/s) assumed
      mooncake-prefix  shaped on Mooncake FAST'25's synthetic trace: Poisson 3.9
                       req/s, shared prefixes reused by ~45 % of requests

    \b
    Examples:
      burstbench trace synth --preset burstgpt -o t.parquet --duration 600 --seed 1
      burstbench trace synth --preset reasoning-gamma --rate 4 --burstiness 0.3 \\
          --requests 2000 -o r.parquet
      burstbench trace fit $(burstbench trace examples)/azure_llm_2023_conv.csv -o spec.yaml
      burstbench trace synth spec.yaml -o s.parquet --rate 10 --seed 2
      burstbench trace synth --replay $(burstbench trace examples)/azure_llm_2023_conv.csv \\
          --rate 20 --window 0:600 -o fast.parquet
    """

    from burstbench.errors import UsageError
    from burstbench.output import console
    from burstbench.traces.schema import write_trace

    con = console()
    given = [x for x in (spec_path, preset, replay_path) if x]
    if len(given) != 1:
        raise UsageError("give exactly one of SPEC, --preset NAME or --replay TRACE")
    check_output(output, kind="parquet", inputs=[spec_path, replay_path], force=force)
    replay_opts = {"time_scale": time_scale, "window": window, "model": model, "tenant": tenant, "sample": sample}
    if replay_path is None and any(v is not None for v in replay_opts.values()):
        raise UsageError("--time-scale, --window, --model, --tenant and --sample apply to --replay only")
    with con.status("synthesising", spinner="dots"):
        if replay_path is not None:
            from burstbench.traces.synth import replay

            if duration_s is not None or requests is not None or burstiness is not None:
                raise UsageError("--duration, --requests and --burstiness do not apply to --replay (use --window, --sample)")
            tr = replay(
                _load(replay_path), time_scale=time_scale, rate=rate, window=_window_opt(window),
                model=model, tenant=tenant, sample=sample, seed=seed,
            )  # fmt: skip
        else:
            from burstbench.traces.presets import preset as get_preset
            from burstbench.traces.spec import WorkloadSpec
            from burstbench.traces.synth import synthesise

            spec = get_preset(preset) if preset else WorkloadSpec.from_yaml(spec_path)  # type: ignore[arg-type]
            tr = synthesise(
                spec, seed=seed, duration_s=duration_s, requests=requests, rate=rate,
                burstiness=burstiness, label=preset or spec_path,
            )  # fmt: skip
    if len(tr) == 0:
        raise UsageError("the trace is empty: lengthen --duration or raise --rate")
    write_trace(tr, output)
    info = {
        "output": str(output),
        "requests": len(tr),
        "duration_s": tr.duration_s,
        "mean_rate": (len(tr) - 1) / tr.duration_s if tr.duration_s > 0 else None,
        "seed": seed,
        "source": preset or spec_path or replay_path,
    }
    con.print(
        f"wrote {info['requests']:,} requests over {info['duration_s']:.1f} s "
        f"({_fmt(info['mean_rate'])} req/s) to {output}"
    )
    if as_json:
        emit_json(info)


@trace.command("examples")
def examples_cmd() -> None:
    """Print the folder of the trace samples shipped with burstbench.

    Why a command: the samples are package data, inside wherever pip installed
    burstbench; a tour or a script run from any directory finds them through this
    (their sources and licences are in that folder's README.md).

    \b
    Example:
      T=$(burstbench trace examples)
      burstbench trace stats $T/azure_llm_2023_conv.csv
    """
    from pathlib import Path

    click.echo(str(Path(__file__).resolve().parent.parent / "data" / "traces"))
