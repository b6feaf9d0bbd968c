"""Azure LLM inference traces (Azure/AzurePublicDataset), 2023, 2024 and 2025.

2023 (``AzureLLMInferenceTrace_{conv,code}.csv``) and 2024 (``..._1week.csv``) hold
``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock timestamps carrying seven
fractional digits (100 ns); they are parsed exactly at nanosecond precision. The 2025
multimodal file (``AzureLMMInferenceTrace_multimodal.csv``) adds ``NumImages``, which is
kept as an extra ``num_images`` column.
"""

from __future__ import annotations

import polars as pl

from burstbench.traces.readers.plan import Field, Plan
from burstbench.traces.readers.source import Source, first_csv_value
from burstbench.traces.readers.timecols import iso_format, written_precision

NAME = "azure"
KIND = "csv"
SIGNATURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def matches(src: Source) -> bool:
    return src.kind == "csv" and all(c in src.header for c in SIGNATURE)


def plan(src: Source) -> Plan:
    if "TIMESTAMP" not in src.header:  # --format azure forced on another CSV
        raise src.error("no TIMESTAMP column; an Azure LLM trace starts with TIMESTAMP,ContextTokens,"
                        "GeneratedTokens (check --format)", line=1, field="TIMESTAMP")
    sample = first_csv_value(src, "TIMESTAMP")
    found = iso_format(sample) if sample is not None else None
    if found is None:
        raise src.error(
            f"value {sample!r} is not a wall-clock timestamp like '2023-11-16 18:15:46.6805900'",
            line=2,
            field="TIMESTAMP",
        )
    fmt, tz = found
    multimodal = "NumImages" in src.header
    fields = [
        Field("_t", "TIMESTAMP", "time", unit="iso8601", time_format=fmt, time_zone=tz),
        Field("input_tokens", "ContextTokens", "count"),
        Field("output_tokens", "GeneratedTokens", "count"),
    ]
    if multimodal:
        fields.append(Field("num_images", "NumImages", "count"))
    variant = "2025 multimodal (NumImages)" if multimodal else "2023/2024 (text)"
    return Plan(NAME, variant, fields, written_precision=written_precision(sample))


def finish(df: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    return df
