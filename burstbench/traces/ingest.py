"""Turn a raw trace file (BurstGPT, Azure, Mooncake, Bailian, OpenAI logs, any CSV/JSONL)
into a Trace: detect the format, read it streaming, rebase and sort the arrivals, and
record in the metadata everything that was detected or cleaned.

``ingest`` returns the Trace; ``ingest_file`` also writes it to Parquet atomically.
``load_trace`` in ``schema.py`` calls ``ingest(path, fmt=fmt, **options)`` so every
command that takes a trace accepts raw files too.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from burstbench import __version__
from burstbench.errors import InputError, TraceFormatError, UsageError
from burstbench.infile import check_input
from burstbench.limits import MAX_SPAN_S, YEAR_S
from burstbench.traces.readers import FORMATS, azure, bailian, burstgpt, generic, mooncake
from burstbench.traces.readers.csvread import read_csv
from burstbench.traces.readers.jsonread import read_jsonl
from burstbench.traces.readers.plan import UNIT_SECONDS, Plan
from burstbench.traces.readers.source import Source, is_gzip, open_source
from burstbench.traces.readers.timecols import human_seconds, rebase, tied_share, unit_warnings
from burstbench.traces.schema import Trace, conform, write_trace

Finish = Callable[[pl.DataFrame, Plan], pl.DataFrame]
_NAMED = {m.NAME: m for m in (burstgpt, azure, mooncake, bailian)}


def detect_format(src: Source) -> str:
    """The format name whose signature the file's header (or first record) carries."""
    for mod in (burstgpt, azure, bailian, mooncake):
        if mod.matches(src):
            return mod.NAME
    if generic.openai_prefix(src) is not None:
        return "openai"
    _near_miss(src)
    if src.kind == "csv":
        raise src.error(
            f"no known trace format has the columns {', '.join(src.header)}; name them with "
            "--map arrival=COL[:unit],input=COL,output=COL (see `trace ingest --help`)",
            line=1,
        )
    keys = ", ".join(sorted(src.first_record or {}))
    raise src.error(
        f"no known trace format has the keys {keys}; name them with "
        "--map arrival=KEY[:unit],input=KEY,output=KEY (dotted paths reach nested keys)",
        line=src.first_record_line,
    )


def _near_miss(src: Source) -> None:
    """A file that carries most of a format's signature lacks the rest: say which column."""
    have = set(src.header) if src.kind == "csv" else set(src.first_record or {})
    for mod in (burstgpt, azure, bailian, mooncake):
        if src.kind != mod.KIND:
            continue
        missing = [c for c in mod.SIGNATURE if c not in have]
        if 0 < len(missing) <= len(mod.SIGNATURE) // 2:
            line = 1 if src.kind == "csv" else src.first_record_line
            raise src.error(
                f"looks like a {mod.NAME} file but lacks {', '.join(repr(c) for c in missing)}; "
                "the file may be cut or re-exported with other names: restore the column, or "
                "name the columns with --map",
                line=line,
                field=missing[0],
            )


def _plan_for(src: Source, fmt: str | None, mapping: Any) -> tuple[Plan, Finish]:
    pairs = generic.parse_map(mapping)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    if pairs:
        if fmt not in (None, "csv", "jsonl"):
            raise UsageError(f"--map works with --format csv or jsonl, not {fmt}; drop one of them")
        if fmt is not None and fmt != src.kind:
            raise src.error(f"--format {fmt} given, but the file is {src.kind.upper()}", line=1)
        return generic.mapped_plan(src, pairs), generic.mapped_finish
    if fmt in ("csv", "jsonl"):
        raise UsageError(f"--format {fmt} needs --map arrival=COL[:unit],input=COL,output=COL")
    name = fmt or detect_format(src)
    if name == "openai":
        return generic.openai_plan(src), generic.openai_finish
    mod = _NAMED[name]
    if src.kind != mod.KIND:
        raise src.error(f"--format {name} expects {mod.KIND.upper()}, but the file is {src.kind.upper()}", line=1)
    return mod.plan(src), mod.finish


def ingest(
    path: str | Path,
    fmt: str | None = None,
    *,
    mapping: str | Mapping[str, str] | None = None,
    skip_bad: bool = False,
    **unknown: Any,
) -> Trace:
    """Read a raw trace file into a Trace (arrivals from 0 s, sorted, metadata filled in).

    ``fmt`` forces a format (see ``FORMATS``), ``mapping`` names columns for generic
    CSV/JSONL (``"arrival=ts:ms,input=n_in,output=n_out"`` or a dict), and ``skip_bad``
    drops malformed rows (counted per reason in the metadata) instead of raising.
    """
    if unknown:
        raise UsageError(f"unknown ingest option(s): {', '.join(sorted(unknown))}")
    path = Path(path)
    with _plain_copy(path) as readable:
        src = open_source(readable, shown=path if readable != path else None)
        return _ingest_source(src, path, fmt, mapping, skip_bad, compressed=readable != path)


@contextmanager
def _plain_copy(path: Path) -> Iterator[Path]:
    """``path`` itself, or a decompressed temporary copy of a gzip file (deleted after).

    Polars scans plain files lazily but not compressed ones, and the Azure 2025 trace
    ships as ``.csv.gz``; one C-speed decompression pass keeps every reader unchanged.
    """
    if not is_gzip(path):
        yield path
        return
    suffix = "".join(path.suffixes[:-1]) or ".txt"
    fd, tmp = tempfile.mkstemp(prefix="burstbench-ingest-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TraceFormatError(
            f"gzip stream is corrupt or cut short ({exc}); fetch the file again", path=path
        ) from exc
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(
            f"cannot decompress into {Path(tmp).parent} ({exc.strerror or exc}); free space "
            "there, point TMPDIR elsewhere, or gunzip the file yourself",
            path=path,
        ) from exc
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _ingest_source(
    src: Source, path: Path, fmt: str | None, mapping: Any, skip_bad: bool, *, compressed: bool
) -> Trace:
    started = time.perf_counter()
    plan, finish = _plan_for(src, fmt, mapping)
    reader = read_csv if src.kind == "csv" else read_jsonl
    result = reader(src, plan, skip_bad=skip_bad)
    df = result.df
    unit = plan.time.unit or "s"
    if unit == "epoch":
        unit = generic.resolve_epoch(df, plan)
    unit_for_rebase = "s" if unit == "iso8601" else unit
    _check_span(src, df, unit_for_rebase, plan)
    df, tinfo = rebase(df, "_t", unit_for_rebase)
    try:
        df = finish(df, plan)
        if "failed" in df.columns:
            df = df.with_columns(pl.col("failed").fill_null(False))
        df = conform(df)
    except pl.exceptions.PolarsError as exc:  # a value that parsed but does not fit the schema
        raise TraceFormatError(f"cannot build the trace ({exc})", path=path) from exc
    span = float(df["arrival_s"].max() or 0.0)
    tinfo.warnings += unit_warnings(span, df.height, tinfo.unit, plan.unit_source, tinfo.raw_median)
    meta = {
        "source_format": plan.fmt,
        "source_variant": plan.variant,
        "source_file": str(path.resolve()),
        "source_bytes": path.stat().st_size,
        "source_compression": "gzip" if compressed else None,
        "columns": {
            ("arrival_s" if f.target == "_t" else f.target): f.source
            for f in result.fields
            if f.target == "_t" or not f.target.startswith("_")
        },
        "timestamp_unit": tinfo.unit,
        "timestamp_unit_source": plan.unit_source,
        "timestamp_resolution_s": tinfo.resolution_s,
        "timestamp_resolution": human_seconds(tinfo.resolution_s),
        "timestamp_written_precision": plan.written_precision,
        "time_origin": tinfo.origin,
        "tied_share": tied_share(df["arrival_s"]),
        # Block size only means something when the hashes were there to read.
        "block_size": plan.block_size if any(f.kind == "hashes" for f in result.fields) else None,
        "rows_read": result.rows_read,
        "rows_kept": df.height,
        "rows_dropped": dict(sorted(result.dropped.items())),
        "skip_bad": skip_bad,
        "span_s": span,
        "notes": plan.notes,
        "warnings": tinfo.warnings,
        "ingested_by": f"burstbench {__version__}",
        "ingest_seconds": round(time.perf_counter() - started, 3),
    }
    return Trace(df, meta)


def _check_span(src: Source, df: pl.DataFrame, unit: str, plan: Plan) -> None:
    """Refuse arrivals spanning more than ``MAX_SPAN_S``, naming the two rows at the ends.

    Checked on the raw values (in float, which cannot overflow) before the rebase
    subtracts them in Int64; the span sizes every per-window array downstream.
    """
    t = df["_t"]
    vals = t.dt.epoch("ns") if t.dtype == pl.Datetime else t
    scale = 1e-9 if t.dtype == pl.Datetime else UNIT_SECONDS.get(unit, 1.0)
    low, high = vals.min(), vals.max()  # reductions; the rows are looked up only to word an error
    if low is None or high is None:
        return
    span = (float(high) - float(low)) * scale  # type: ignore[arg-type]
    if span > MAX_SPAN_S:
        lo, hi = vals.arg_min(), vals.arg_max()
        assert lo is not None and hi is not None
        shown = "datetime" if t.dtype == pl.Datetime else unit
        raise src.error(
            f"arrivals span {span / YEAR_S:,.3g} years (data row {hi + 1} is at {t[hi]} {shown}, data row "
            f"{lo + 1} at {t[lo]}), over the limit of {MAX_SPAN_S / YEAR_S:.0f} years: the column is in a "
            f"finer unit than {shown} (re-ingest with --map arrival=COL:ms, us or ns) or a row is corrupt",
            field=plan.time.source,
        )


def ingest_file(
    path: str | Path,
    output: str | Path,
    fmt: str | None = None,
    *,
    mapping: str | Mapping[str, str] | None = None,
    skip_bad: bool = False,
) -> Trace:
    """``ingest`` then ``write_trace`` (atomic: a failure leaves no partial output)."""
    from burstbench.outfile import check_output

    check_input(path)  # a symlink loop makes resolve() raise RuntimeError
    out = check_output(output, kind=None, inputs=[path])  # also through links (the CLI checks the kind)
    trace = ingest(path, fmt, mapping=mapping, skip_bad=skip_bad)
    try:
        write_trace(trace, out)
    except OSError as exc:
        raise InputError(f"cannot write the trace ({exc.strerror or exc})", path=out) from exc
    return trace


def summary(trace: Trace) -> dict[str, Any]:
    """The printed/--json summary: counts, span, clock facts and what was dropped."""
    m = trace.meta
    return {
        "rows": len(trace),
        "rows_read": m.get("rows_read"),
        "rows_dropped": m.get("rows_dropped", {}),
        "span_s": m.get("span_s"),
        "source_format": m.get("source_format"),
        "source_variant": m.get("source_variant"),
        "source_file": m.get("source_file"),
        "timestamp_unit": m.get("timestamp_unit"),
        "timestamp_unit_source": m.get("timestamp_unit_source"),
        "timestamp_resolution": m.get("timestamp_resolution"),
        "timestamp_resolution_s": m.get("timestamp_resolution_s"),
        "timestamp_written_precision": m.get("timestamp_written_precision"),
        "tied_share": m.get("tied_share"),
        "block_size": m.get("block_size"),
        "failed": int(trace.df["failed"].sum()),
        "sessions": int(trace.df["session_id"].n_unique() - (1 if trace.df["session_id"].null_count() else 0)),
        "notes": m.get("notes", []),
        "warnings": m.get("warnings", []),
    }
