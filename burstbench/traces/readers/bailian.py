"""Qwen-Bailian traces (Alibaba Bailian, e.g. ``qwen_traceA_blksz_16.jsonl``): JSON Lines.

Records hold ``chat_id``, ``parent_chat_id`` (-1 for a conversation's first request),
``timestamp`` (seconds), ``turn``, ``input_length``, ``output_length``, ``type`` (the
request class, used as tenant) and ``hash_ids`` over 16-token blocks. A session is the
root of the parent chain, found by pointer jumping in polars (log-depth joins rather
than a Python walk); a parent missing from the file ends the chain where it breaks.
"""

from __future__ import annotations

import polars as pl

from burstbench.traces.readers.plan import Field, Plan
from burstbench.traces.readers.source import Source

NAME = "bailian"
KIND = "jsonl"
BLOCK_SIZE = 16
SIGNATURE = ("chat_id", "parent_chat_id", "timestamp", "input_length", "output_length")


def matches(src: Source) -> bool:
    rec = src.first_record or {}
    return src.kind == "jsonl" and all(k in rec for k in SIGNATURE)


def plan(src: Source) -> Plan:
    return Plan(
        NAME,
        "Qwen-Bailian (16-token blocks)",
        [
            Field("_t", "timestamp", "time", unit="s"),
            Field("input_tokens", "input_length", "count"),
            Field("output_tokens", "output_length", "count"),
            Field("_chat_id", "chat_id", "int"),
            Field("_parent", "parent_chat_id", "int"),
            Field("turn", "turn", "int", required=False),
            Field("tenant", "type", "str", required=False),
            Field("prefix_hashes", "hash_ids", "hashes", required=False),
        ],
        block_size=BLOCK_SIZE,
    )


def finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    root, orphans = session_roots(df["_chat_id"], df["_parent"])
    if orphans:
        plan.notes.append(
            f"{orphans} request(s) name a parent_chat_id absent from the file; "
            "their session starts at the earliest ancestor present"
        )
    df = df.with_columns(root.cast(pl.String).alias("session_id"))
    if "turn" not in df.columns:
        from burstbench.traces.readers.burstgpt import number_turns

        df = number_turns(df)
    return df.drop("_chat_id", "_parent")


def session_roots(chat: pl.Series, parent: pl.Series) -> tuple[pl.Series, int]:
    """Root chat id of every request, and how many chains end at a missing parent."""
    known = pl.DataFrame({"id": chat, "up": parent}).unique("id", keep="first")
    ids = known["id"]
    # A parent of -1 (or any id not in the file) makes the request its own root.
    up = known.with_columns(
        pl.when(pl.col("up").is_in(ids.implode()) & (pl.col("up") != pl.col("id")))
        .then(pl.col("up"))
        .otherwise(pl.col("id"))
        .alias("up")
    )
    orphans = int(((parent != -1) & ~parent.is_in(ids.implode()) & parent.is_not_null()).sum())
    for _ in range(64):  # pointer jumping: depth halves each round, 64 rounds covers 2^64
        nxt = up.join(up.rename({"id": "up", "up": "up2"}), on="up", how="left").with_columns(
            pl.coalesce("up2", "up").alias("up2")
        )
        if (nxt["up2"] == nxt["up"]).all():
            break
        up = nxt.select("id", pl.col("up2").alias("up"))
    root = pl.DataFrame({"id": chat}).join(up, on="id", how="left", maintain_order="left")["up"]
    return root, orphans
