"""Mooncake traces (kvcache-ai/Mooncake, FAST'25): JSON Lines.

Each record holds ``timestamp`` (milliseconds from the trace start), ``input_length``,
``output_length`` and ``hash_ids``: the ids of the prompt's 512-token blocks, equal ids
meaning a shared prefix. They become ``prefix_hashes``; the block size goes into the
metadata because the hashes mean nothing without it.
"""

from __future__ import annotations

import polars as pl

from burstbench.traces.readers.plan import Field, Plan
from burstbench.traces.readers.source import Source

NAME = "mooncake"
KIND = "jsonl"
BLOCK_SIZE = 512
SIGNATURE = ("timestamp", "input_length", "output_length")  # hash_ids optional


def matches(src: Source) -> bool:
    rec = src.first_record or {}
    return src.kind == "jsonl" and all(k in rec for k in SIGNATURE) and "chat_id" not in rec


def plan(src: Source) -> Plan:
    return Plan(
        NAME,
        "FAST'25 trace",
        [
            Field("_t", "timestamp", "time", unit="ms"),
            Field("input_tokens", "input_length", "count"),
            Field("output_tokens", "output_length", "count"),
            Field("prefix_hashes", "hash_ids", "hashes", required=False),
        ],
        block_size=BLOCK_SIZE,
    )


def finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    return df
