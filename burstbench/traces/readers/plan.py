"""A reading plan: which source column becomes which Trace column, parsed how.

Every format reader (BurstGPT, Azure, Mooncake, ...) only builds a ``Plan``; the CSV
and JSONL engines execute it. Keeping the parsing rules in one place means every
format gets the same fast path, the same bad-row diagnosis and the same error words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from burstbench.limits import MAX_TIMESTAMP, MAX_TOKENS

FieldKind = Literal["count", "int", "float", "str", "bool", "time", "hashes"]
TIME_UNITS = ("s", "ms", "us", "ns", "iso8601", "epoch")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# Words for each reason a row can be rejected; keys are what metadata records.
REASONS = {
    "missing_value": "is empty",
    "non_numeric": "is not a number",
    "non_integer": "is not a whole number",
    "negative": "is negative",
    "bad_timestamp": "is not a timestamp in the expected form",
    "not_boolean": "is not true/false/1/0",
    "too_large": f"is a token count over {MAX_TOKENS:,}",
    "out_of_range": f"is a timestamp beyond {MAX_TIMESTAMP:.0e} in its unit",
    "bad_hashes": "is not a list of non-negative integers",
    "extra_fields": "has more fields than the header",
    "truncated_last_line": "is cut short (the file ends mid-row)",
    "malformed_json": "is not a valid JSON object",
}


@dataclass(frozen=True)
class Field:
    """One source field and the Trace (or extra) column it fills."""

    target: str
    source: str  # CSV column name, or a dotted path into a JSON object
    kind: FieldKind
    required: bool = True
    unit: str | None = None  # time fields: s, ms, us, ns, iso8601, epoch
    time_format: str | None = None  # iso8601: the strptime format sniffed from the first row
    time_zone: str | None = None

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.source.split("."))

    def dtype(self) -> pl.DataType:
        """The dtype this field has after parsing."""
        if self.kind in ("count", "int"):
            return pl.Int64()
        if self.kind == "float":
            return pl.Float64()
        if self.kind == "bool":
            return pl.Boolean()
        if self.kind == "hashes":
            return pl.List(pl.UInt64())
        if self.kind == "time":
            if self.unit == "iso8601":
                return pl.Datetime("ns", self.time_zone)
            if self.unit in ("us", "ns"):
                return pl.Int64()
            return pl.Float64()
        return pl.String()


@dataclass
class Plan:
    """What a reader wants read, plus facts about the format for the metadata."""

    fmt: str
    variant: str
    fields: list[Field]
    block_size: int | None = None
    unit_source: str = "format"  # format | declared | detected | assumed
    written_precision: str | None = None  # e.g. "100 ns" for 7 fractional digits
    notes: list[str] = field(default_factory=list)

    @property
    def time(self) -> Field:
        return next(f for f in self.fields if f.kind == "time")


TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")


def parse_string_expr(f: Field, raw: pl.Expr, *, strict: bool) -> pl.Expr:
    """Parse a string column into ``f``'s dtype; with ``strict=False`` bad values become null."""
    s = raw.str.strip_chars()
    if f.kind in ("count", "int"):
        if strict:
            return s.cast(pl.Int64, strict=True)
        return s.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
    if f.kind == "float" or (f.kind == "time" and f.unit in ("s", "ms", "epoch", None)):
        return s.cast(pl.Float64, strict=strict)
    if f.kind == "time" and f.unit in ("us", "ns"):
        return s.cast(pl.Int64, strict=strict)
    if f.kind == "time":
        return s.str.to_datetime(f.time_format, time_unit="ns", time_zone=f.time_zone, strict=strict)
    if f.kind == "bool":
        low = s.str.to_lowercase()
        mapping = {w: True for w in TRUE_WORDS} | {w: False for w in FALSE_WORDS}
        if strict:  # an unknown word raises, sending the file to the diagnosing path
            return low.replace_strict(mapping, return_dtype=pl.Boolean)
        return low.replace_strict(mapping, default=None, return_dtype=pl.Boolean)
    return raw


def value_checks(fields: list[Field], schema: pl.Schema) -> list[pl.Expr]:
    """One boolean per check a clean file passes: is any required value missing, any count
    negative, any float not finite, any value beyond ``burstbench.limits``?

    The fast paths of both readers run these over the parsed columns; a hit sends the
    file to the slow path, which names the first offending line. Each is a reduction
    (null count, min, max, sum) rather than a mask: at 10 million rows a mask per check
    costs more than all the reductions together. A sum is NaN or infinite whenever a
    value is; a sum that overflows from finite values only costs the slow path's pass.
    """
    checks = [(pl.col(f.target).null_count() > 0).alias(f"n:{f.target}") for f in fields if f.required]
    checks += [(pl.col(f.target).min() < 0).alias(f"neg:{f.target}") for f in fields if f.kind == "count"]
    checks += [
        (~pl.col(f.target).sum().is_finite()).alias(f"nan:{f.target}")
        for f in fields
        if schema[f.target] == pl.Float64
    ]
    return checks + limit_checks(fields, schema)


def limit_checks(fields: list[Field], schema: pl.Schema) -> list[pl.Expr]:
    """One boolean per bounded field: does any parsed value break ``burstbench.limits``?

    The slow path names the first offending line (reasons ``too_large`` / ``out_of_range``).
    """
    checks = [(pl.col(f.target).max() > MAX_TOKENS).alias(f"big:{f.target}") for f in fields if f.kind == "count"]
    checks += [
        ((pl.col(f.target).max() > MAX_TIMESTAMP) | (pl.col(f.target).min() < -MAX_TIMESTAMP)).alias(f"far:{f.target}")
        for f in fields
        if f.kind == "time" and schema[f.target].is_numeric()
    ]
    return checks


def string_reason_expr(f: Field, raw: pl.Expr, parsed: pl.Expr) -> pl.Expr:
    """Why a row's raw value for ``f`` is unusable (a REASONS key), or null if it is fine."""
    s = raw.str.strip_chars()
    present = s.is_not_null() & (s != "")
    conds: list[tuple[pl.Expr, str]] = []
    if f.required:
        conds.append((~present, "missing_value"))
    if f.kind in ("count", "int") or (f.kind == "time" and f.unit not in ("iso8601",)):
        num = s.cast(pl.Float64, strict=False)
        conds.append((present & (num.is_null() | ~num.is_finite()), "non_numeric"))
        if f.kind in ("count", "int") or f.unit in ("us", "ns"):
            conds.append((present & (num != num.floor()), "non_integer"))
        if f.kind == "count":
            conds.append((present & (num < 0), "negative"))
            conds.append((present & (num > MAX_TOKENS), "too_large"))
        if f.kind == "time":
            conds.append((present & (num.abs() > MAX_TIMESTAMP), "out_of_range"))
        conds.append((present & parsed.is_null(), "non_numeric"))
    elif f.kind == "time":
        conds.append((present & parsed.is_null(), "bad_timestamp"))
    elif f.kind == "bool":
        conds.append((present & parsed.is_null(), "not_boolean"))
    if not conds:
        return pl.lit(None, dtype=pl.String)
    expr = pl.when(conds[0][0]).then(pl.lit(conds[0][1]))
    for cond, reason in conds[1:]:
        expr = expr.when(cond).then(pl.lit(reason))
    return expr.otherwise(pl.lit(None, dtype=pl.String))
