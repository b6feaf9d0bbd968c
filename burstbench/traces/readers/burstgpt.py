"""BurstGPT (HPMLL/BurstGPT) CSV logs, release files ``BurstGPT_1/_2`` and ``_3``.

Columns are found by name, not position: the 6-column files hold ``Timestamp, Model,
Request tokens, Response tokens, Total tokens, Log Type``; the 8-column ``_3`` file adds
``Session ID`` and ``Elapsed time`` after ``Timestamp``. Timestamps are seconds at 1 s
resolution. The dataset marks a failed request by ``Response tokens == 0``; ``Log Type``
(conversation vs API log) is the tenant; ``Session ID`` (empty on API rows) groups the
turns of a conversation, numbered here by arrival.
"""

from __future__ import annotations

import polars as pl

from burstbench.traces.readers.plan import Field, Plan
from burstbench.traces.readers.source import Source

NAME = "burstgpt"
KIND = "csv"
SIGNATURE = ("Timestamp", "Request tokens", "Response tokens")


def matches(src: Source) -> bool:
    return src.kind == "csv" and all(c in src.header for c in SIGNATURE)


def plan(src: Source) -> Plan:
    sessions = "Session ID" in src.header
    variant = "v3 (8 columns, sessions)" if sessions else "v1/v2 (6 columns)"
    return Plan(
        NAME,
        variant,
        [
            Field("_t", "Timestamp", "time", unit="s"),
            Field("input_tokens", "Request tokens", "count"),
            Field("output_tokens", "Response tokens", "count"),
            Field("model", "Model", "str", required=False),
            Field("tenant", "Log Type", "str", required=False),
            Field("session_id", "Session ID", "str", required=False),
            Field("elapsed_time", "Elapsed time", "float", required=False),
        ],
        notes=["failed = (Response tokens == 0), as the BurstGPT dataset defines it"],
    )


def finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    df = df.with_columns((pl.col("output_tokens") == 0).alias("failed"))
    if "session_id" in df.columns:
        df = df.with_columns(pl.col("session_id").str.strip_chars().replace("", None))
        df = number_turns(df)
    return df


def number_turns(df: pl.DataFrame) -> pl.DataFrame:
    """``turn`` = 1-based position by arrival within each session (null without a session).

    Expects ``df`` sorted by arrival; ties keep file order.
    """
    turn = pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("session_id")
    return df.with_columns(pl.when(pl.col("session_id").is_not_null()).then(turn).alias("turn"))
