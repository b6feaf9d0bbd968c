"""Execute a Plan over a CSV file: a typed fast path, and a diagnosing slow path.

The fast path lets polars parse the needed columns straight into their dtypes with a
lazy scan; a clean 5-million-row BurstGPT file never leaves it. Any parse error, empty
required value or negative count sends the file to the slow path, which rescans every
field as text with a row index, classifies each bad row by reason, and either raises
for the first one (file, line, field, what to do) or drops them all and counts them
(``skip_bad``). Both paths stay vectorised; no Python object is built per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from burstbench.traces.readers.plan import (
    REASONS,
    Field,
    Plan,
    parse_string_expr,
    string_reason_expr,
    value_checks,
)
from burstbench.traces.readers.source import (
    Source,
    count_lines,
    csv_record_line,
    first_bad_utf8_line,
    last_line_truncated,
)

EXTRA_SLOTS = 4  # spare columns that catch rows with more fields than the header
EMPTY_ROW = "empty_row"  # a blank line: nothing lost, dropped without --skip-bad


@dataclass
class ReadResult:
    """Parsed columns (named by ``Field.target``) and what reading had to drop."""

    df: pl.DataFrame
    rows_read: int
    dropped: dict[str, int]
    fields: list[Field]


def resolve_fields(src: Source, plan: Plan) -> list[Field]:
    """The plan's fields that exist in the header; a missing required one is an error."""
    fields = []
    for f in plan.fields:
        if f.source in src.header:
            fields.append(f)
        elif f.required:
            advice = (
                "check the column name given in --map"
                if plan.fmt == "csv"
                else f"this does not look like a {plan.fmt} file; pick another --format or "
                "name the columns with --map"
            )
            raise src.error(
                f"column '{f.source}' not found (the header has: {', '.join(src.header)}); {advice}",
                line=1,
                field=f.source,
            )
    return fields


def read_csv(src: Source, plan: Plan, *, skip_bad: bool) -> ReadResult:
    """Read the plan's columns from ``src``; see the module docstring for the two paths."""
    fields = resolve_fields(src, plan)
    truncated, how = last_line_truncated(src)
    fast_error = ""
    if not truncated:
        try:
            return _fast(src, fields)
        except _NeedsSlowPath as exc:
            fast_error = str(exc)
    return _slow(src, fields, skip_bad=skip_bad, truncated=how, fast_error=fast_error)


class _NeedsSlowPath(Exception):
    pass


def _fast_dtype(f: Field) -> pl.DataType:
    if f.kind in ("count", "int") or (f.kind == "time" and f.unit in ("us", "ns")):
        return pl.Int64()
    if f.kind == "float" or (f.kind == "time" and f.unit in ("s", "ms", "epoch")):
        return pl.Float64()
    return pl.String()


def _scan(src: Source, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The file's data rows by position (the header is already read), ragged rows kept."""
    return pl.scan_csv(
        src.path,
        glob=False,  # a file named 'runs[1].csv' is that file, not a pattern
        has_header=False,
        skip_rows=1,
        schema=schema,
        missing_columns="insert",
        truncate_ragged_lines=True,
        raise_if_empty=False,
    )


def _fast(src: Source, fields: list[Field]) -> ReadResult:
    # Positional schema plus one spare column: polars skips the field-count check for
    # unselected columns, so a row with an extra field must land somewhere visible.
    typed = {f.source: _fast_dtype(f) for f in fields}
    schema = {c: typed.get(c, pl.String()) for c in src.header} | {"_extra0": pl.String()}
    lf = _scan(src, schema)
    exprs = []
    for f in fields:
        col = pl.col(f.source)
        if typed[f.source] == pl.String() and f.kind != "str":
            col = parse_string_expr(f, col, strict=True)
        exprs.append(col.alias(f.target))
    try:
        df = lf.select(*exprs, pl.col("_extra0")).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise _NeedsSlowPath(str(exc).split("\n", 1)[0]) from exc
    if df.height == 0:
        raise src.error("no data rows after the header; the file holds no requests", line=1)
    checks = [(pl.col("_extra0").null_count() < pl.len()).alias("extra"), *value_checks(fields, df.schema)]
    if any(df.select(checks).row(0)):
        raise _NeedsSlowPath("extra fields, empty or negative values")
    return ReadResult(df.drop("_extra0"), df.height, {}, fields)


def _slow(src: Source, fields: list[Field], *, skip_bad: bool, truncated: str, fast_error: str) -> ReadResult:
    extras = [f"_extra{i}" for i in range(EXTRA_SLOTS)]
    schema = {name: pl.String() for name in [*src.header, *extras]}
    lf = _scan(src, schema).with_row_index("_row")
    parsed = {f.target: parse_string_expr(f, pl.col(f.source), strict=False) for f in fields}
    reasons = [string_reason_expr(f, pl.col(f.source), parsed[f.target]) for f in fields]
    reason_fields = [pl.when(r.is_not_null()).then(pl.lit(f.source)) for r, f in zip(reasons, fields, strict=True)]
    empty = pl.all_horizontal([pl.col(c).is_null() for c in src.header])
    extra = pl.any_horizontal([pl.col(c).is_not_null() for c in extras])
    n_rows = pl.len()
    reason = (
        pl.when(empty)
        .then(pl.lit(EMPTY_ROW))
        .when(pl.lit(bool(truncated)) & (pl.col("_row") == n_rows - 1))
        .then(pl.lit("truncated_last_line"))
        .when(extra)
        .then(pl.lit("extra_fields"))
        .otherwise(pl.coalesce(reasons))
    )
    raw_of_bad = pl.coalesce(
        [pl.when(r.is_not_null()).then(pl.col(f.source)) for r, f in zip(reasons, fields, strict=True)]
    )
    try:
        df = lf.select(
            "_row",
            *[e.alias(t) for t, e in parsed.items()],
            reason.alias("_reason"),
            pl.coalesce(reason_fields).alias("_field"),
            raw_of_bad.alias("_raw"),
        ).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        bad = first_bad_utf8_line(src.path)
        if bad is not None:
            raise src.error(
                f"not UTF-8 text (byte {bad[1]} of the line); re-export the file as UTF-8",
                line=bad[0],
            ) from exc
        msg = str(exc).split("\n", 1)[0] or fast_error
        raise src.error(f"cannot be read as CSV ({msg}); check quoting and separators") from exc
    rows_read = df.height
    real = df.filter(pl.col("_reason").is_not_null() & (pl.col("_reason") != EMPTY_ROW))
    if real.height and not skip_bad:
        _raise_for(src, fields, real.row(0, named=True), rows_read, truncated)
    dropped_df = df.filter(pl.col("_reason").is_not_null()).group_by("_reason").len()
    dropped = {str(r): int(n) for r, n in dropped_df.iter_rows()}
    good = df.filter(pl.col("_reason").is_null()).select(list(parsed))
    if good.height == 0:
        what = "no data rows after the header" if rows_read == dropped.get(EMPTY_ROW, 0) else "every row was bad"
        raise src.error(f"{what}; the file holds no usable requests", line=1)
    return ReadResult(good, rows_read, dropped, fields)


def _line_of(src: Source, row: int, rows_read: int) -> int:
    # One physical line per record unless quoted fields span lines; check before trusting.
    if count_lines(src.path) == rows_read + 1:
        return row + 2
    return csv_record_line(src.path, row)


def _raise_for(src: Source, fields: list[Field], bad: dict, rows_read: int, truncated: str) -> None:
    line = _line_of(src, int(bad["_row"]), rows_read)
    reason = bad["_reason"]
    hint = "fix or delete the row, or pass --skip-bad to drop such rows and count them"
    if reason == "truncated_last_line":
        raise src.error(
            f"last line is cut short ({truncated}); the file was probably truncated in "
            "download or copy: fetch it again, or pass --skip-bad to drop that line",
            line=line,
        )
    if reason == "extra_fields":
        raise src.error(
            f"row has more fields than the {len(src.header)} in the header (an unquoted comma?); {hint}",
            line=line,
        )
    field = bad["_field"]
    f = next(f for f in fields if f.source == field)
    raw = bad["_raw"]
    shown = repr(raw.strip()) if isinstance(raw, str) else "empty"
    if reason == "missing_value":
        detail = f"is empty, but every row needs {f.target.replace('_', ' ')}"
    elif reason == "non_numeric":
        detail = f"value {shown} is not a number ({_expected(f)})"
    elif reason == "non_integer":
        detail = f"value {shown} is not a whole number ({_expected(f)})"
    elif reason == "negative":
        detail = f"value {shown} is negative; token counts are >= 0"
    elif reason == "bad_timestamp":
        detail = f"value {shown} is not a timestamp like the first row's (format {f.time_format})"
    elif reason == "not_boolean":
        detail = f"value {shown} is not true/false/1/0"
    elif reason in ("too_large", "out_of_range"):
        detail = f"value {shown} {REASONS[reason]}, far beyond any real trace (a wrong column or unit?)"
    else:  # pragma: no cover - every reason above is produced by string_reason_expr
        detail = f"value {shown} is unusable ({reason})"
    raise src.error(f"{detail}; {hint}", line=line, field=field)


def _expected(f: Field) -> str:
    if f.kind == "count":
        return "expected a token count"
    if f.kind == "time":
        return f"expected a timestamp in {f.unit}"
    return "expected an integer"
