"""``burstbench serve`` and ``burstbench simulate``: thin wrappers over ``server`` and ``simulator``."""

from __future__ import annotations

import os
import sys

import click

from burstbench.errors import UsageError
from burstbench.output import emit_json

_ENGINE_OPTIONS = [
    click.option("--model", "model", default="llama-3.1-8b", show_default=True, help="Model preset name or a Hugging Face config.json path."),
    click.option("--hardware", "hardware", default="h100-sxm", show_default=True, help="Hardware preset name or a profile JSON from 'burstbench profile'."),
    click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree (through the cost model)."),
    click.option("--replicas", type=int, default=1, show_default=True, help="Data-parallel replicas behind a router."),
    click.option("--router", type=click.Choice(["round_robin", "least_outstanding"]), default="round_robin", show_default=True,
                 help="How requests are spread over --replicas."),
    click.option("--max-num-seqs", type=int, default=256, show_default=True, help="Most sequences in one batch (vLLM's max_num_seqs)."),
    click.option("--max-num-batched-tokens", type=int, default=8192, show_default=True, help="Token budget of one iteration (vLLM's max_num_batched_tokens)."),
    click.option("--block-size", type=int, default=16, show_default=True, help="Tokens per paged KV-cache block."),
    click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True, help="Share of device memory for weights and KV cache (vLLM's flag)."),
    click.option("--no-prefix-caching", is_flag=True, help="Disable prefix caching."),
    click.option("--max-waiting", type=int, default=None, help="Bound the waiting queue; beyond it requests get 503 + Retry-After."),
    click.option("--policy", type=click.Choice(["fcfs", "priority"]), default="fcfs", show_default=True,
                 help="Scheduling order of waiting requests (priority: the request's priority field first)."),
]


def _engine_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed(_ENGINE_OPTIONS):
        f = opt(f)
    return f


def _engine_kwargs(options: dict) -> dict:
    """The shared engine options as the keyword arguments ``simulate`` and ``ServeConfig`` take."""
    options = dict(options)
    options["enable_prefix_caching"] = not options.pop("no_prefix_caching")
    return options


@click.command("simulate")
@click.argument("trace", type=click.Path(dir_okay=False))
@_engine_options
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="Results DuckDB file (created or appended to).")
@click.option("--label", default=None, help="A name for this run in the results file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded with the run (the simulation itself is deterministic).")
@click.option("--reasoning-share", type=float, default=None, help="Share of output tokens that are reasoning (reasoning models; default 0.74).")
@click.option("--no-chunks", is_flag=True, help="Do not record per-token chunk rows (very large runs).")
@click.option("--num-gpu-blocks", default=None, metavar="N|auto",
              help="KV cache blocks per replica as vLLM counts them (its reserved null block included), instead of "
                   "sizing the cache from memory; 'auto' with --replay-run: what the server reported "
                   "(vllm:cache_config_info), block size included.")
@click.option("--replay-run", default=None, metavar="RUN",
              help="TRACE is a results store: replay this run's own requests (send times, the server's prompt and "
                   "output counts), e.g. to set the engine's scheduler beside the server's (analyze --compare).")
@click.option("--twin", "twin_file", default=None, type=click.Path(dir_okay=False),
              help="Step times from a calibrated twin (calibrate's twin.yaml) instead of --model/--hardware.")
@click.option("--match-duration", is_flag=True,
              help="With --replay-run: scale every step time by one factor so the replay lasts as long as the run "
                   "(the engine's speed, when no calibrated twin is at hand; the factor is printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.pass_context
def simulate(ctx, trace, out, label, seed, reasoning_share, no_chunks, num_gpu_blocks, replay_run, twin_file,  # type: ignore[no-untyped-def]
             match_duration, as_json, **engine):
    """Run TRACE through the reference engine in virtual time and write results.

    \b
    Example:
      burstbench simulate $(burstbench trace examples)/azure_llm_2023_conv.csv \\
          --model llama-3.1-8b --hardware h100-sxm -o sim.duckdb --json
      # a measured vLLM run replayed at the server's KV size; then compare the scheduler series
      burstbench simulate r.duckdb --replay-run RUN --num-gpu-blocks auto --max-num-seqs 16 \\
          --max-num-batched-tokens 1024 --twin twin.yaml -o r.duckdb --label RUN-sim
      burstbench analyze r.duckdb --run RUN --compare RUN-sim
    """
    from burstbench.backends.reference.simulator import simulate as run
    from burstbench.outfile import check_output

    # --replay-run appends the replay to its own store (a new run; nothing is overwritten)
    check_output(out, kind="duckdb", inputs=[] if replay_run else [trace])
    kw = _engine_kwargs(engine)
    if num_gpu_blocks not in (None, "auto"):
        try:
            num_gpu_blocks = int(num_gpu_blocks)
        except ValueError:
            raise UsageError(f"--num-gpu-blocks must be a whole number or 'auto' (got '{num_gpu_blocks}')") from None
        if num_gpu_blocks < 2:
            raise UsageError(f"--num-gpu-blocks must be at least 2 (one is reserved), got {num_gpu_blocks}")
    if replay_run is None and (num_gpu_blocks == "auto" or match_duration):
        raise UsageError("--num-gpu-blocks auto and --match-duration read a measured run: give --replay-run RUN")
    cost = None
    if twin_file is not None:
        from burstbench.twin.spec import build_cost, load_twin

        spec = load_twin(twin_file)
        for name in ("model", "hardware", "tp"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise UsageError(f"--{name} and --twin both set the cost model: give one")
        kw.update(model=spec.model, hardware=spec.hardware, tp=spec.tp)
        cost = build_cost(spec.model, spec.hardware, spec.tp, spec.overrides)
    common = dict(seed=seed, out=out, label=label, record_chunks=not no_chunks,
                  progress=not as_json and sys.stderr.isatty(), reasoning_share=reasoning_share)
    if replay_run is None:
        res = run(trace, **kw, num_blocks=num_gpu_blocks, cost=cost, **common)
    else:
        from burstbench.backends.reference import replay

        src = replay.read_source(trace, replay_run)
        blocks, kw["block_size"], notes = replay.num_blocks_of(src, num_gpu_blocks, kw["block_size"])
        for n in notes:
            click.echo(f"note: {n}", err=True)
        res, scale = replay.replay(src, cost=cost, match_duration=match_duration, num_blocks=blocks, **kw, **common)
        if match_duration:
            click.echo(f"note: step times x{scale:.4g} to last as long as run {src.run_id} "
                       f"({src.duration_s:.1f} s)", err=True)
    d = res.to_dict()
    if as_json:
        emit_json(d)
    click.echo(  # the result: stdout, unless stdout holds the JSON
        f"simulated {res.requests} requests ({res.completed} ok, {res.rejected} rejected, {res.invalid} invalid) "
        f"over {res.duration_s:.1f} virtual s in {res.wall_s:.2f} s wall: {res.iterations} iterations, "
        f"{res.preemptions} preemptions, prefix hit rate {res.prefix_hit_rate:.3f}; run {res.run_id} in {res.store}",
        err=as_json,
    )
    for note in res.notes:
        click.echo(f"note: {note}", err=True)


@click.command("serve")
@_engine_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="Run the model's clock K times faster. Wall-clock jitter (loopback, event loop) then counts K times in model time: record runs for `calibrate` at 1.")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY'. Prefer the BURSTBENCH_API_KEY environment variable: command lines are visible to other users.")
@click.option("--served-model-name", default=None, help="Model id clients must send (default: the model's name).")
@click.option("--max-concurrent", type=int, default=4096, show_default=True, help="Concurrent requests before 429.")
@click.option("--max-request-bytes", type=int, default=4 * 2**20, show_default=True, help="Largest request body accepted (413 beyond).")
@click.option("--output-len", default="lognormal:256:0.8", show_default=True, help="Output length when the client does not set ignore_eos: KIND[:MEAN[:SIGMA]].")
@click.option("--reasoning-share", type=float, default=0.74, show_default=True, help="Share of output tokens that are reasoning (reasoning models, chat API).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of output lengths drawn when the client does not set ignore_eos.")
@click.option("--fault-error-rate", type=float, default=0.0, help="Share of requests answered with an HTTP error.")
@click.option("--fault-error-codes", default="429,500,503", show_default=True, help="HTTP codes the injected errors draw from.")
@click.option("--fault-retry-after", type=float, default=1.0, show_default=True, help="Retry-After seconds sent with injected errors.")
@click.option("--fault-slow-first-byte-rate", type=float, default=0.0, help="Share of requests whose response starts --fault-slow-first-byte-s late.")
@click.option("--fault-slow-first-byte-s", type=float, default=2.0, show_default=True, help="Delay of a slow first byte (s).")
@click.option("--fault-stall-rate", type=float, default=0.0, help="Share of streams that pause --fault-stall-s at a random token.")
@click.option("--fault-stall-s", type=float, default=5.0, show_default=True, help="Length of a stall (s).")
@click.option("--fault-disconnect-rate", type=float, default=0.0, help="Share of streams cut off at a random token.")
@click.option("--fault-malformed-rate", type=float, default=0.0, help="Share of streams with one unparseable SSE event.")
@click.option("--fault-stream-error-rate", type=float, default=0.0, help="Share of streams ended by an in-stream error event.")
@click.option("--fault-seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option("--header-timeout", type=float, default=10.0, show_default=True, help="Seconds a connection may take to send a request's headers (and stay idle between requests).")
@click.option("--body-timeout", type=float, default=30.0, show_default=True, help="Seconds a request body may take to arrive (then 408).")
@click.option("--max-connections", type=int, default=None, help="Open connections at once; past it a connection gets 503 and is closed (default: --max-concurrent + 1024, within the open-file limit).")
@click.option("--otlp-traces-endpoint", default=None, metavar="URL", help="Export a vLLM-like span per request (queue, prefill, decode, TTFT, E2E) to this OTLP/HTTP collector, e.g. the one 'run --server-spans' starts: http://127.0.0.1:4318/v1/traces.")
@click.option("--num-gpu-blocks", type=int, default=None,
              help="KV cache blocks per replica as vLLM counts them (its null block included; vLLM's "
                   "--num-gpu-blocks-override) instead of sizing the cache from memory: small to see preemption.")
def serve(host, port, time_scale, api_key, served_model_name, max_concurrent, max_request_bytes, output_len, reasoning_share, seed, fault_error_rate, fault_error_codes, fault_retry_after, fault_slow_first_byte_rate, fault_slow_first_byte_s, fault_stall_rate, fault_stall_s, fault_disconnect_rate, fault_malformed_rate, fault_stream_error_rate, fault_seed, header_timeout, body_timeout, max_connections, otlp_traces_endpoint, num_gpu_blocks, **engine):  # type: ignore[no-untyped-def]
    """Serve the reference engine over an OpenAI-compatible HTTP API.

    \b
    Example:
      burstbench serve --model llama-3.1-8b --hardware h100-sxm --port 8000
      curl -s localhost:8000/v1/completions -d '{"prompt": "hello there", "max_tokens": 5}'
    """
    import asyncio

    from burstbench.backends.reference.faults import FaultConfig, parse_codes
    from burstbench.backends.reference.server import ServeConfig, serve_forever
    from burstbench.backends.reference.tokens import OutputLengths

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: the server is reachable from other machines", err=True)
    # an empty key (flag or variable) is refused by ServeConfig, not taken as "no key"
    key = api_key if api_key is not None else os.environ.get("BURSTBENCH_API_KEY")
    faults = FaultConfig(
        error_rate=fault_error_rate,
        error_codes=parse_codes(fault_error_codes),
        retry_after_s=fault_retry_after,
        slow_first_byte_rate=fault_slow_first_byte_rate,
        slow_first_byte_s=fault_slow_first_byte_s,
        stall_rate=fault_stall_rate,
        stall_s=fault_stall_s,
        disconnect_rate=fault_disconnect_rate,
        malformed_rate=fault_malformed_rate,
        stream_error_rate=fault_stream_error_rate,
        seed=fault_seed,
    )
    if port < 0 or port > 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if num_gpu_blocks is not None and num_gpu_blocks < 2:
        raise UsageError(f"--num-gpu-blocks must be at least 2 (one is reserved), got {num_gpu_blocks}")
    cfg = ServeConfig(
        num_blocks=num_gpu_blocks,
        **_engine_kwargs(engine),
        host=host,
        port=port,
        time_scale=time_scale,
        api_key=key,
        served_model_name=served_model_name,
        max_request_bytes=max_request_bytes,
        max_concurrent=max_concurrent,
        output_lengths=OutputLengths.parse(output_len),
        reasoning_share=reasoning_share,
        seed=seed,
        faults=faults,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        otlp_traces_endpoint=otlp_traces_endpoint,
    )

    def ready(srv):  # type: ignore[no-untyped-def]
        app = srv.app
        click.echo(
            f"serving {app.name} on {app.hardware.name} (tp={engine['tp']}, replicas={engine['replicas']}, "
            f"{app.num_blocks - 1} KV blocks each, time scale {time_scale}) at {srv.url}"
            + (" (API key required)" if key else ""),
            err=True,
        )
        # one line on stdout a wrapper script can wait for
        emit_json({"url": srv.url})
        sys.stdout.flush()

    try:
        asyncio.run(serve_forever(cfg, on_ready=ready))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    click.echo("stopped", err=True)
