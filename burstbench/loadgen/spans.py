"""Server spans during a run: an OTLP/HTTP receiver, and the client's spans to a collector.

``run --server-spans HOST:PORT`` starts ``SpanReceiver`` before the first request:
an aiohttp server (its own thread and event loop, so a burst of spans never delays
a token timestamp in the supervisor) accepting ``POST /v1/traces`` as OTLP protobuf
or OTLP JSON. Each span whose trace id carries this run's prefix is joined to its
request by the id itself (``burstbench.otlp``) and handed to the recorder, which
writes ``server_spans`` rows while the run goes; spans of other traffic are counted
and dropped. Exporters batch (vLLM's every 5 s by default), so after the last answer
the run waits up to a grace window for the spans still on their way, and stops
early once every completed request has one.

``run --otlp-endpoint URL`` exports the client's own span per request (same trace
id, the span id the ``traceparent`` named as parent), so a user's Jaeger or Tempo
shows the client's and the server's span of one request in one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from burstbench.errors import UsageError
from burstbench.otlp import (
    SPAN_KIND_CLIENT,
    SpanData,
    client_span_id,
    collector_url,
    decode,
    phase_seconds,
    request_of,
    run_prefix,
    trace_id,
)

DEFAULT_SPANS_ADDRESS = "127.0.0.1:4318"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:4317"  # OTLP/gRPC's usual port: what vLLM exports to unless told otherwise
MAX_BODY_BYTES = 16 * 2**20  # one OTLP export; the SDK's batches are far smaller
MAX_SPANS = 2_000_000  # spans kept per run; more are counted, not stored
_EMPTY_RESPONSE = b""  # an empty ExportTraceServiceResponse serialises to no bytes


def parse_address(value: str, *, option: str = "--server-spans") -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``) into its parts; one-line error otherwise."""
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{option} {value!r}: expected HOST:PORT, e.g. {DEFAULT_SPANS_ADDRESS}")
    return host.strip("[]") or "127.0.0.1", int(port)


def span_row(run_id: str, request_id: int, span: SpanData, start_wall: float, received_wall: float | None) -> tuple:
    """One ``server_spans`` row (store column order) from a decoded span."""
    a = span.attributes
    phases = phase_seconds(a)

    def count(key: str) -> int | None:
        v = a.get(key)
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 2**62 else None

    return (
        run_id, request_id, span.trace_id.hex(), span.span_id.hex(), span.name, span.service,
        span.start_ns / 1e9 - start_wall if span.start_ns else None,
        received_wall - start_wall if received_wall is not None else None,
        phases["queue_s"], phases["prefill_s"], phases["decode_s"], phases["inference_s"],
        phases["ttft_s"], phases["e2e_s"], count("gen_ai.usage.prompt_tokens"),
        count("gen_ai.usage.completion_tokens"), span.attributes_json(),
    )


class SpanReceiver:
    """An OTLP/HTTP traces receiver for one run; ``sink`` gets (request id, span, received wall) lists."""

    def __init__(self, address: str, run_id: str, sink: Callable[[list[tuple[int, SpanData, float]]], None]) -> None:
        self.host, self.port = parse_address(address)
        self.run_id = run_id
        self.prefix = run_prefix(run_id)
        self.sink = sink
        self.joined: set[int] = set()
        self.foreign = 0  # spans of other traces (other runs, other clients)
        self.dropped = 0  # spans over MAX_SPANS
        self.bad_bodies = 0
        self._seen: set[bytes] = set()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None
        self._grpc: Any = None
        self.grpc_url: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1/traces"

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> SpanReceiver:
        """Listen (in a thread); raises UsageError in one line when the address is taken."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=main, name="span-receiver", daemon=True)
        self._thread.start()
        started.wait(30.0)
        if failure:
            exc = failure[0]
            why = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(f"--server-spans {self.host}:{self.port}: cannot listen ({why}); "
                             "pick a free port, e.g. --server-spans 127.0.0.1:4319") from None
        return self

    async def _listen(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port (tests): learn which
            self.port = self._runner.addresses[0][1]

    def start_grpc(self, address: str) -> SpanReceiver:
        """Also accept OTLP/gRPC (vLLM's default exporter) at ``address``; needs ``grpcio``."""
        try:
            import grpc
            from opentelemetry.proto.collector.trace.v1 import (
                trace_service_pb2,
                trace_service_pb2_grpc,
            )
        except ImportError:
            raise UsageError("--server-spans-grpc needs grpcio (pip install grpcio); or start vLLM with "
                             "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf and use --server-spans") from None
        from concurrent import futures

        from burstbench.otlp import spans_of

        host, port = parse_address(address, option="--server-spans-grpc")
        receiver = self

        class _Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.accept(spans_of(request), time.time())
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                             options=[("grpc.max_receive_message_length", MAX_BODY_BYTES)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(), server)
        bound = 0
        with contextlib.suppress(RuntimeError):  # grpcio raises RuntimeError when it cannot bind
            bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise UsageError(f"--server-spans-grpc {host}:{port}: cannot listen (address in use?); "
                             "pick a free port, e.g. --server-spans-grpc 127.0.0.1:4327")
        server.start()
        self._grpc = server
        self.grpc_url = f"{host}:{bound}"
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait(5.0)
            self._grpc = None
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)

    def __enter__(self) -> SpanReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the endpoint -------------------------------------------------------------------
    async def _export(self, request: Any) -> Any:
        from aiohttp import web

        ctype = request.content_type or "application/x-protobuf"
        if ctype not in ("application/x-protobuf", "application/protobuf", "application/json"):
            return web.Response(status=415, text=f"unsupported content type {ctype!r}; "
                                "send OTLP as application/x-protobuf or application/json")
        try:
            body = await request.read()
            spans = decode(body, ctype)
        except web.HTTPRequestEntityTooLarge:
            self.bad_bodies += 1
            return web.Response(status=413, text=f"body larger than {MAX_BODY_BYTES} bytes")
        except ValueError as exc:
            self.bad_bodies += 1
            return web.Response(status=400, text=f"not an OTLP traces export: {str(exc)[:200]}")
        self.accept(spans, time.time())
        if ctype == "application/json":
            return web.json_response({})
        return web.Response(body=_EMPTY_RESPONSE, content_type="application/x-protobuf")

    def accept(self, spans: Sequence[SpanData], received_wall: float) -> None:
        """Join spans to requests by trace id and pass the joined ones to the sink."""
        out: list[tuple[int, SpanData, float]] = []
        with self._cond:
            for sp in spans:
                rid = request_of(self.prefix, sp.trace_id)
                if rid is None or sp.kind == SPAN_KIND_CLIENT:
                    self.foreign += rid is None
                    continue
                if sp.span_id in self._seen:
                    continue  # an exporter's retry of a batch we already took
                if len(self._seen) >= MAX_SPANS:
                    self.dropped += 1
                    continue
                self._seen.add(sp.span_id)
                self.joined.add(rid)
                out.append((rid, sp, received_wall))
            if out:
                self._cond.notify_all()
        if out:
            self.sink(out)

    def wait_for(self, request_ids: set[int], timeout_s: float) -> set[int]:
        """Wait until every id in ``request_ids`` has a span, at most ``timeout_s``; the missing ids."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                missing = request_ids - self.joined
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return missing
                self._cond.wait(min(left, 0.2))


def vllm_hint(receiver_url: str, grpc_address: str | None = None) -> str:
    """How to start vLLM so its spans reach this receiver (vLLM exports gRPC unless told)."""
    if grpc_address:
        vllm = f"OTEL_BSP_SCHEDULE_DELAY=500 vllm serve MODEL --otlp-traces-endpoint {grpc_address}"
    else:
        vllm = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf OTEL_BSP_SCHEDULE_DELAY=500 "
                f"vllm serve MODEL --otlp-traces-endpoint {receiver_url}")
    return (f"start vLLM with: {vllm}   "
            f"(reference engine: burstbench serve ... --otlp-traces-endpoint {receiver_url})")


class ClientSpanExporter:
    """Posts one CLIENT span per finished request to a user's OTLP/HTTP collector.

    A thread with a queue: the supervisor hands over request rows and never waits on
    the network; a collector that is down costs a note, not the run."""

    def __init__(self, endpoint: str, run_id: str, start_wall: Callable[[], float | None],
                 *, batch: int = 512, timeout_s: float = 5.0) -> None:
        self.url = collector_url(endpoint)
        self.run_id = run_id
        self.start_wall = start_wall
        self.batch = batch
        self.timeout_s = timeout_s
        self.sent = 0
        self.errors: list[str] = []
        self._q: queue.Queue[list[SpanData] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="otlp-export", daemon=True)
        self._thread.start()

    def add_requests(self, rows: Sequence[tuple]) -> None:
        """Request tuples as workers batch them (``REQUEST_COLUMNS`` without run_id)."""
        t0 = self.start_wall()
        if t0 is None or not rows:
            return
        spans = []
        for r in rows:
            rid, sent, first, end, status = r[0], r[7], r[8], r[11], r[20]
            if sent is None:
                continue
            stop = end if end is not None else sent
            attrs: dict[str, Any] = {"burstbench.run_id": self.run_id, "burstbench.request_id": int(rid),
                                     "burstbench.status": status, "gen_ai.usage.prompt_tokens": int(r[12])}
            if first is not None:
                attrs["burstbench.ttft_s"] = first - sent
            if r[15] is not None:
                attrs["gen_ai.usage.completion_tokens"] = int(r[15])
            if r[21] is not None:
                attrs["http.response.status_code"] = int(r[21])
            spans.append(SpanData(trace_id(self.run_id, rid), client_span_id(self.run_id, rid), "llm_request client",
                                  int((t0 + sent) * 1e9), int((t0 + stop) * 1e9), attrs, kind=SPAN_KIND_CLIENT))
        for i in range(0, len(spans), self.batch):
            self._q.put(spans[i:i + self.batch])

    def _main(self) -> None:
        from burstbench.otlp import encode

        while (spans := self._q.get()) is not None:
            req = urllib.request.Request(self.url, data=encode(spans, "burstbench"), method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += len(spans)
            except OSError as exc:
                if len(self.errors) < 5:
                    self.errors.append(f"{self.url}: {getattr(exc, 'reason', exc)}")

    def close(self, timeout_s: float = 10.0) -> None:
        self._q.put(None)
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout_s)


class RunSpans:
    """What one run does with spans: the receiver, the client exporter, the grace wait.

    A context manager around the run: entering binds the receiver (before the run row
    exists, so a taken port fails in one line and leaves no run behind); ``finish``,
    called once the workers are done, waits for late spans and writes the notes."""

    def __init__(self, sc: Any, run_id: str, progress: bool = True) -> None:
        self.sc = sc
        self.run_id = run_id
        self.progress = progress
        self.receiver: SpanReceiver | None = None
        self.exporter: ClientSpanExporter | None = None
        self.recorder: Any = None

    def __enter__(self) -> RunSpans:
        if self.sc.server_spans or self.sc.server_spans_grpc:
            self.receiver = SpanReceiver(self.sc.server_spans or DEFAULT_SPANS_ADDRESS, self.run_id, self._sink)
            self.receiver.start()
            if self.sc.server_spans_grpc:
                try:
                    self.receiver.start_grpc(self.sc.server_spans_grpc)
                except BaseException:
                    self.receiver.stop()
                    raise
            import sys

            r = self.receiver
            grpc = f" and OTLP/gRPC at {r.grpc_url}" if r.grpc_url else ""
            print(f"server spans: OTLP/HTTP receiver at {r.url}{grpc}; {vllm_hint(r.url, r.grpc_url)}",
                  file=sys.stderr)
        return self

    def _sink(self, items: list[tuple[int, SpanData, float]]) -> None:
        if self.recorder is not None:
            self.recorder.add_server_spans(items)

    def attach(self, recorder: Any) -> None:
        self.recorder = recorder
        if self.receiver is not None:
            recorder.completed_ids = set()
        if self.sc.otlp_endpoint:
            self.exporter = ClientSpanExporter(self.sc.otlp_endpoint, self.run_id, lambda: recorder.start_wall)
            recorder.on_requests = self.exporter.add_requests

    def finish(self, sup: Any) -> None:
        """After the workers: flush, wait for late spans, note what joined and what did not.

        Never raises: it runs while the run row is being closed, which must happen anyway."""
        try:
            self._finish(sup)
        except Exception as exc:  # a bug here must not leave the run 'running'
            sup.notes.append(f"server spans: not finished ({type(exc).__name__}: {exc})")

    def _finish(self, sup: Any) -> None:
        rec = self.recorder
        rec.flush()
        if self.receiver is not None:
            done = set(rec.completed_ids or ())
            missing = self.receiver.wait_for(done, self.sc.spans_grace_s) if done else set()
            self.receiver.stop()
            r = self.receiver
            note = (f"server spans: {len(done) - len(missing)} of {len(done)} completed requests joined "
                    f"to a span from {r.url}")
            if missing:
                note += (f"; {len(missing)} never arrived within {self.sc.spans_grace_s:g}s "
                         f"(first ids: {', '.join(map(str, sorted(missing)[:5]))})")
            if r.foreign:
                note += f"; {r.foreign} spans of other traces ignored"
            if r.dropped or r.bad_bodies:
                note += f"; {r.dropped} spans over the {MAX_SPANS} cap dropped, {r.bad_bodies} bad exports refused"
            sup.notes.append(note)
        rec.flush()
        if self.exporter is not None:
            rec.on_requests = None
            self.exporter.close()
            note = f"client spans: {self.exporter.sent} exported to {self.exporter.url}"
            if self.exporter.errors:
                note += f"; errors: {'; '.join(self.exporter.errors)}"
            sup.notes.append(note)

    def __exit__(self, *exc: object) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if self.exporter is not None:
            self.exporter.close(timeout_s=1.0)
