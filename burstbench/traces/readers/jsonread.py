"""Execute a Plan over a JSON Lines file.

Fast path: ``polars.scan_ndjson`` with projection of just the planned fields (nested
keys through struct fields), strict casts, then a vectorised check for empty or
negative values. If that fails, the slow path cuts the file into ~4 MiB chunks of
whole lines and retries polars on each; only a chunk polars rejects is walked line by
line with the ``json`` module, which builds Python objects per line -- the price of
naming the exact line of a malformed record, paid for that chunk only.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from burstbench.limits import MAX_TIMESTAMP, MAX_TOKENS
from burstbench.traces.readers.csvread import ReadResult
from burstbench.traces.readers.plan import REASONS, TRUE_WORDS, Field, Plan, value_checks
from burstbench.traces.readers.source import Source

INFER_ROWS = 1000
_ABSENT = object()


def lookup(obj: Any, path: tuple[str, ...]) -> Any:
    """``obj[a][b]...`` for a dotted path, or ``_ABSENT`` when a key is missing."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _ABSENT
        obj = obj[key]
    return obj


def has_path(obj: Any, dotted: str) -> bool:
    return lookup(obj, tuple(dotted.split("."))) is not _ABSENT


def resolve_fields(src: Source, plan: Plan) -> list[Field]:
    """Fields present in the first record; a missing required key is an error at that line."""
    fields = []
    for f in plan.fields:
        if lookup(src.first_record, f.path) is not _ABSENT:
            fields.append(f)
        elif f.required:
            keys = ", ".join(sorted(src.first_record or {}))
            advice = (
                "check the key given in --map (dotted paths reach nested keys)"
                if plan.fmt == "jsonl"
                else f"this does not look like a {plan.fmt} file; pick another --format or "
                "name the keys with --map"
            )
            raise src.error(
                f"key '{f.source}' not found (the record has: {keys}); {advice}",
                line=src.first_record_line,
                field=f.source,
            )
    return fields


def read_jsonl(src: Source, plan: Plan, *, skip_bad: bool) -> ReadResult:
    fields = resolve_fields(src, plan)
    # scan_ndjson expands glob characters in the path and has no switch to stop it:
    # a file named 'runs[1].jsonl' goes straight to the chunked path, which opens it itself
    literal = not any(c in str(src.path) for c in "*?[")
    if literal and (src.ends_with_newline or _last_line_is_json(src)):
        try:
            return _fast(src, fields)
        except _NeedsSlowPath:
            pass
    return _slow(src, fields, skip_bad=skip_bad)


class _NeedsSlowPath(Exception):
    pass


def _last_line_is_json(src: Source) -> bool:
    """A file may lack its final newline; only a last line that fails to parse is cut."""
    with src.path.open("rb") as fh:
        fh.seek(max(0, src.size - (1 << 20)))
        last = fh.read().rsplit(b"\n", 1)[-1]
    try:
        json.loads(last)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return False
    return True


def _fast_expr(f: Field, schema: pl.Schema) -> pl.Expr:
    head, *rest = f.path
    expr = pl.col(head)
    dtype = schema.get(head)
    for key in rest:
        if not isinstance(dtype, pl.Struct) or key not in {fl.name for fl in dtype.fields}:
            raise _NeedsSlowPath(f"{f.source} is not a nested key in every record")
        dtype = dict((fl.name, fl.dtype) for fl in dtype.fields)[key]
        expr = expr.struct.field(key)
    assert dtype is not None
    if f.kind in ("count", "int") or (f.kind == "time" and f.unit in ("us", "ns")):
        if not dtype.is_integer():
            raise _NeedsSlowPath(f"{f.source} is {dtype}")
        return expr.cast(pl.Int64, strict=True)
    if f.kind == "float" or (f.kind == "time" and f.unit != "iso8601"):
        if not dtype.is_numeric():
            raise _NeedsSlowPath(f"{f.source} is {dtype}")
        return expr.cast(pl.Float64, strict=True)
    if f.kind == "time":
        if dtype != pl.String:
            raise _NeedsSlowPath(f"{f.source} is {dtype}")
        return expr.str.to_datetime(f.time_format, time_unit="ns", time_zone=f.time_zone, strict=True)
    if f.kind == "hashes":
        if not (isinstance(dtype, pl.List) and (dtype.inner.is_integer() or dtype.inner == pl.Null)):
            raise _NeedsSlowPath(f"{f.source} is {dtype}")
        return expr.cast(pl.List(pl.UInt64), strict=True)
    if f.kind == "bool":
        if dtype != pl.Boolean:
            raise _NeedsSlowPath(f"{f.source} is {dtype}")
        return expr
    if isinstance(dtype, pl.Struct):
        # e.g. an OpenAI "error" object: keep it as JSON text (json_encode turns null into "null")
        return pl.when(expr.is_null()).then(pl.lit(None, pl.String)).otherwise(expr.struct.json_encode())
    if dtype not in (pl.String, pl.Null) and not dtype.is_numeric():
        raise _NeedsSlowPath(f"{f.source} is {dtype}")
    return expr.cast(pl.String, strict=True)


def _fast(src: Source, fields: list[Field]) -> ReadResult:
    try:
        lf = pl.scan_ndjson(src.path, infer_schema_length=INFER_ROWS)
        schema = lf.collect_schema()
        exprs = [_fast_expr(f, schema).alias(f.target) for f in fields]
        df = lf.select(exprs).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise _NeedsSlowPath(str(exc).split("\n", 1)[0]) from exc
    if df.height == 0 or _has_bad_values(df, fields):
        raise _NeedsSlowPath("empty or negative values")
    return ReadResult(df, df.height, {}, fields)


def _check(f: Field, value: Any) -> tuple[Any, str | None]:
    """(parsed value, reason) for one field of one record."""
    try:
        return _check_value(f, value)
    except (OverflowError, ValueError):  # e.g. a 400-digit integer where a float belongs
        return None, "non_numeric"


def _check_value(f: Field, value: Any) -> tuple[Any, str | None]:
    if value is _ABSENT or value is None:
        return None, ("missing_value" if f.required else None)
    if f.kind in ("count", "int") or (f.kind == "time" and f.unit in ("us", "ns")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "non_numeric"
        if isinstance(value, float):
            if not math.isfinite(value):
                return None, "non_numeric"
            if value != math.floor(value):
                return None, "non_integer"
            value = int(value)
        if f.kind == "count" and value < 0:
            return None, "negative"
        if f.kind == "count" and value > MAX_TOKENS:
            return None, "too_large"
        if f.kind == "time" and abs(value) > MAX_TIMESTAMP:
            return None, "out_of_range"
        if not -(2**63) <= value < 2**63:
            return None, "non_numeric"
        return value, None
    if f.kind == "float" or (f.kind == "time" and f.unit != "iso8601"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None, "non_numeric"
        if f.kind == "time" and abs(value) > MAX_TIMESTAMP:
            return None, "out_of_range"
        return float(value), None
    if f.kind == "time":
        return (value, None) if isinstance(value, str) else (None, "bad_timestamp")
    if f.kind == "hashes":
        ok = isinstance(value, list) and all(
            isinstance(h, int) and not isinstance(h, bool) and 0 <= h < 2**64 for h in value
        )
        return (value, None) if ok else (None, "bad_hashes")
    if f.kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int) and value in (0, 1):
            return bool(value), None
        if isinstance(value, str) and value.strip().lower() in (*TRUE_WORDS, "false", "f", "no", "n", "0"):
            return value.strip().lower() in TRUE_WORDS, None
        return None, "not_boolean"
    return (value if isinstance(value, str) else json.dumps(value)), None


def _slow(src: Source, fields: list[Field], *, skip_bad: bool) -> ReadResult:
    """Chunk the file on line boundaries; only chunks polars rejects are walked in Python.

    One broken line in a 20-million-line trace then costs one chunk of ``json.loads``
    calls, not the whole file.
    """
    parts: list[pl.DataFrame] = []
    dropped: Counter[str] = Counter()
    rows_read = 0
    for piece, first_line in _line_chunks(src.path):
        df = _chunk_fast(piece, fields)
        if df is not None:
            parts.append(df)
            rows_read += df.height
            continue
        df, n = _chunk_python(src, fields, piece, first_line, dropped, skip_bad=skip_bad)
        parts.append(df)
        rows_read += n
    if rows_read == 0:
        raise src.error("file holds no JSON records", line=1)
    df = pl.concat(parts, how="vertical")
    if df.height == 0:
        raise src.error("every record was bad; the file holds no usable requests", line=1)
    return ReadResult(df, rows_read, dict(dropped), fields)


CHUNK_BYTES = 4 << 20


def _line_chunks(path: Path) -> Iterator[tuple[bytes, int]]:
    """(whole lines, 1-based number of the first of them) in pieces of about 4 MiB."""
    first, rest = 1, b""
    with path.open("rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            piece, rest = data[: cut + 1], data[cut + 1 :]
            yield piece, first
            first += piece.count(b"\n")
    if rest:
        yield rest, first


def _chunk_fast(piece: bytes, fields: list[Field]) -> pl.DataFrame | None:
    """The chunk parsed by polars, or None if anything in it needs a closer look."""
    try:
        lf = pl.read_ndjson(io.BytesIO(piece), infer_schema_length=INFER_ROWS).lazy()
        schema = lf.collect_schema()
        df = lf.select([_fast_expr(f, schema).alias(f.target) for f in fields]).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, _NeedsSlowPath):
        return None
    return df if df.height and not _has_bad_values(df, fields) else None


def _has_bad_values(df: pl.DataFrame, fields: list[Field]) -> bool:
    checks = value_checks(fields, df.schema)
    return bool(checks) and any(df.select(checks).row(0))


def _chunk_python(
    src: Source,
    fields: list[Field],
    piece: bytes,
    first_line: int,
    dropped: Counter[str],
    *,
    skip_bad: bool,
) -> tuple[pl.DataFrame, int]:
    cols: dict[str, list[Any]] = {f.target: [] for f in fields}
    lines: list[int] = []
    rows_read = 0
    for lineno, raw in enumerate(piece.splitlines(keepends=True), start=first_line):
        if not raw.strip():
            continue
        rows_read += 1
        bad = _parse_line(src, fields, raw, lineno)
        if isinstance(bad, tuple):
            reason, field, message = bad
            if not skip_bad:
                raise src.error(message, line=lineno, field=field)
            dropped[reason] += 1
            continue
        for f in fields:
            cols[f.target].append(bad[f.target])
        lines.append(lineno)
    df = pl.DataFrame({f.target: pl.Series(f.target, cols[f.target], dtype=_slow_dtype(f)) for f in fields})
    df, _ = _parse_times(src, fields, df, lines, dropped, skip_bad=skip_bad)
    return df, rows_read


def _slow_dtype(f: Field) -> pl.DataType:
    if f.kind == "time" and f.unit == "iso8601":
        return pl.String()
    return f.dtype()


def _parse_line(src: Source, fields: list[Field], raw: bytes, lineno: int) -> dict | tuple:
    hint = "fix or delete the line, or pass --skip-bad to drop such lines and count them"
    is_last = not raw.endswith(b"\n")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if is_last:
            return (
                "truncated_last_line",
                None,
                "last line is cut short (not complete JSON and no newline at the end); the file was "
                "probably truncated in download or copy: fetch it again, or pass --skip-bad to drop it",
            )
        what = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        return "malformed_json", None, f"not a valid JSON object ({what}); {hint}"
    except RecursionError:  # Python's parser recurses per level; no real record nests ~1,000 deep
        return "malformed_json", None, f"not a usable JSON object (nested over 900 levels deep); {hint}"
    if not isinstance(obj, dict):
        return "malformed_json", None, f"holds a JSON {type(obj).__name__}, not an object; {hint}"
    out = {}
    for f in fields:
        value = lookup(obj, f.path)
        parsed, reason = _check(f, value)
        if reason is not None:
            shown = "absent or null" if value is _ABSENT or value is None else f"value {json.dumps(value)[:60]}"
            words = {
                "missing_value": f"is {shown}, but every record needs it",
                "non_numeric": f"{shown} is not a number",
                "non_integer": f"{shown} is not a whole number",
                "negative": f"{shown} is negative; token counts are >= 0",
                "bad_timestamp": f"{shown} is not a timestamp string",
                "bad_hashes": f"{shown} is not a list of non-negative integers",
                "not_boolean": f"{shown} is not true/false",
                "too_large": f"{shown} {REASONS['too_large']}, far beyond any real trace",
                "out_of_range": f"{shown} {REASONS['out_of_range']}, far beyond any real trace",
            }[reason]
            return reason, f.source, f"{words}; {hint}"
        out[f.target] = parsed
    return out


def _parse_times(
    src: Source, fields: list[Field], df: pl.DataFrame, lines: list[int], dropped: Counter[str], *, skip_bad: bool
) -> tuple[pl.DataFrame, Counter[str]]:
    """Parse ISO-8601 time strings vectorised, then point at the first that failed."""
    for f in fields:
        if not (f.kind == "time" and f.unit == "iso8601"):
            continue
        parsed = df[f.target].str.strip_chars().str.to_datetime(
            f.time_format, time_unit="ns", time_zone=f.time_zone, strict=False
        )
        bad = parsed.is_null() & df[f.target].is_not_null()
        if bad.any():
            idx = int(bad.arg_true()[0])
            if not skip_bad:
                raise src.error(
                    f"value {df[f.target][idx]!r} is not a timestamp like the first record's "
                    f"(format {f.time_format}); fix the line or pass --skip-bad",
                    line=lines[idx],
                    field=f.source,
                )
            dropped["bad_timestamp"] += int(bad.sum())
        df = df.with_columns(parsed.alias(f.target)).filter(~bad)
    return df, dropped
