"""Property: whatever bytes a user points ingest at, the outcome is a Trace (and a
readable Parquet file) or a BurstbenchError (and no output file) -- never another
exception, never a partial file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burstbench.errors import BurstbenchError
from burstbench.traces.ingest import ingest_file
from burstbench.traces.schema import read_trace

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _outcome(content: bytes, **kw: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        out = Path(tmp) / "out" / "t.parquet"
        src.write_bytes(content)
        try:
            trace = ingest_file(src, out, **kw)  # type: ignore[arg-type]
        except BurstbenchError as exc:
            assert str(exc)
            assert not out.exists()
            leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
            assert leftovers == []
            return
        back = read_trace(out)
        assert len(back) == len(trace) > 0
        arrivals = back.df["arrival_s"].to_list()
        assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(content: bytes) -> None:
    _outcome(content)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_after_a_burstgpt_header(content: bytes) -> None:
    _outcome(HEADER.encode() + content)


@SETTINGS
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_after_a_json_record(content: bytes, skip_bad: bool) -> None:
    first = b'{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
    _outcome(first + content, skip_bad=skip_bad)


cell = st.one_of(
    st.integers(min_value=-5, max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "ChatGPT", "GPT-4", "Conversation log", '"', '"a,b"', "1e3", "nan"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
)
row = st.lists(cell, min_size=0, max_size=8).map(lambda cells: ",".join(cells))


@SETTINGS
@given(st.lists(row, min_size=0, max_size=12), st.booleans(), st.booleans())
def test_random_csv_rows(rows: list[str], skip_bad: bool, final_newline: bool) -> None:
    body = "\n".join(rows) + ("\n" if final_newline else "")
    _outcome((HEADER + body).encode("utf-8", errors="surrogatepass"), skip_bad=skip_bad)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
mooncake_like = st.fixed_dictionaries(
    {"timestamp": json_value, "input_length": json_value, "output_length": json_value, "hash_ids": json_value}
)


@SETTINGS
@given(st.lists(mooncake_like, min_size=1, max_size=6), st.booleans())
def test_random_jsonl_records(records: list[dict], skip_bad: bool) -> None:
    import json

    body = "".join(json.dumps(r) + "\n" for r in records)
    _outcome(body.encode(), skip_bad=skip_bad)
