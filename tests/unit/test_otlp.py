"""Trace ids, traceparent, OTLP encode/decode and the span phases of the engine and simulator."""

from __future__ import annotations

import itertools
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel
from burstbench.backends.reference.engine import EngineCore, Seq
from burstbench.backends.reference.models import load_model
from burstbench.backends.reference.simulator import simulate
from burstbench.otlp import (
    PREFILL,
    QUEUE,
    SPAN_KIND_SERVER,
    TTFT,
    SpanData,
    client_span_id,
    decode,
    encode,
    parse_traceparent,
    phase_attributes,
    request_of,
    run_prefix,
    trace_id,
    traceparent,
)
from burstbench.traces.schema import Trace, conform


def test_trace_id_carries_the_request_and_only_for_its_run():
    tid = trace_id("run-a", 12345)
    assert len(tid) == 16
    assert request_of(run_prefix("run-a"), tid) == 12345
    assert request_of(run_prefix("run-b"), tid) is None
    assert trace_id("run-a", 1) != trace_id("run-a", 2)
    assert client_span_id("run-a", 1) != client_span_id("run-a", 2)


def test_traceparent_is_w3c_sampled_and_parses_back():
    tp = traceparent("run-a", 7)
    version, tid, sid, flags = tp.split("-")
    assert (version, flags) == ("00", "01")  # sampled: vLLM's parent-based sampler drops 00
    assert parse_traceparent(tp) == (bytes.fromhex(tid), bytes.fromhex(sid))
    assert bytes.fromhex(sid) == client_span_id("run-a", 7)


@pytest.mark.parametrize("bad", [None, "", "00-abc-def-01", "ff-" + "1" * 32 + "-" + "2" * 16 + "-01",
                                 "00-" + "0" * 32 + "-" + "2" * 16 + "-01", "00-" + "g" * 32 + "-" + "2" * 16 + "-01"])
def test_invalid_traceparent_is_none(bad):
    assert parse_traceparent(bad) is None


def test_encode_decode_round_trip_protobuf_and_json():
    span = SpanData(trace_id("r", 3), b"\x01" * 8, "llm_request", 1_000, 2_000,
                    {QUEUE: 0.25, "gen_ai.usage.prompt_tokens": 12, "flag": True, "name": "x"},
                    client_span_id("r", 3), SPAN_KIND_SERVER)
    body = encode([span], "svc")
    (got,) = decode(body, "application/x-protobuf")
    assert (got.trace_id, got.span_id, got.parent_span_id, got.name) == (span.trace_id, span.span_id,
                                                                         span.parent_span_id, "llm_request")
    assert got.attributes == span.attributes and got.service == "svc"
    assert (got.start_ns, got.end_ns) == (1_000, 2_000)
    # OTLP/JSON as exporters write it: ids in hex, 64-bit integers as strings
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "j"}}]},
                              "scopeSpans": [{"spans": [{
                                  "traceId": span.trace_id.hex(), "spanId": "0101010101010101",
                                  "name": "llm_request", "kind": 2, "startTimeUnixNano": "5",
                                  "endTimeUnixNano": "9",
                                  "attributes": [{"key": QUEUE, "value": {"doubleValue": 0.5}},
                                                 {"key": "n", "value": {"intValue": "4"}}]}]}]}]}
    (js,) = decode(json.dumps(doc).encode(), "application/json")
    assert js.trace_id == span.trace_id and js.attributes == {QUEUE: 0.5, "n": 4} and js.service == "j"


def test_garbage_body_is_a_value_error():
    with pytest.raises(ValueError):
        decode(b"\xff\xff\xff not protobuf", "application/x-protobuf")


def test_phase_attributes_follow_vllms_arithmetic():
    a = phase_attributes(arrival=10.0, queued=10.0, scheduled=10.5, first_token=11.0, last_token=13.0, end=13.25,
                         prompt_tokens=5, completion_tokens=9)
    assert a[QUEUE] == pytest.approx(0.5) and a[PREFILL] == pytest.approx(0.5) and a[TTFT] == pytest.approx(1.0)
    assert a["gen_ai.latency.time_in_model_decode"] == pytest.approx(2.0)
    assert a["gen_ai.latency.time_in_model_inference"] == pytest.approx(2.5)
    assert a["gen_ai.latency.e2e"] == pytest.approx(3.25)
    # a request aborted before it was scheduled has no queue/prefill figure (not a zero)
    b = phase_attributes(arrival=1.0, queued=1.0, scheduled=None, first_token=None, last_token=None, end=2.0,
                         prompt_tokens=1, completion_tokens=0)
    assert QUEUE not in b and PREFILL not in b and TTFT not in b


def _engine(max_num_seqs: int = 1) -> EngineCore:
    cost = CostModel(load_model("llama-3.1-8b"), load_hardware("h100-sxm"))
    return EngineCore(cost, 1000, block_size=16, max_num_seqs=max_num_seqs, max_num_batched_tokens=8192)


def test_engine_records_the_iteration_that_first_scheduled_a_request():
    eng = _engine(max_num_seqs=1)
    a, b = Seq(rid=0, prompt_len=32, max_out=3), Seq(rid=1, prompt_len=32, max_out=3)
    eng.add(a)
    eng.add(b)
    admitted = []
    while eng.has_work():
        out = eng.step(collect=True)
        admitted.append([s.rid for s in out.admitted])
    assert a.sched_it == 0 and admitted[0] == [0]
    # b waits for a's three iterations (one seat), then is admitted once
    assert b.sched_it == 3 and admitted[3] == [1]
    assert sum(len(x) for x in admitted) == 2
    assert b.first_it == b.sched_it  # a short prompt prefills in the iteration that schedules it


def test_simulated_spans_decompose_the_simulated_ttft(tmp_path):
    # a burst onto one seat: later requests queue, so queue time must grow along the burst
    n = 12
    tr = Trace(conform(pl.DataFrame({"arrival_s": np.zeros(n), "input_tokens": np.full(n, 256),
                                     "output_tokens": np.full(n, 8)})))
    out = tmp_path / "s.duckdb"
    simulate(tr, model="llama-3.1-8b", hardware="h100-sxm", out=out, max_num_seqs=1)
    con = duckdb.connect(str(out), read_only=True)
    rows = con.execute(
        "SELECT r.request_id, r.first_token_s - r.sent_s, s.ttft_s, s.queue_s, s.prefill_s, s.arrival_s - r.sent_s,"
        " r.last_token_s - r.sent_s, s.e2e_s, s.attributes FROM requests r JOIN server_spans s USING (run_id, request_id)"
        " ORDER BY 1").fetchall()
    assert len(rows) == n
    queues = [r[3] for r in rows]
    for _rid, ttft_c, ttft_s, q, p, transit, e2e_c, e2e_s, attrs in rows:
        assert ttft_s == pytest.approx(ttft_c, abs=1e-9)  # no network in virtual time
        assert q + p == pytest.approx(ttft_s, abs=1e-9)  # nothing hidden: queue + prefill is the TTFT
        assert q >= 0 and p > 0 and transit == 0
        assert e2e_s == pytest.approx(e2e_c, abs=1e-9)
        assert json.loads(attrs)[QUEUE] == pytest.approx(q)
    assert queues[0] == 0 and all(b > a for a, b in itertools.pairwise(queues))
