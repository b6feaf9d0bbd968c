"""``burstbench trace ...``: thin click commands over the traces library."""

from __future__ import annotations

from typing import Any

import click


@click.group()
def trace() -> None:
    """Ingest, characterise, fit and synthesise workload traces.

    \b
    Example:
      burstbench trace ingest burstbench/data/traces/burstgpt_v1_head400.csv -o t.parquet
      burstbench trace stats t.parquet --window 300
    """


# --- ingest (owned by the ingest work) -------------------------------------------------

INGEST_FORMATS = ("burstgpt", "azure", "mooncake", "bailian", "openai", "csv", "jsonl")


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
def ingest_cmd(src: str, output: str, fmt: str | None, mapping: tuple[str, ...], skip_bad: bool, as_json: bool) -> None:
    """Convert a raw trace (BurstGPT, Azure, Mooncake, Bailian, OpenAI logs, any CSV/JSONL)
    into a Parquet Trace: arrivals rebased to 0 s and sorted, metadata recording the
    source, timestamp unit and resolution, tied arrivals and dropped rows.

    \b
    Examples:
      burstbench trace ingest burstbench/data/traces/burstgpt_v1_head400.csv -o t.parquet
      burstbench trace ingest requests.jsonl -o t.parquet \\
          --map arrival=ts:ms,input=usage.prompt_tokens,output=usage.completion_tokens
      burstbench trace ingest BurstGPT_1.csv -o t.parquet --skip-bad --json
    """
    import json

    from rich.console import Console

    from burstbench.traces.ingest import ingest_file, summary

    err = Console(stderr=True)
    with err.status(f"ingesting {src}", spinner="dots"):
        result = ingest_file(src, output, fmt, mapping=",".join(mapping) or None, skip_bad=skip_bad)
    info = summary(result) | {"output": str(output)}
    _print_ingest_summary(err, info)
    if as_json:
        click.echo(json.dumps(info, default=str))


def _print_ingest_summary(console: Any, info: dict[str, Any]) -> None:
    dropped = info["rows_dropped"]
    lines = [
        f"[bold]{info['rows']:,}[/] requests from {info['source_format']} ({info['source_variant']}) "
        f"-> {info['output']}",
        f"  span {info['span_s']:,.3f} s; timestamps in {info['timestamp_unit']} "
        f"({info['timestamp_unit_source']}), resolution {info['timestamp_resolution']}"
        + (
            f" (written to {info['timestamp_written_precision']})"
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
    lines += [f"  [yellow]warning:[/] {w}" for w in info["warnings"]]
    for line in lines:
        console.print(line, highlight=False, markup=True, soft_wrap=True)


# --- stats / fit / synth (owned by the analytics work) ---------------------------------
