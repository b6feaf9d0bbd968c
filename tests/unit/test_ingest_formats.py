"""Ingest of each supported format, checked against the raw files read independently
(csv / json from the standard library), never against the code under test."""

from __future__ import annotations

import csv
import itertools
import json
from calendar import timegm
from datetime import datetime
from pathlib import Path

import pytest

from burstbench.errors import UsageError
from burstbench.traces.ingest import ingest, ingest_file
from burstbench.traces.schema import TRACE_SCHEMA, load_trace, read_trace


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _by_arrival(rows: list, key) -> list:
    """Stable sort by timestamp, as the Trace contract orders requests."""
    return [r for _, r in sorted(enumerate(rows), key=lambda ir: (key(ir[1]), ir[0]))]


def test_burstgpt_v1_matches_raw_rows(burstgpt_v1: Path) -> None:
    raw = _by_arrival(_rows(burstgpt_v1), lambda r: float(r["Timestamp"]))
    trace = ingest(burstgpt_v1)
    df = trace.df
    t0 = float(raw[0]["Timestamp"])
    assert df.height == len(raw) == 400
    assert df["arrival_s"].to_list() == [float(r["Timestamp"]) - t0 for r in raw]
    assert df["input_tokens"].to_list() == [int(r["Request tokens"]) for r in raw]
    assert df["output_tokens"].to_list() == [int(r["Response tokens"]) for r in raw]
    assert df["model"].to_list() == [r["Model"] for r in raw]
    assert df["tenant"].to_list() == [r["Log Type"] for r in raw]
    assert df["failed"].to_list() == [int(r["Response tokens"]) == 0 for r in raw]
    assert any(df["failed"].to_list())  # the sample does hold failed requests
    assert df["session_id"].null_count() == 400
    assert list(df.columns[: len(TRACE_SCHEMA)]) == list(TRACE_SCHEMA)
    m = trace.meta
    assert m["source_format"] == "burstgpt" and m["timestamp_unit"] == "s"
    assert m["timestamp_resolution_s"] == 1.0 and m["timestamp_resolution"] == "1 s"
    stamps = [float(r["Timestamp"]) for r in raw]
    ties = sum(a == b for a, b in itertools.pairwise(stamps)) / (len(stamps) - 1)
    assert m["tied_share"] == pytest.approx(ties)
    assert m["rows_read"] == 400 and m["rows_dropped"] == {}


def test_burstgpt_v3_sessions_and_turns(burstgpt_v3: Path) -> None:
    raw = _by_arrival(_rows(burstgpt_v3), lambda r: float(r["Timestamp"]))
    df = ingest(burstgpt_v3).df
    expected_turn: list[int | None] = []
    seen: dict[str, int] = {}
    for r in raw:
        sid = r["Session ID"].strip()
        if not sid:
            expected_turn.append(None)
            continue
        seen[sid] = seen.get(sid, 0) + 1
        expected_turn.append(seen[sid])
    assert df["session_id"].to_list() == [r["Session ID"].strip() or None for r in raw]
    assert df["turn"].to_list() == expected_turn
    assert max(t for t in expected_turn if t) > 1  # real multi-turn sessions exist
    assert df["session_id"].null_count() == sum(1 for r in raw if not r["Session ID"].strip()) > 0
    assert df["elapsed_time"].to_list() == [float(r["Elapsed time"]) for r in raw]
    assert df["arrival_s"][0] == 0.0
    assert df["arrival_s"].to_list() == [float(r["Timestamp"]) - float(raw[0]["Timestamp"]) for r in raw]


def _azure_ns(stamp: str) -> int:
    """Exact epoch nanoseconds of '2023-11-16 18:15:46.6805900' (naive, read as UTC)."""
    whole, _, frac = stamp.partition(".")
    secs = timegm(datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timetuple())
    return secs * 10**9 + int(frac.ljust(9, "0")[:9])


def test_azure_timestamps_exact_to_the_nanosecond(azure_conv: Path) -> None:
    raw = _rows(azure_conv)
    ns = [_azure_ns(r["TIMESTAMP"]) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (ns[i], i))
    trace = ingest(azure_conv)
    df = trace.df
    assert df.height == len(raw) == 19366
    base = ns[order[0]]
    got = df["arrival_s"].to_list()
    # Exact integer offsets divided once: float64 error stays below a nanosecond.
    assert all(abs(g - (ns[i] - base) / 1e9) < 1e-9 for g, i in zip(got, order, strict=True))
    assert df["input_tokens"].to_list() == [int(raw[i]["ContextTokens"]) for i in order]
    assert df["output_tokens"].to_list() == [int(raw[i]["GeneratedTokens"]) for i in order]
    res_ns = 1
    while res_ns < 10**9 and all(v % (res_ns * 10) == 0 for v in ns):
        res_ns *= 10
    m = trace.meta
    assert m["timestamp_resolution_s"] == pytest.approx(res_ns * 1e-9)
    assert m["timestamp_written_precision"] == "100 ns"  # seven fractional digits
    assert m["time_origin"].startswith(raw[order[0]]["TIMESTAMP"].replace(" ", "T")[:26])


def test_mooncake_hashes_and_block_size(mooncake: Path) -> None:
    recs = [json.loads(line) for line in mooncake.read_text().splitlines() if line.strip()]
    order = sorted(range(len(recs)), key=lambda i: (recs[i]["timestamp"], i))
    trace = ingest(mooncake)
    df = trace.df
    t0 = recs[order[0]]["timestamp"]
    assert df.height == len(recs)
    assert df["arrival_s"].to_list() == pytest.approx([(recs[i]["timestamp"] - t0) / 1000 for i in order])
    assert df["input_tokens"].to_list() == [recs[i]["input_length"] for i in order]
    assert df["prefix_hashes"].to_list() == [recs[i]["hash_ids"] for i in order]
    assert trace.meta["block_size"] == 512 and trace.meta["timestamp_unit"] == "ms"


def test_metadata_round_trips_through_parquet(tmp_path: Path, burstgpt_v1: Path) -> None:
    out = tmp_path / "t.parquet"
    written = ingest_file(burstgpt_v1, out)
    back = read_trace(out)
    assert back.meta["source_format"] == "burstgpt"
    assert back.meta["rows_read"] == 400
    assert back.meta["source_file"] == str(burstgpt_v1.resolve())
    assert back.df.equals(written.df)


def test_load_trace_accepts_raw_files(azure_conv: Path, burstgpt_v1: Path) -> None:
    assert len(load_trace(azure_conv)) == 19366
    assert load_trace(burstgpt_v1, fmt="burstgpt").meta["source_format"] == "burstgpt"


def test_bailian_sessions_follow_the_parent_chain(tmp_path: Path) -> None:
    recs = [
        dict(chat_id=11, parent_chat_id=-1, timestamp=100.5, turn=1, input_length=100, output_length=10, type="text", hash_ids=[1, 2]),
        dict(chat_id=12, parent_chat_id=-1, timestamp=101.25, turn=1, input_length=50, output_length=5, type="file", hash_ids=[9]),
        dict(chat_id=13, parent_chat_id=11, timestamp=110.0, turn=2, input_length=200, output_length=10, type="text", hash_ids=[1, 2, 3]),
        dict(chat_id=14, parent_chat_id=13, timestamp=120.0, turn=3, input_length=300, output_length=10, type="text", hash_ids=[1, 2, 3, 4]),
        dict(chat_id=15, parent_chat_id=12, timestamp=105.0, turn=2, input_length=70, output_length=0, type="file", hash_ids=[9, 10]),
    ]
    path = tmp_path / "qwen_trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    trace = ingest(path)
    df = trace.df
    assert trace.meta["source_format"] == "bailian" and trace.meta["block_size"] == 16
    assert df["arrival_s"].to_list() == [0.0, 0.75, 4.5, 9.5, 19.5]
    assert df["session_id"].to_list() == ["11", "12", "12", "11", "11"]
    assert df["turn"].to_list() == [1, 1, 2, 2, 3]
    assert df["tenant"].to_list() == ["text", "file", "file", "text", "text"]
    assert df["prefix_hashes"].to_list()[4] == [1, 2, 3, 4]


def test_openai_log_recognised_without_a_map(tmp_path: Path) -> None:
    recs = [
        {"id": "a", "object": "chat.completion", "created": 1700000003, "model": "m1",
         "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, "choices": []},
        {"id": "b", "object": "chat.completion", "created": 1700000000, "model": "m2",
         "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]},
    ]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    trace = ingest(path)
    assert trace.meta["source_format"] == "openai"
    assert trace.df["model"].to_list() == ["m2", "m1"]
    assert trace.df["arrival_s"].to_list() == [0.0, 3.0]
    assert trace.df["input_tokens"].to_list() == [12, 5]
    assert trace.df["output_tokens"].to_list() == [30, 7]


def test_openai_batch_output_marks_failures(tmp_path: Path) -> None:
    def rec(created: int, status: int, err: object) -> dict:
        body = {"created": created, "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        return {"id": "x", "custom_id": "r", "response": {"status_code": status, "body": body}, "error": err}

    path = tmp_path / "batch_out.jsonl"
    recs = [rec(10, 200, None), rec(11, 500, {"code": "x"}), rec(12, 200, None), rec(13, 429, None)]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    trace = ingest(path)
    assert trace.meta["source_variant"] == "Batch API output"
    assert trace.df["failed"].to_list() == [False, True, False, True]
    assert trace.df["input_tokens"].to_list() == [3, 3, 3, 3]


def test_generic_csv_with_map_units_and_sessions(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "ts,n_in,n_out,user,ok,text\n"
        "1700000000.250,10,20,alice,true,hello\n"
        "1700000000.000,11,21,bob,false,\"a, b\"\n"
        "1700000001.500,12,22,alice,1,x\n"
    )
    trace = ingest(
        path, mapping="arrival=ts:s,input=n_in,output=n_out,session=user,failed=ok,prompt=text"
    )
    df = trace.df
    assert trace.meta["source_format"] == "csv" and trace.meta["timestamp_unit_source"] == "declared"
    assert df["arrival_s"].to_list() == pytest.approx([0.0, 0.25, 1.5])
    assert df["session_id"].to_list() == ["bob", "alice", "alice"]
    assert df["turn"].to_list() == [1, 1, 2]
    assert df["failed"].to_list() == [False, True, True]
    assert df["prompt"].to_list() == ["a, b", "hello", "x"]
    assert trace.meta["timestamp_resolution"] == "10 ms"


@pytest.mark.parametrize(
    ("value", "unit"),
    [("1700000000", "s"), ("1700000000123", "ms"), ("1700000000123456", "us")],
)
def test_generic_epoch_unit_detected_from_magnitude(tmp_path: Path, value: str, unit: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(f"t,i,o\n{value},1,2\n{int(value) + 1000},3,4\n")
    trace = ingest(path, mapping="arrival=t,input=i,output=o")
    assert trace.meta["timestamp_unit"] == unit
    assert trace.meta["timestamp_unit_source"] == "detected"
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    assert trace.df["arrival_s"].to_list() == pytest.approx([0.0, 1000 * scale])


def test_generic_jsonl_nested_keys_and_iso8601(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    path.write_text(
        '{"t": "2024-01-01T00:00:02.5Z", "u": {"in": 3, "out": 4}, "m": "a"}\n'
        '{"t": "2024-01-01T01:00:00+01:00", "u": {"in": 5, "out": 6}, "m": "b"}\n'
    )
    trace = ingest(path, mapping={"arrival": "t", "input": "u.in", "output": "u.out", "model": "m"})
    assert trace.df["arrival_s"].to_list() == [0.0, 2.5]  # +01:00 is the same instant as 00:00Z
    assert trace.df["model"].to_list() == ["b", "a"]
    assert trace.meta["timestamp_unit"] == "datetime"


def test_azure_2025_multimodal_keeps_num_images(tmp_path: Path) -> None:
    path = tmp_path / "AzureLMMInferenceTrace_multimodal.csv"
    path.write_text(
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
        "2024-10-15 00:00:01.5000000,0,50,10\n"
        "2024-10-15 00:00:00.0012345,2,100,20\n"
    )
    trace = ingest(path)
    assert trace.meta["source_variant"].startswith("2025")
    assert trace.df["num_images"].to_list() == [2, 0]
    assert trace.df["arrival_s"].to_list() == [0.0, pytest.approx(1.4987655, abs=1e-12)]
    assert trace.meta["timestamp_resolution"] == "100 ns"


def test_crlf_and_bom_files_read_like_plain_ones(tmp_path: Path, burstgpt_v1: Path) -> None:
    text = burstgpt_v1.read_text()
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    a, b = ingest(burstgpt_v1).df, ingest(path).df
    assert a.equals(b)


def test_forced_format_must_fit_the_file(mooncake: Path) -> None:
    with pytest.raises(Exception, match="expects CSV"):
        ingest(mooncake, fmt="burstgpt")
    with pytest.raises(UsageError, match="needs --map"):
        ingest(mooncake, fmt="jsonl")


@pytest.mark.parametrize("name", ["burstgpt_v1", "burstgpt_v3", "azure_conv", "mooncake"])
def test_clean_real_files_never_take_the_slow_path(name: str, request, monkeypatch) -> None:
    """The diagnosing slow path is for bad files; a clean one must stay vectorised."""
    from burstbench.traces.readers import csvread, jsonread

    def refuse(*args, **kwargs):
        raise AssertionError("slow path taken on a clean file")

    monkeypatch.setattr(csvread, "_slow", refuse)
    monkeypatch.setattr(jsonread, "_slow", refuse)
    assert len(ingest(request.getfixturevalue(name))) > 0


def test_azure_timestamps_with_utc_offset(tmp_path: Path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_code_1week.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.0099300+00:00,4808,10\n"
        "2024-05-10 02:00:01.0000000+02:00,3180,8\n"
    )
    trace = ingest(path)
    # 02:00:01+02:00 is 00:00:01 UTC: 0.99007 s after the first request.
    assert trace.df["arrival_s"].to_list() == [0.0, pytest.approx(0.99007, abs=1e-12)]
    assert trace.df["input_tokens"].to_list() == [4808, 3180]


def test_gzip_files_are_read_through_a_temporary_copy(tmp_path: Path, azure_conv: Path) -> None:
    import gzip

    gz = tmp_path / "AzureLMMInferenceTrace_multimodal.csv.gz"
    gz.write_bytes(gzip.compress(azure_conv.read_bytes()))
    trace = ingest(gz)
    assert trace.df.equals(ingest(azure_conv).df)
    assert trace.meta["source_compression"] == "gzip"
    assert trace.meta["source_file"] == str(gz.resolve())
    bad = tmp_path / "bad.csv.gz"
    lines = azure_conv.read_text().splitlines(keepends=True)
    lines[99] = "2023-11-16 18:20:00.0000000,12x,5\n"
    bad.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(Exception) as info:
        ingest(bad)
    assert str(info.value).startswith(f"{bad}:100, field 'ContextTokens'")


def test_bailian_deep_chains_resolve_to_their_root(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    recs, parent_of = [], {}
    next_id = 1
    for _conv in range(30):
        parent, depth = -1, rng.randint(1, 150)  # chains deeper than a few jumps
        for turn in range(1, depth + 1):
            recs.append({"chat_id": next_id, "parent_chat_id": parent, "timestamp": rng.uniform(0, 1e4),
                         "turn": turn, "input_length": 5, "output_length": 1, "type": "text", "hash_ids": []})
            parent_of[next_id] = parent
            parent, next_id = next_id, next_id + 1
    rng.shuffle(recs)
    path = tmp_path / "deep.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def root(cid: int) -> int:
        while parent_of[cid] != -1:
            cid = parent_of[cid]
        return cid

    order = sorted(range(len(recs)), key=lambda i: (recs[i]["timestamp"], i))
    df = ingest(path).df
    assert df["session_id"].to_list() == [str(root(recs[i]["chat_id"])) for i in order]
    assert df["turn"].to_list() == [recs[i]["turn"] for i in order]
