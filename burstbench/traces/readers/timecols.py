"""Arrival times: sniff their form, rebase to 0 s, and say what was detected.

Everything a user might misread about a trace's clock is measured here rather than
assumed: the resolution the timestamps actually have (BurstGPT ticks in whole
seconds, Azure in 100 ns), how many arrivals tie, and whether the declared unit is
plausible (a millisecond column declared as seconds makes a one-hour trace span
forty days). Findings land in the Trace metadata and the printed summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl

from burstbench.traces.readers.plan import UNIT_SECONDS

_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?P<sep>[ T])\d{2}:\d{2}(?P<sec>:\d{2})?(?P<frac>[.,]\d+)?"
    r"(?P<tz>Z|[+-]\d{2}:?\d{2})?$"
)
YEAR_S = 366 * 86400.0
MAX_RATE = 1e5  # requests per second beyond which a unit is almost surely wrong


def iso_format(sample: str) -> tuple[str, str | None] | None:
    """(strptime format, time zone) matching ``sample``, or None if it is not ISO-8601-like."""
    m = _ISO.match(sample.strip())
    if not m:
        return None
    if m["frac"] and m["frac"][0] == ",":
        return None
    # %.f also accepts a value without a fraction, so rows may differ in digits.
    fmt = "%Y-%m-%d" + m["sep"] + "%H:%M" + (":%S%.f" if m["sec"] else "")
    if m["tz"]:
        return fmt + "%#z", "UTC"
    return fmt, None


def epoch_unit(magnitude: float) -> str | None:
    """The unit an epoch timestamp of this size is in (years 2001..2286), else None."""
    for unit, lo in (("s", 1e9), ("ms", 1e12), ("us", 1e15), ("ns", 1e18)):
        if lo <= magnitude < lo * 10:
            return unit
    return None


@dataclass
class TimeInfo:
    """What the arrival column turned out to be."""

    unit: str  # s, ms, us, ns, or "datetime" for ISO-8601 / wall-clock text
    resolution_s: float | None
    origin: str  # the first timestamp as found in the source, to undo the rebase
    raw_median: float | None = None  # magnitude of the raw numeric values (epoch check)
    warnings: list[str] = field(default_factory=list)


def human_seconds(s: float | None) -> str:
    """1 s, 100 ns, 10 ms: the resolution as a person says it."""
    if s is None:
        return "unknown"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= scale * 0.999:
            v = s / scale
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 1e-6 else f"{v:g} {unit}"
    return f"{s:g} s"


def rebase(df: pl.DataFrame, col: str, unit: str) -> tuple[pl.DataFrame, TimeInfo]:
    """Replace ``col`` by ``arrival_s`` (seconds from the first request), sorted stably."""
    t = df[col]
    if t.dtype == pl.Datetime:
        ns = t.dt.epoch("ns")
        origin = str(df.select(pl.col(col).min().dt.to_string("%Y-%m-%dT%H:%M:%S%.9f")).item())
        first = ns.min()
        offsets = (pl.col(col).dt.epoch("ns") - first).cast(pl.Float64) / 1e9
        resolution = _int_resolution(ns) * 1e-9
        info_unit = "datetime"
    elif t.dtype.is_integer():
        first = t.min()
        origin = f"{first} {unit}"
        offsets = (pl.col(col) - first).cast(pl.Float64) * UNIT_SECONDS[unit]
        resolution = _int_resolution(t) * UNIT_SECONDS[unit]
        info_unit = unit
    else:
        first = t.min()
        origin = f"{first!r} {unit}"
        offsets = (pl.col(col) - first) * UNIT_SECONDS[unit]
        res = _float_resolution(t)
        resolution = None if res is None else res * UNIT_SECONDS[unit]
        info_unit = unit
    out = df.with_columns(offsets.alias("arrival_s")).drop(col)
    if out["arrival_s"].is_sorted():
        # Most traces come in time order; flagging it lets every later sort skip the work.
        out = out.with_columns(pl.col("arrival_s").set_sorted())
    else:
        out = out.sort("arrival_s", maintain_order=True)
    raw_median = None if t.dtype == pl.Datetime else _abs_median(t, first)
    return out, TimeInfo(info_unit, resolution, origin, raw_median)


def _abs_median(t: pl.Series, lowest: object) -> float:
    """Median of ``|t|``; O(1) for the usual non-negative column in time order.

    A general median selects over a copy (0.4 s at 10 million rows); a sorted column
    without nulls has it in the middle, which polars reads off once the column is
    flagged sorted.
    """
    if t.null_count() == 0 and lowest is not None and lowest >= 0 and t.is_sorted():  # type: ignore[operator]
        return float(t.set_sorted().median() or 0.0)  # type: ignore[arg-type]
    return float(t.abs().median() or 0.0)  # type: ignore[arg-type]


# Resolutions are found on the first rows, then confirmed once on the whole column:
# the head's answer bounds the column's (a power of ten that divides every value
# divides the head's), so a clean trace costs one pass or none instead of nine.
_HEAD_ROWS = 4096


def _int_resolution(x: pl.Series) -> float:
    """Largest power of ten (up to 1e9 ticks) that divides every value."""
    res = _int_resolution_scan(x.head(_HEAD_ROWS))
    while res > 1 and (x % res != 0).any():
        res //= 10
    return float(res)


def _int_resolution_scan(x: pl.Series) -> int:
    res = 1
    for _ in range(9):
        if x.len() == 0 or (x % (res * 10) != 0).any():
            break
        res *= 10
    return res


def _float_resolution(x: pl.Series) -> float | None:
    """Decimal tick of float timestamps: 10^k for the coarsest k that fits every value."""
    if x.null_count():
        x = x.drop_nulls()
    if x.len() == 0:
        return None
    head = x.head(_HEAD_ROWS)
    if _all_whole(head) and _all_whole(x):
        if _int_resolution_scan(head.cast(pl.Int64, strict=False)) == 1:
            return 1.0  # 1 divides every whole value; no need to cast the column
        whole = x.cast(pl.Int64, strict=False)
        return _int_resolution(whole) if whole.null_count() == 0 else 1.0
    # Float64 holds ~16 digits; values near 1e9 leave ~7 decimals worth trusting, so
    # allow two units in the last place of the largest value.
    tol = 1e-10 + float(x.abs().max()) * 4.5e-16  # type: ignore[arg-type]
    # Every d the head fails, the column fails too: start the column's search at the head's.
    start = next((d for d in range(1, 10) if _fits_decimals(head, d, tol)), None)
    if start is None:
        return None
    for d in range(start, 10):
        if _fits_decimals(x, d, tol):
            return 10.0**-d
    return None


def _all_whole(x: pl.Series) -> bool:
    return not (x % 1 != 0).any()  # NaN and inf are not whole either


def _fits_decimals(x: pl.Series, d: int, tol: float) -> bool:
    scaled = (x - x.floor()) * 10**d
    return bool(((scaled - scaled.round()).abs() <= tol * 10**d).all())


def tied_share(arrival_s: pl.Series) -> float:
    """Share of inter-arrival gaps that are exactly 0 (arrivals sharing a timestamp)."""
    n = arrival_s.len()
    if n < 2:
        return 0.0
    if arrival_s.null_count():
        gaps = arrival_s.diff().drop_nulls()
        return float((gaps == 0).sum()) / gaps.len()
    # A gap is 0 exactly when two neighbours are equal; comparing them skips the diff column.
    return float((arrival_s.slice(1) == arrival_s.slice(0, n - 1)).sum()) / (n - 1)


def unit_warnings(
    span_s: float, n: int, unit: str, unit_source: str, raw_median: float | None = None
) -> list[str]:
    """Warnings when the values, span or rate are implausible for the time column's unit."""
    if unit == "datetime" or n < 2:
        return []
    how = {"declared": "declared", "format": "the format's unit"}.get(unit_source, unit_source)
    out = []
    looks = epoch_unit(raw_median) if raw_median else None
    if looks is not None and looks != unit:
        out.append(
            f"timestamps near {raw_median:.4g} look like Unix epoch {looks}, but were read as "
            f"{unit} ({how}); if that is wrong, re-ingest with --map arrival=COL:{looks}"
        )
    if span_s > YEAR_S:
        out.append(
            f"arrivals span {span_s / 86400:.0f} days with timestamps read as {unit} ({how}); "
            "that is implausibly long: the column is probably in a finer unit "
            f"(e.g. {_finer(unit)}); re-ingest with --map arrival=COL:{_finer(unit)}"
        )
    elif span_s > 0 and n >= 100 and n / span_s > MAX_RATE:
        out.append(
            f"{n} requests in {span_s:.3g} s with timestamps read as {unit} ({how}) is "
            f"{n / span_s:.3g} req/s, implausibly fast: the column is probably in a coarser "
            f"unit (e.g. {_coarser(unit)}); re-ingest with --map arrival=COL:{_coarser(unit)}"
        )
    elif span_s == 0 and n >= 100:
        out.append(f"all {n} requests share one timestamp; the time column may be wrong")
    return out


def _finer(unit: str) -> str:
    return {"s": "ms", "ms": "us", "us": "ns"}.get(unit, "ns")


def _coarser(unit: str) -> str:
    return {"ns": "us", "us": "ms", "ms": "s"}.get(unit, "s")


def written_precision(sample: object) -> str | None:
    """Precision the first timestamp is written with: '100 ns' for 7 fractional digits."""
    if not isinstance(sample, str):
        return None
    m = _ISO.match(sample.strip())
    if not m:
        return None
    digits = len(m["frac"]) - 1 if m["frac"] else 0
    return human_seconds(10.0**-digits) if m["sec"] else "1 min"
