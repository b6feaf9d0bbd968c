"""The Trace contract (DESIGN section 3): one row per request, sorted by ``arrival_s``.

A Trace is a Polars DataFrame with the columns below plus a metadata dict that
travels in the Parquet file's key-value metadata under ``burstbench``. Readers
never guess silently: what they detected (unit, resolution) and what they
cleaned (rows dropped and why) goes into that dict, and ``write_trace`` writes
it atomically (temporary name, then rename) so a failed write leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from burstbench.errors import InputError
from burstbench.infile import check_input
from burstbench.limits import MAX_SPAN_S, MAX_TOKENS, YEAR_S

TRACE_SCHEMA: dict[str, pl.DataType] = {
    "arrival_s": pl.Float64(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "model": pl.String(),
    "session_id": pl.String(),
    "turn": pl.Int32(),
    "tenant": pl.String(),
    "failed": pl.Boolean(),
    "prefix_hashes": pl.List(pl.UInt64()),
    "prompt": pl.String(),
}
REQUIRED_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
METADATA_KEY = "burstbench"


@dataclass
class Trace:
    """A trace frame and what is known about where it came from."""

    df: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.df.height

    @property
    def duration_s(self) -> float:
        return float(self.df["arrival_s"].max() or 0.0) if self.df.height else 0.0


def conform(df: pl.DataFrame, *, keep_extra: bool = True) -> pl.DataFrame:
    """Cast to the Trace schema, add missing optional columns as nulls, sort by arrival.

    Columns outside the schema (e.g. Azure 2025's ``NumImages``) are kept after the
    standard ones when ``keep_extra`` is set, so no information is lost.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"trace lacks required column(s) {', '.join(missing)}")
    exprs = []
    for name, dtype in TRACE_SCHEMA.items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype))
        elif name == "failed":
            exprs.append(pl.lit(False).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [pl.col(c) for c in df.columns if c not in TRACE_SCHEMA] if keep_extra else []
    out = df.select(exprs + extra).sort("arrival_s", maintain_order=True)
    check_bounds(out)
    return out


def check_bounds(df: pl.DataFrame) -> None:
    """Refuse a trace whose values would size memory beyond any real workload.

    Every trace passes here (ingest, Parquet, synth), so a token count of 2^63-1 or
    a span of 54 years stops at the row that carries it, before ``run`` builds the
    prompt or ``stats``/``plan`` build per-second arrays over the span. The readers
    check the same limits per line first, so a raw log's error names its line.
    """
    for col in ("input_tokens", "output_tokens"):
        top = df[col].max()  # a reduction: no mask over millions of rows on the clean path
        if top is not None and top > MAX_TOKENS:  # type: ignore[operator]
            i = int((df[col] > MAX_TOKENS).arg_true()[0])
            raise InputError(
                f"row {i + 1} (by arrival) has {df[col][i]:,} tokens, over the limit of {MAX_TOKENS:,} "
                "per request; the column is wrong or the value corrupt: fix or drop that row",
                field=col,
            )
    if df.height:
        t = df["arrival_s"]
        lo, hi = t.min(), t.max()
        if lo is not None and hi is not None and not hi - lo <= MAX_SPAN_S:  # type: ignore[operator]
            raise InputError(
                f"arrivals span {(hi - lo) / YEAR_S:.3g} years (row {df.height} by arrival is at "  # type: ignore[operator]
                f"{hi:.6g} s, row 1 at {lo:.6g} s), over the limit of {MAX_SPAN_S / YEAR_S:.0f} years; "
                "the time column is probably in a finer unit (ms, us, ns) or holds a corrupt value",
                field="arrival_s",
            )


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write a Trace to Parquet with its metadata, atomically.

    Polars' native writer (multi-threaded, zstd level 1) is about 1.5x faster than
    pyarrow's here, which matters at BurstGPT's millions of rows; pyarrow stays the
    fallback for a polars too old to take key-value ``metadata``.
    """
    from burstbench.outfile import atomic_path

    path = Path(path)
    meta_json = json.dumps(trace.meta, default=str)
    with atomic_path(path) as tmp:
        try:
            trace.df.write_parquet(tmp, compression="zstd", compression_level=1,
                                   metadata={METADATA_KEY: meta_json})
        except TypeError:  # polars < 1.17: no key-value metadata
            import pyarrow.parquet as pq

            table = trace.df.to_arrow()
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), METADATA_KEY.encode(): meta_json.encode()}
            )
            pq.write_table(table, tmp, compression="zstd")
    return path


def read_trace(path: str | Path) -> Trace:
    """Read a Trace written by ``write_trace`` (or any Parquet with the required columns)."""
    import pyarrow.parquet as pq

    path = check_input(path)
    try:
        pf = pq.ParquetFile(path)
        raw = (pf.metadata.metadata or {}).get(METADATA_KEY.encode())
        df = pl.read_parquet(path, glob=False)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from exc
    meta: dict[str, Any] = json.loads(raw) if raw else {}
    try:
        return Trace(conform(df), meta)
    except InputError as exc:
        raise InputError(str(exc), path=path) from exc


def load_trace(path: str | Path, *, fmt: str | None = None, options: Mapping[str, Any] | None = None) -> Trace:
    """A Trace from a Parquet trace or, through the readers, any supported raw log.

    Commands that take a trace (``stats``, ``fit``, ``run``, ``simulate``) accept
    both, so a user can point them straight at a BurstGPT CSV.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return read_trace(path)
    from burstbench.traces.ingest import ingest

    return ingest(path, fmt=fmt, **dict(options or {}))
