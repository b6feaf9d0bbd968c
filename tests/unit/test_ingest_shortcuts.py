"""The shortcuts the ingest fast path takes give the answers of the full computation.

Each shortcut (line lengths read at the window ends only, clock resolution found on the
head and confirmed once, the median of a sorted column read off its middle, ties found
by comparing neighbours) is checked against a plain reference computed here in Python,
on inputs built so that the shortcut's guess is wrong and must be corrected.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from burstbench.errors import TraceFormatError
from burstbench.traces.readers import source, timecols


@pytest.mark.parametrize("seed", range(40))
def test_line_length_check_matches_a_full_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    # Small limits so that windows, peeks and long lines all occur in a few KiB.
    limit = 300
    monkeypatch.setattr(source, "MAX_LINE_BYTES", limit)
    monkeypatch.setattr(source, "_WINDOW", 128)
    monkeypatch.setattr(source, "_PEEK", 16)
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randint(5, 60)):
        n = rng.choice([0, 1, 5, 20, 40, rng.randint(0, 400)])
        lines.append(b"a" * n)
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    if max(len(ln) for ln in data.split(b"\n")) > limit:
        with pytest.raises(TraceFormatError) as err:
            source.check_line_lengths(path, path)
        # the error names the first line that is too long
        first_long = next(i for i, ln in enumerate(data.split(b"\n"), start=1) if len(ln) > limit)
        assert f"t.csv:{first_long}: line is longer" in str(err.value)
    else:
        source.check_line_lengths(path, path)


def test_a_long_line_between_short_ones_is_found_when_window_ends_hold_newlines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every window's two ends hold newlines, so only the peeks are read; the long line
    # still shows as a gap between the last newline of one window and the first of the next.
    monkeypatch.setattr(source, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(source, "_WINDOW", 64)
    monkeypatch.setattr(source, "_PEEK", 8)
    path = tmp_path / "t.csv"
    path.write_bytes(b"x\n" * 200 + b"y" * 150 + b"\n" + b"x\n" * 200)
    with pytest.raises(TraceFormatError, match=r"t\.csv:201: line is longer"):
        source.check_line_lengths(path, path)


def _decimals_reference(values: list[float]) -> int | None:
    """Fewest decimals that write every value exactly as Python prints it (None past 9)."""
    d = max(-Decimal(repr(v)).normalize().as_tuple().exponent for v in values)
    d = max(d, 0)
    return d if d <= 9 else None


def test_resolution_seen_only_after_the_head_is_still_found() -> None:
    n = timecols._HEAD_ROWS + 1000
    # whole thousands for the whole head, then one value at 10 s resolution
    ints = [1_000 * i for i in range(n)]
    ints[-3] += 10
    assert timecols._int_resolution(pl.Series(ints)) == 10.0
    assert timecols._float_resolution(pl.Series([float(v) for v in ints])) == 10.0
    # millisecond timestamps whose head is whole seconds
    floats = [float(i) for i in range(n)]
    floats[-2] += 0.125
    assert timecols._float_resolution(pl.Series(floats)) == 1e-3
    # tenths in the head, then one value with four decimals
    tenths = [round(i * 0.1, 1) for i in range(n)]
    tenths[-1] = 12345.6789
    assert timecols._float_resolution(pl.Series(tenths)) == 10.0**-_decimals_reference(tenths)  # type: ignore[operator]


@pytest.mark.parametrize("seed", range(20))
def test_resolution_matches_a_decimal_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = timecols._HEAD_ROWS + rng.randint(1, 3000)
    d_head, d_tail = rng.randint(0, 4), rng.randint(0, 6)
    values = [round(rng.uniform(0, 5e5), d_head) for _ in range(n)]
    values[rng.randrange(timecols._HEAD_ROWS, n)] = round(rng.uniform(0, 5e5), d_tail)
    want = _decimals_reference(values)
    got = timecols._float_resolution(pl.Series(values))
    if want == 0:  # whole values: the power of ten that divides all of them
        tens = 1
        while tens < 1e9 and all(int(v) % (tens * 10) == 0 for v in values):
            tens *= 10
        assert got == float(tens)
    else:
        assert got == pytest.approx(10.0**-want)  # type: ignore[operator]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 5000])
def test_median_and_ties_of_sorted_and_unsorted_columns(n: int) -> None:
    rng = random.Random(n)
    values = sorted(float(rng.randint(0, n // 2 + 1)) for _ in range(n))
    assert timecols._abs_median(pl.Series(values), values[0]) == statistics.median(values)
    shuffled = values[:]
    rng.shuffle(shuffled)
    assert timecols._abs_median(pl.Series(shuffled), min(shuffled)) == statistics.median(values)
    negative = [v - n / 3 for v in values]
    assert timecols._abs_median(pl.Series(negative), negative[0]) == statistics.median(abs(v) for v in negative)
    ties = sum(a == b for a, b in itertools.pairwise(values))
    assert timecols.tied_share(pl.Series(values)) == (ties / (n - 1) if n > 1 else 0.0)


HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("nan,ChatGPT,1,5,6,API log", "Timestamp"),
        ("inf,ChatGPT,1,5,6,API log", "Timestamp"),
        ("-inf,ChatGPT,1,5,6,API log", "Timestamp"),
        ("5e18,ChatGPT,1,5,6,API log", "Timestamp"),
        ("-5e18,ChatGPT,1,5,6,API log", "Timestamp"),
        ("3,ChatGPT,-1,5,4,API log", "Request tokens"),
        ("3,ChatGPT,1,10000001,6,API log", "Response tokens"),
        ("3,ChatGPT,,5,6,API log", "Request tokens"),
    ],
)
@pytest.mark.parametrize("where", [0, 1, 4999])
def test_the_fast_checks_send_every_bad_value_to_the_diagnosis(tmp_path: Path, row: str, field: str, where: int) -> None:
    # The reductions (min, max, sum, null count) must see one bad value among thousands.
    from burstbench.traces.ingest import ingest

    rows = [f"{i},ChatGPT,{i % 7},{i % 5},{i % 7 + i % 5},API log" for i in range(5000)]
    rows[where] = row
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    with pytest.raises(TraceFormatError) as err:
        ingest(path)
    assert f"t.csv:{where + 2}, field '{field}'" in str(err.value)
    kept = ingest(path, skip_bad=True)
    assert len(kept) == 4999 and kept.meta["rows_dropped"] and sum(kept.meta["rows_dropped"].values()) == 1


@pytest.mark.parametrize(
    ("value", "field"),
    [("-1", "input_length"), ("10000001", "output_length"), ("null", "input_length"), ("5e18", "timestamp")],
)
def test_the_jsonl_fast_checks_send_every_bad_value_to_the_diagnosis(tmp_path: Path, value: str, field: str) -> None:
    from burstbench.traces.ingest import ingest

    recs = [{"timestamp": i * 10, "input_length": 5, "output_length": 7, "hash_ids": [1, 2]} for i in range(3000)]
    lines = [json.dumps(r) for r in recs]
    lines[1234] = lines[1234].replace(f'"{field}": {recs[1234][field]}', f'"{field}": {value}')
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError) as err:
        ingest(path)
    assert f"t.jsonl:1235, field '{field}'" in str(err.value)
