"""``burstbench trace ...``: thin click commands over the traces library."""

from __future__ import annotations

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

# --- stats / fit / synth (owned by the analytics work) ---------------------------------
