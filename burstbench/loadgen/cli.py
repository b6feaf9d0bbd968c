"""``burstbench run``: parse flags, build the scenario, call the runner, print the summary."""

from __future__ import annotations

import click

from burstbench.errors import UsageError
from burstbench.output import emit_json, say


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="Endpoint root, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine).")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False),
              help="Trace: a Parquet trace or a raw log (BurstGPT, Azure, Mooncake...).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Results DuckDB file (appended).")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False),
              help="Scenario YAML; flags given here override it.")
@click.option("--api", type=click.Choice(["completions", "chat"]), default=None, help="API [completions].")
@click.option("--model", default=None, help="Model name sent to the server (default: the one model /v1/models lists).")
@click.option("--mode", type=click.Choice(["trace", "rate", "closed"]), default=None,
              help="trace (replay arrivals), rate (Poisson at --rate), closed (--concurrency users).")
@click.option("--rate", type=float, default=None, help="Poisson arrivals at R requests/s (implies --mode rate).")
@click.option("--poisson", type=click.Choice(["exact", "pure"]), default=None,
              help="--rate schedule: exact (the seed's draw rescaled to exactly R/s, as vllm bench serve "
                   "does) or pure (the draw as it is; its rate is off R by ~1/sqrt(n)) [exact].")
@click.option("--concurrency", type=int, default=None, help="N closed-loop users (implies --mode closed).")
@click.option("--max-concurrency", type=int, default=None, help="Cap on requests in flight (they wait; lag shows it).")
@click.option("--think-time", type=float, default=None, help="Seconds a user/session waits after an answer.")
@click.option("--duration", type=float, default=None, help="Stop sending after S seconds.")
@click.option("--requests", "max_requests", type=int, default=None, help="Send at most N requests.")
@click.option("--warmup", type=float, default=None, help="First S seconds recorded as phase 'warmup'.")
@click.option("--cooldown", type=float, default=None, help="Last S seconds recorded as phase 'cooldown'.")
@click.option("--speed", "time_scale", type=float, default=None, help="Trace replay speed (2 = twice as fast).")
@click.option("--workers", type=int, default=None, help="Client processes (each its own event loop) [1].")
@click.option("--timeout", type=float, default=None, help="Per-request timeout in seconds [600].")
@click.option("--grace", type=float, default=None, help="Seconds in-flight requests get after Ctrl-C [10].")
@click.option("--api-key-env", default=None, help="Name of the environment variable holding the API key.")
@click.option("--no-ignore-eos", is_flag=True, default=False, help="Let the server stop at EOS.")
@click.option("--no-scrape", is_flag=True, default=False, help="Do not scrape the server's /metrics.")
@click.option("--seed", type=int, default=None, help="Seed of the Poisson schedule [0].")
@click.option("--tokenizer", default=None, type=click.Path(),
              help="The served model's tokenizer.json (or its folder): prompts then have exactly "
                   "the asked length as it counts (needs the 'tokenizers' package).")
@click.option("--label", default=None, help="A name for this run in the results file.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto",
              help="Spread the load over Ray actors of this cluster (extra [distributed]).")
@click.option("--server-spans", is_flag=False, flag_value="127.0.0.1:4318", default=None, metavar="[HOST:PORT]",
              help="Receive the server's OpenTelemetry spans (OTLP/HTTP) here and join each to its request "
                   "[127.0.0.1:4318]; prints how to start vLLM so it exports there.")
@click.option("--server-spans-grpc", is_flag=False, flag_value="127.0.0.1:4317", default=None,
              metavar="[HOST:PORT]", help="Also accept the spans over OTLP/gRPC, vLLM's default exporter "
                                          "[127.0.0.1:4317] (needs grpcio).")
@click.option("--spans-grace", type=float, default=None, help="Seconds to wait after the run for late spans [10].")
@click.option("--otlp-endpoint", default=None, metavar="URL",
              help="Also export the client's span per request to this OTLP/HTTP collector (Jaeger, Tempo).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No live progress.")
def run(trace_path: str, out: str, scenario_file: str | None, as_json: bool, quiet: bool, label: str | None,
        no_ignore_eos: bool, no_scrape: bool, **flags: object) -> None:
    """Send a trace to an OpenAI-compatible endpoint and record every request and chunk.

    Rows are committed while the run goes; Ctrl-C stops sending and lets in-flight
    requests finish within --grace (a second Ctrl-C cancels them), and the run is
    marked aborted. The summary table goes to stdout (to stderr with --json);
    progress goes to stderr.

    \b
    Examples:
      burstbench run --url http://127.0.0.1:8000 --trace T.parquet -o results.duckdb
      burstbench run --url http://127.0.0.1:8000 --trace burstgpt.csv --rate 20 \\
          --duration 60 --warmup 5 --workers 2 -o results.duckdb --json
      burstbench run --url http://127.0.0.1:8000 --trace T.parquet --server-spans -o results.duckdb
    """
    from burstbench.loadgen.runner import execute
    from burstbench.loadgen.scenario import build_scenario
    from burstbench.loadgen.summary import render_table, summarize
    from burstbench.outfile import check_output
    from burstbench.store import ResultsStore
    from burstbench.traces.schema import load_trace

    for name in ("workers", "max_requests", "concurrency", "max_concurrency"):
        value = flags.get(name)
        if value is not None and value < 1:  # type: ignore[operator]
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    overrides = {
        "url": flags["url"], "api": flags["api"], "model": flags["model"], "mode": flags["mode"],
        "rate": flags["rate"], "poisson": flags["poisson"], "concurrency": flags["concurrency"], "max_concurrency": flags["max_concurrency"],
        "think_time_s": flags["think_time"], "duration_s": flags["duration"], "max_requests": flags["max_requests"],
        "warmup_s": flags["warmup"], "cooldown_s": flags["cooldown"], "time_scale": flags["time_scale"],
        "workers": flags["workers"], "timeout_s": flags["timeout"], "grace_s": flags["grace"],
        "api_key_env": flags["api_key_env"], "seed": flags["seed"], "server_spans": flags["server_spans"],
        "server_spans_grpc": flags["server_spans_grpc"], "tokenizer": flags["tokenizer"],
        "spans_grace_s": flags["spans_grace"], "otlp_endpoint": flags["otlp_endpoint"],
        "ignore_eos": False if no_ignore_eos else None, "scrape_metrics": False if no_scrape else None,
    }
    check_output(out, kind="duckdb", inputs=[trace_path, scenario_file])
    scenario = build_scenario(scenario_file, **overrides)
    trace = load_trace(trace_path)
    if flags.get("ray_address"):  # distributed load: burstbench/loadgen/ray_driver.py
        if scenario.server_spans or scenario.server_spans_grpc or scenario.otlp_endpoint:
            raise UsageError("--server-spans and --otlp-endpoint do not work with --ray yet; run without --ray")
        from burstbench.loadgen.ray_driver import execute_ray

        result = execute_ray(trace, scenario, out, address=str(flags["ray_address"]), label=label,
                             progress=not quiet)
    else:
        result = execute(trace, scenario, out, label=label, progress=not quiet)
    with ResultsStore(out, read_only=True) as store:
        summary = summarize(store, result.run_id)
    say(render_table(summary), err=as_json)  # the result on stdout (under --json, stdout is the JSON); its notes may quote a server's error text
    if as_json:
        emit_json(summary)
    if result.status != "done":
        click.get_current_context().exit(130 if "SIGINT" in result.end_reason else 1)
