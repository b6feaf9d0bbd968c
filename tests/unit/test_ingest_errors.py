"""Bad input on purpose: every mistake names file, line and field, or is skipped and
counted under skip_bad; no partial output file is ever left behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from burstbench.cli import main
from burstbench.errors import TraceFormatError, UsageError
from burstbench.traces.ingest import ingest, ingest_file


@pytest.fixture
def v1_lines(burstgpt_v1: Path) -> list[str]:
    return burstgpt_v1.read_text().splitlines(keepends=True)[:41]  # header + 40 rows


def _write(tmp_path: Path, lines: list[str], name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def _replace(lines: list[str], line_no: int, text: str) -> list[str]:
    out = list(lines)
    out[line_no - 1] = text
    return out


@pytest.mark.parametrize(
    ("line_no", "row", "field", "words"),
    [
        (10, "410,ChatGPT,15x8,414,1942,Conversation log\n", "Request tokens", "not a number"),
        (17, "700,ChatGPT,100,-5,95,Conversation log\n", "Response tokens", "negative"),
        (23, "900,ChatGPT,,5,5,API log\n", "Request tokens", "is empty"),
        (30, "1000,ChatGPT,1.5,5,5,API log\n", "Request tokens", "not a whole number"),
        (36, "ten,ChatGPT,1,5,5,API log\n", "Timestamp", "not a number"),
        (38, "nan,ChatGPT,1,5,5,API log\n", "Timestamp", "not a number"),
    ],
)
def test_bad_value_names_line_and_field(
    tmp_path: Path, v1_lines: list[str], line_no: int, row: str, field: str, words: str
) -> None:
    path = _write(tmp_path, _replace(v1_lines, line_no, row))
    out = tmp_path / "out.parquet"
    with pytest.raises(TraceFormatError) as info:
        ingest_file(path, out)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line_no}, field '{field}': ")
    assert words in msg and "--skip-bad" in msg
    assert (info.value.line, info.value.field) == (line_no, field)
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".out*")) == []


def test_skip_bad_drops_and_counts_per_reason(tmp_path: Path, v1_lines: list[str]) -> None:
    lines = _replace(v1_lines, 5, "410,ChatGPT,15x8,414,1942,Conversation log\n")
    lines = _replace(lines, 9, "700,ChatGPT,100,-5,95,Conversation log\n")
    lines = _replace(lines, 12, "701,ChatGPT,100,-6,95,Conversation log\n")
    lines = _replace(lines, 20, "1,2,3,4,5,6,7\n")
    lines = [*lines[:-1], "999,ChatGPT,12"]  # cut-off last line, no newline
    path = _write(tmp_path, lines)
    trace = ingest(path, skip_bad=True)
    dropped = trace.meta["rows_dropped"]
    assert dropped == {"non_numeric": 1, "negative": 2, "extra_fields": 1, "truncated_last_line": 1}
    assert trace.meta["rows_read"] == 40 and len(trace) == 35
    assert -5 not in trace.df["output_tokens"].to_list()


def test_truncated_last_line_is_an_error_by_default(tmp_path: Path, v1_lines: list[str]) -> None:
    path = _write(tmp_path, [*v1_lines[:-1], "999,ChatGPT,12"])
    with pytest.raises(TraceFormatError, match=r":41: last line is cut short \(it has 3 of 6 fields"):
        ingest(path)


def test_missing_final_newline_alone_is_fine(tmp_path: Path, v1_lines: list[str]) -> None:
    path = _write(tmp_path, [*v1_lines[:-1], v1_lines[-1].rstrip("\n")])
    assert len(ingest(path)) == 40


def test_extra_fields_are_an_error(tmp_path: Path, v1_lines: list[str]) -> None:
    path = _write(tmp_path, _replace(v1_lines, 20, "1,2,3,4,5,6,7\n"))
    with pytest.raises(TraceFormatError, match=r":20: row has more fields than the 6"):
        ingest(path)


def test_line_numbers_count_quoted_newlines(tmp_path: Path, v1_lines: list[str]) -> None:
    lines = _replace(v1_lines, 4, '185,"Chat\nGPT",1360,647,2007,Conversation log\n')
    lines = _replace(lines, 8, "410,ChatGPT,bad,414,1942,Conversation log\n")
    path = _write(tmp_path, lines)
    with pytest.raises(TraceFormatError) as info:
        ingest(path)
    assert info.value.line == 9  # the quoted newline pushed the bad row one line down
    assert path.read_text().splitlines()[8].startswith("410,ChatGPT,bad")


def test_blank_line_is_dropped_and_reported(tmp_path: Path, v1_lines: list[str]) -> None:
    path = _write(tmp_path, _replace(v1_lines, 6, "\n"))
    trace = ingest(path)
    assert len(trace) == 39 and trace.meta["rows_dropped"] == {"empty_row": 1}


@pytest.mark.parametrize(
    ("content", "words", "line"),
    [
        (b"", "file is empty", 1),
        (b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n", "no data rows", 1),
        (b"\n\n\n", "only blank lines", 1),
        (b'[{"a": 1}]', "JSON array", 1),
        (gzip.compress(b"a,b\n1,2\n" * 50)[:30], "gzip stream is corrupt", None),
        (b"Timestamp,Model,Request tokens\n5,\xff\xfe,3\n", "not UTF-8", 2),
        (b"justonecolumn\n1\n", "header has 1 column", 1),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, words: str, line: int | None) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(TraceFormatError, match=words) as info:
        ingest(path, mapping="arrival=Timestamp,input=Model,output=Request tokens")
    assert info.value.line == line and info.value.path == str(path)


def test_missing_column_names_the_column(tmp_path: Path, v1_lines: list[str]) -> None:
    cut = [",".join(p for i, p in enumerate(line.rstrip("\n").split(",")) if i != 3) + "\n" for line in v1_lines]
    path = _write(tmp_path, cut)
    with pytest.raises(TraceFormatError) as info:
        ingest(path)
    assert (info.value.line, info.value.field) == (1, "Response tokens")
    assert "looks like a burstgpt file" in str(info.value)
    with pytest.raises(TraceFormatError, match="column 'Response tokens' not found"):
        ingest(path, fmt="burstgpt")


def test_unknown_columns_ask_for_a_map(tmp_path: Path) -> None:
    path = _write(tmp_path, ["when,a,b\n", "1,2,3\n"])
    with pytest.raises(TraceFormatError, match="--map arrival=COL"):
        ingest(path)


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no such file"):
        ingest(tmp_path / "nope.csv")


MOON = '{{"timestamp": {t}, "input_length": {i}, "output_length": 3, "hash_ids": {h}}}\n'


def _moon(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(
    ("bad", "reason", "field", "words"),
    [
        ('{"timestamp": 5, "input_length": 7,,}\n', "malformed_json", None, "not a valid JSON object"),
        (MOON.format(t=5, i='"7"', h="[1]"), "non_numeric", "input_length", "not a number"),
        (MOON.format(t=5, i=-7, h="[1]"), "negative", "input_length", "negative"),
        (MOON.format(t=5, i=7, h="[1, -2]"), "bad_hashes", "hash_ids", "non-negative integers"),
        ('{"timestamp": 5, "output_length": 3, "hash_ids": []}\n', "missing_value", "input_length", "absent"),
        ("[1, 2]\n", "malformed_json", None, "not an object"),
    ],
)
def test_jsonl_bad_line(tmp_path: Path, bad: str, reason: str, field: str | None, words: str) -> None:
    good = [MOON.format(t=t, i=10 + t, h=f"[{t}]") for t in range(6)]
    path = _moon(tmp_path, [*good[:3], bad, *good[3:]])
    with pytest.raises(TraceFormatError) as info:
        ingest(path)
    assert info.value.line == 4 and info.value.field == field
    assert words in str(info.value)
    trace = ingest(path, skip_bad=True)
    assert trace.meta["rows_dropped"] == {reason: 1} and len(trace) == 6


def test_jsonl_truncated_last_line(tmp_path: Path) -> None:
    good = [MOON.format(t=t, i=10, h="[1]") for t in range(4)]
    path = _moon(tmp_path, [*good, '{"timestamp": 9, "input_le'])
    with pytest.raises(TraceFormatError, match=r"m.jsonl:5: last line is cut short"):
        ingest(path)
    trace = ingest(path, skip_bad=True)
    assert trace.meta["rows_dropped"] == {"truncated_last_line": 1} and len(trace) == 4


def test_jsonl_missing_key_in_first_record(tmp_path: Path) -> None:
    path = _moon(tmp_path, ['{"timestamp": 1, "input_length": 3, "hash_ids": []}\n'])
    with pytest.raises(TraceFormatError) as info:
        ingest(path, fmt="mooncake")
    assert (info.value.line, info.value.field) == (1, "output_length")


def test_wrong_unit_declared_warns(tmp_path: Path) -> None:
    # Two years read as seconds is implausible (a warning); a whole year of ms read as
    # s spans 1,000 years, beyond limits.MAX_SPAN_S: an error naming the end rows.
    rows = "".join(f"{t},{5},{6}\n" for t in range(0, 400 * 86400 * 2, 86400 * 2))
    path = _write(tmp_path, ["ts,i,o\n", rows])
    trace = ingest(path, mapping="arrival=ts:s,input=i,output=o")
    assert any("implausibly long" in w and "arrival=COL:ms" in w for w in trace.meta["warnings"])
    rows_ms = "".join(f"{t},{5},{6}\n" for t in range(0, 400 * 86400 * 1000, 86400 * 1000))
    path_ms = _write(tmp_path, ["ts,i,o\n", rows_ms], name="ms.csv")
    with pytest.raises(TraceFormatError, match=r"span 1.09e\+03 years \(data row 400 .*arrival=COL:ms"):
        ingest(path_ms, mapping="arrival=ts:s,input=i,output=o")
    fast = "".join(f"{t},{5},{6}\n" for t in range(1000))  # 1000 requests in 1 s if read as ms
    path2 = _write(tmp_path, ["ts,i,o\n", fast], name="f.csv")
    trace2 = ingest(path2, mapping="arrival=ts:us,input=i,output=o")
    assert any("implausibly fast" in w for w in trace2.meta["warnings"])
    ok = ingest(path2, mapping="arrival=ts:s,input=i,output=o")
    assert ok.meta["warnings"] == []
    epoch_ms = _write(tmp_path, ["ts,i,o\n", "1700000000123,1,2\n", "1700000005123,1,2\n"], name="e.csv")
    as_s = ingest(epoch_ms, mapping="arrival=ts:s,input=i,output=o")
    assert any("look like Unix epoch ms" in w for w in as_s.meta["warnings"])
    assert ingest(epoch_ms, mapping="arrival=ts:ms,input=i,output=o").meta["warnings"] == []


def test_unwritable_output_leaves_nothing(tmp_path: Path, burstgpt_v1: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write there"):
        ingest_file(burstgpt_v1, blocker / "t.parquet")
    with pytest.raises(UsageError, match="is the input"):
        ingest_file(burstgpt_v1, burstgpt_v1)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("arrival=ts,input=i", "must name output"),
        ("arrival=ts,input=i,output=o,colour=x", "unknown key"),
        ("arrival=ts:fortnights,input=i,output=o", "not one of"),
        ("arrival,input=i,output=o", "is not KEY=COLUMN"),
    ],
)
def test_bad_map_is_a_usage_error(tmp_path: Path, spec: str, words: str) -> None:
    path = _write(tmp_path, ["ts,i,o\n", "1,2,3\n"])
    with pytest.raises(UsageError, match=words):
        ingest(path, mapping=spec)


def test_map_column_absent(tmp_path: Path) -> None:
    path = _write(tmp_path, ["ts,i,o\n", "1,2,3\n"])
    with pytest.raises(TraceFormatError) as info:
        ingest(path, mapping="arrival=ts,input=i,output=out")
    assert (info.value.line, info.value.field) == (1, "out")


def test_cli_ingest_json_and_one_line_errors(tmp_path: Path, burstgpt_v3: Path, capsys) -> None:
    out = tmp_path / "t.parquet"
    rc = main(["trace", "ingest", str(burstgpt_v3), "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and out.exists()
    info = json.loads(captured.out)
    assert info["rows"] == 400 and info["source_format"] == "burstgpt"
    assert info["timestamp_resolution"] == "1 s" and info["rows_dropped"] == {}
    assert "400 requests" in captured.err and "resolution 1 s" in captured.err
    bad = tmp_path / "bad.csv"
    bad.write_text(burstgpt_v3.read_text().replace(",446,", ",4x6,", 1))
    rc = main(["trace", "ingest", str(bad), "-o", str(tmp_path / "b.parquet")])
    err = capsys.readouterr().err
    assert rc == TraceFormatError.exit_code
    assert err.count("\n") == 1 and f"{bad}:2, field 'Response tokens'" in err
    assert not (tmp_path / "b.parquet").exists()
    rc = main(["trace", "ingest", str(bad), "-o", str(tmp_path / "b.parquet"), "--skip-bad", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["rows_dropped"] == {"non_numeric": 1}


def test_unknown_boolean_word_is_not_silently_false(tmp_path: Path) -> None:
    path = _write(tmp_path, ["ts,i,o,ok\n", "1,2,3,true\n", "2,2,3,\n", "3,2,3,maybe\n"])
    spec = "arrival=ts,input=i,output=o,failed=ok"
    with pytest.raises(TraceFormatError) as info:
        ingest(path, mapping=spec)
    assert (info.value.line, info.value.field) == (4, "ok")
    trace = ingest(path, mapping=spec, skip_bad=True)
    assert trace.df["failed"].to_list() == [True, False]
    assert trace.meta["rows_dropped"] == {"not_boolean": 1}


def test_jsonl_bad_line_deep_in_a_chunked_file(tmp_path: Path, monkeypatch) -> None:
    """Only the chunk holding the bad line is walked in Python; line numbers stay exact."""
    from burstbench.traces.readers import jsonread

    monkeypatch.setattr(jsonread, "CHUNK_BYTES", 4096)
    walked: list[int] = []
    real = jsonread._chunk_python

    def spy(src, fields, piece, first_line, dropped, *, skip_bad):
        walked.append(first_line)
        return real(src, fields, piece, first_line, dropped, skip_bad=skip_bad)

    monkeypatch.setattr(jsonread, "_chunk_python", spy)
    lines = [MOON.format(t=t * 10, i=100 + t, h=f"[{t}]") for t in range(2000)]
    lines[1233] = MOON.format(t=12330, i='"many"', h="[1]")
    path = _moon(tmp_path, lines)
    with pytest.raises(TraceFormatError) as info:
        ingest(path)
    assert (info.value.line, info.value.field) == (1234, "input_length")
    walked.clear()
    trace = ingest(path, skip_bad=True)
    assert len(walked) == 1 and walked[0] <= 1234
    assert trace.meta["rows_dropped"] == {"non_numeric": 1} and trace.meta["rows_read"] == 2000
    expected = [json.loads(line)["input_length"] for i, line in enumerate(lines) if i != 1233]
    assert trace.df["input_tokens"].to_list() == expected


def test_mooncake_without_hashes_and_near_misses(tmp_path: Path) -> None:
    path = _moon(tmp_path, ['{"timestamp": 5, "input_length": 10, "output_length": 2}\n'] * 3)
    trace = ingest(path)
    assert trace.meta["source_format"] == "mooncake" and trace.meta["block_size"] is None
    assert trace.df["prefix_hashes"].to_list() == [None, None, None]
    near = _moon(tmp_path, ['{"timestamp": 5, "input_length": 10, "hash_ids": []}\n'])
    with pytest.raises(TraceFormatError, match="looks like a mooncake file but lacks 'output_length'"):
        ingest(near)
