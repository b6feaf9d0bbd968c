"""Server spans joined to client timings: the reference server exports vLLM's spans over real sockets.

Everything is real: the reference server on 127.0.0.1 POSTs OTLP/HTTP protobuf to
the receiver ``run --server-spans`` starts, the load generator sends a traceparent
with every request, and the joined rows land in a DuckDB file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from array import array

import duckdb
import numpy as np
import pytest
from aiohttp import web
from even_trace import even_trace
from url_process import url_process

from burstbench.analysis.metrics import open_store
from burstbench.analysis.phases import decomposition, per_request
from burstbench.backends.base import Outcome
from burstbench.errors import UsageError
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.spans import SpanReceiver
from burstbench.otlp import (
    QUEUE,
    SPAN_KIND_CLIENT,
    SpanData,
    decode,
    encode,
    parse_traceparent,
    phase_attributes,
)
from burstbench.traces.schema import Trace, write_trace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trace(n: int, gap: float) -> Trace:
    return even_trace(n, gap, prompt=200, out=12)


def joined(path, run_id):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            "SELECT r.request_id, r.first_token_s - r.sent_s, s.ttft_s, s.queue_s, s.prefill_s, s.arrival_s - r.sent_s,"
            " s.trace_id, s.name FROM requests r JOIN server_spans s USING (run_id, request_id)"
            " WHERE r.run_id = ? AND r.status = 'ok' ORDER BY 1", [run_id]).fetchall()
    finally:
        con.close()


def notes(path, run_id) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return json.loads(con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()[0])
    finally:
        con.close()


def test_reference_server_spans_join_every_request_and_queue_grows_with_load(tmp_path):
    port = free_port()
    out = tmp_path / "r.duckdb"
    # two seats: at 40 req/s the requests queue for them; at 4 req/s they rarely do
    # the server in its own process, as a user runs it (a thread would share the client's GIL)
    with url_process("burstbench", "serve", "--port", "0", "--max-num-seqs", "2",
                     "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces") as (url, _proc):
        queue_means = []
        for gap in (0.25, 0.025):
            sc = Scenario(url=url, server_spans=f"127.0.0.1:{port}", scrape_metrics=False, spans_grace_s=10.0)
            res = execute(trace(40, gap), sc, out, progress=False)
            rows = joined(out, res.run_id)
            assert len(rows) == 40, notes(out, res.run_id)  # every request joined
            for rid, ttft_c, ttft_s, q, p, transit, tid, name in rows:
                assert name == "llm_request" and int(tid[16:], 16) == rid
                assert ttft_s <= ttft_c  # the server cannot see the first token before the client does
                assert q >= 0 and p > 0 and q + p == pytest.approx(ttft_s, abs=1e-6)
                assert transit >= -0.002  # the server's arrival follows the client's send (clock reads 1-2 ms apart)
            diffs = sorted(r[1] - r[2] for r in rows)
            print(f"gap {gap}: client - server TTFT ms p50 {1e3 * diffs[20]:.2f} p90 {1e3 * diffs[36]:.2f} "
                  f"max {1e3 * diffs[-1]:.2f}")
            assert any("40 of 40 completed requests joined" in n for n in notes(out, res.run_id))
            queue_means.append(float(np.mean([r[3] for r in rows])))
    assert queue_means[1] > 2 * queue_means[0] + 0.001, queue_means
    con = open_store(out)
    try:
        d = decomposition(con, res.run_id)
        frame = per_request(con, res.run_id)
    finally:
        con.close()
    assert d["joined"] == d["completed"] == 40 and d["missing"] == 0
    assert frame.height == 40
    parts = sum(frame[f"{p}_s"] for p in ("network", "server_other", "queue", "prefill"))
    assert ((parts - frame["ttft_s"]).abs() < 1e-9).all()  # per request, the parts are the TTFT
    # the parts add up to the client's TTFT from schedule: mean of sums = sum of means
    total = sum(d["parts_ms"][p]["mean"] for p in ("network", "server_other", "queue", "prefill"))
    assert total == pytest.approx(d["ttft_ms"]["mean"], rel=1e-9)


class SpanningBackend:
    """An in-test backend that answers at once and, like a server, exports a span per request.

    Spans are posted ``delay_s`` after the answer (exporters batch); ids in ``drop`` never get one."""

    name = "spanning"

    def __init__(self, collector: str, delay_s: float, drop: tuple[int, ...] = ()) -> None:
        self.collector, self.delay_s, self.drop = collector, delay_s, drop
        self.headers: dict[int, str | None] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, req, clock):
        self.headers[req.request_id] = req.traceparent
        sent = clock()
        await asyncio.sleep(0.002)
        first = clock()
        out = Outcome(request_id=req.request_id, sent_s=sent, first_token_s=first, first_visible_s=first,
                      last_token_s=first, end_s=first, chunk_t=array("d", [first]), chunk_tokens=array("i", [1]),
                      chunk_reasoning=array("b", [0]), output_tokens_server=1)
        if req.request_id not in self.drop:
            tid, parent = parse_traceparent(req.traceparent)
            now = time.time_ns()
            span = SpanData(tid, (req.request_id + 1).to_bytes(8, "big"), "llm_request", now - 2_000_000, now,
                            phase_attributes(arrival=0.0, queued=0.0, scheduled=0.0005, first_token=0.0015,
                                             last_token=0.0015, end=0.0015, prompt_tokens=1, completion_tokens=1),
                            parent)
            body = encode([span], "fake")
            threading.Timer(self.delay_s, _post, (self.collector, body)).start()
        return out


def _post(url: str, body: bytes, ctype: str = "application/x-protobuf") -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_late_spans_within_grace_are_joined_and_missing_ones_counted(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/traces"
    backend = SpanningBackend(url, delay_s=1.0, drop=(3,))
    sc = Scenario(url="http://127.0.0.1:9", server_spans=f"127.0.0.1:{port}", scrape_metrics=False,
                  spans_grace_s=4.0)
    out = tmp_path / "r.duckdb"
    t0 = time.monotonic()
    res = execute(trace(6, 0.01), sc, out, progress=False, backend_factory=lambda: backend)
    waited = time.monotonic() - t0
    rows = joined(out, res.run_id)
    # every span came a second after the run's last answer, and all but the dropped one joined
    assert [r[0] for r in rows] == [0, 1, 2, 4, 5]
    assert all(backend.headers[i] for i in range(6)) and len(set(backend.headers.values())) == 6
    note = next(n for n in notes(out, res.run_id) if n.startswith("server spans"))
    assert "5 of 6 completed requests joined" in note and "1 never arrived" in note and "first ids: 3" in note
    assert waited >= 4.0  # the grace window was used in full, waiting for request 3
    con = open_store(out)
    try:
        d = decomposition(con, res.run_id)
    finally:
        con.close()
    assert (d["completed"], d["joined"], d["missing"]) == (6, 5, 1)


def test_receiver_ignores_foreign_and_repeated_spans_and_refuses_garbage():
    got: list = []
    with SpanReceiver("127.0.0.1:0", "run-x", got.extend) as rec:
        from burstbench.otlp import trace_id

        mine = SpanData(trace_id("run-x", 5), b"\x02" * 8, "llm_request", 1, 2, {QUEUE: 0.1})
        other = SpanData(trace_id("run-y", 5), b"\x03" * 8, "llm_request", 1, 2, {QUEUE: 0.1})
        client = SpanData(trace_id("run-x", 6), b"\x04" * 8, "c", 1, 2, {}, kind=SPAN_KIND_CLIENT)
        body = encode([mine, other, client], "s")
        assert _post(rec.url, body) == 200
        assert _post(rec.url, body) == 200  # an exporter's retry
        assert _post(rec.url, b"\xff\xfe garbage") == 400
        assert _post(rec.url, b"{}", "text/plain") == 415
        doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": trace_id("run-x", 9).hex(),
                                                             "spanId": "0909090909090909", "name": "j"}]}]}]}
        assert _post(rec.url, json.dumps(doc).encode(), "application/json") == 200
    assert [(rid, sp.name) for rid, sp, _ in got] == [(5, "llm_request"), (9, "j")]
    assert rec.foreign == 2 and rec.bad_bodies == 1


def test_a_taken_port_is_one_line_and_leaves_no_run_row(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = tmp_path / "r.duckdb"
        sc = Scenario(url="http://127.0.0.1:9", server_spans=f"127.0.0.1:{port}", scrape_metrics=False)
        with pytest.raises(UsageError, match=f"--server-spans 127.0.0.1:{port}: cannot listen"):
            execute(trace(2, 0.01), sc, out, progress=False, backend_factory=lambda: SpanningBackend("x", 0))
    assert not out.exists()


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:99999", "host:"])
def test_bad_server_spans_address_is_a_field_error(value):
    with pytest.raises(UsageError, match="server_spans"):
        Scenario(url="http://127.0.0.1:9", server_spans=value).validate()


def test_client_spans_reach_a_collector_in_the_servers_trace(tmp_path):
    """--otlp-endpoint: the collector gets a CLIENT span whose id the server's span names as parent."""
    bodies: list[bytes] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def collect(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    runner_box: list = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/v1/traces", collect)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        runner_box.append((runner, runner.addresses[0][1]))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    th = threading.Thread(target=main, daemon=True)
    th.start()
    ready.wait(10)
    port = free_port()
    try:
        backend = SpanningBackend(f"http://127.0.0.1:{port}/v1/traces", delay_s=0.0)
        sc = Scenario(url="http://127.0.0.1:9", server_spans=f"127.0.0.1:{port}", scrape_metrics=False,
                      otlp_endpoint=f"http://127.0.0.1:{runner_box[0][1]}", spans_grace_s=5.0)
        out = tmp_path / "r.duckdb"
        res = execute(trace(4, 0.01), sc, out, progress=False, backend_factory=lambda: backend)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
    client = [s for b in bodies for s in decode(b, "application/x-protobuf")]
    assert sorted(s.attributes["burstbench.request_id"] for s in client) == [0, 1, 2, 3]
    assert all(s.kind == SPAN_KIND_CLIENT and s.end_ns >= s.start_ns for s in client)
    con = duckdb.connect(str(out), read_only=True)
    server = {r[0] for r in con.execute("SELECT trace_id FROM server_spans WHERE run_id = ?", [res.run_id]).fetchall()}
    con.close()
    assert {s.trace_id.hex() for s in client} == set(server)  # one trace per request, both sides
    for s in client:  # the span id the traceparent named is the client span's
        assert parse_traceparent(backend.headers[s.attributes["burstbench.request_id"]])[1] == s.span_id
    assert any("client spans: 4 exported" in n for n in notes(out, res.run_id))


def test_serve_cli_exports_spans_and_run_cli_prints_the_vllm_hint(tmp_path):
    """The two commands a user runs, as processes: serve --otlp-traces-endpoint, run --server-spans."""
    port = free_port()
    tr = tmp_path / "t.parquet"
    write_trace(trace(8, 0.05), tr)
    out = tmp_path / "r.duckdb"
    with url_process("burstbench", "serve", "--port", "0", "--time-scale", "10",
                     "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces") as (url, _proc):
        p = subprocess.run([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(tr), "-o", str(out),
                            "--server-spans", f"127.0.0.1:{port}", "--quiet", "--no-scrape"],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf" in p.stderr
    assert f"--otlp-traces-endpoint http://127.0.0.1:{port}/v1/traces" in p.stderr
    a = subprocess.run([sys.executable, "-m", "burstbench", "analyze", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    d = json.loads(a.stdout)["ttft_decomposition"]
    assert (d["completed"], d["joined"]) == (8, 8)
    assert set(d["parts_ms"]) == {"client", "network", "server_other", "queue", "prefill"}
    h = subprocess.run([sys.executable, "-m", "burstbench", "analyze", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert "server spans joined: 8 of 8" in h.stdout  # a result: stdout


def test_grpc_export_is_joined_like_http():
    """vLLM exports OTLP/gRPC unless told otherwise: the receiver takes that too."""
    grpc = pytest.importorskip("grpc")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    from burstbench.otlp import trace_id

    got: list = []
    with SpanReceiver("127.0.0.1:0", "run-g", got.extend) as rec:
        rec.start_grpc("127.0.0.1:0")
        mine = SpanData(trace_id("run-g", 11), b"\x05" * 8, "llm_request", 1, 2, {QUEUE: 0.25})
        other = SpanData(trace_id("run-h", 11), b"\x06" * 8, "llm_request", 1, 2, {QUEUE: 0.25})
        msg = trace_service_pb2.ExportTraceServiceRequest.FromString(encode([mine, other], "vllm"))
        with grpc.insecure_channel(rec.grpc_url) as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(msg, timeout=10)
        with socket.socket() as s:  # a taken port is one line
            s.bind(("127.0.0.1", 0))
            s.listen()
            with pytest.raises(UsageError, match="--server-spans-grpc"):
                SpanReceiver("127.0.0.1:0", "x", got.extend).start_grpc(f"127.0.0.1:{s.getsockname()[1]}")
    assert [(rid, sp.attributes[QUEUE], sp.service) for rid, sp, _ in got] == [(11, 0.25, "vllm")]
    assert rec.foreign == 1
