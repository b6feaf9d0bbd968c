"""OpenTelemetry spans on the wire: trace ids, vLLM's phase attributes, OTLP encode/decode.

This module sits at the package base (beside ``store``) because three parts speak
the same protocol: the load generator sends a W3C ``traceparent`` with every
request and receives the server's spans, the reference engine emits spans like
vLLM's, and ``--otlp-endpoint`` exports the client's own spans. Message types come
from ``opentelemetry-proto`` (no hand-written protobuf); POSTing them needs nothing
but an HTTP client, so the OpenTelemetry SDK is not a dependency.

Trace ids are *derived*, not random: the first 8 bytes hash the run id, the last 8
are the request id. Joining a server span to its request is then exact and needs no
lookup table, and a span from another run (or other traffic to the same server)
is recognised by its prefix and never joined by mistake.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from burstbench import __version__

# vLLM's span attribute names (vllm/tracing/utils.py SpanAttributes), all seconds.
QUEUE = "gen_ai.latency.time_in_queue"
TTFT = "gen_ai.latency.time_to_first_token"
PREFILL = "gen_ai.latency.time_in_model_prefill"
DECODE = "gen_ai.latency.time_in_model_decode"
INFERENCE = "gen_ai.latency.time_in_model_inference"
E2E = "gen_ai.latency.e2e"
PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
REQUEST_ID = "gen_ai.request.id"
MAX_TOKENS = "gen_ai.request.max_tokens"

MAX_ATTRIBUTES_JSON = 8192  # raw attributes kept per span; a span with more is cut, not refused
# Span.SpanKind values of the OTLP proto. The message classes are imported only where
# spans are encoded or decoded: a load-generator worker needs a traceparent, not protobuf
# (importing it cost each worker process ~0.2-1 s of start-up on a busy host).
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3


def run_prefix(run_id: str) -> bytes:
    """The 8 bytes every trace id of a run starts with."""
    return hashlib.blake2b(run_id.encode(), digest_size=8).digest()


def trace_id(run_id: str, request_id: int) -> bytes:
    """The 16-byte trace id of one request of one run (see the module docstring)."""
    return run_prefix(run_id) + (request_id & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")


def client_span_id(run_id: str, request_id: int) -> bytes:
    """The client span's id: the parent the server's span continues."""
    sid = hashlib.blake2b(f"{run_id}/{request_id}".encode(), digest_size=8).digest()
    return sid if any(sid) else b"\x00" * 7 + b"\x01"  # all-zero ids are invalid in W3C


def traceparent(run_id: str, request_id: int) -> str:
    """A W3C ``traceparent`` header value, sampled (flag 01).

    Sampled matters: vLLM's tracer samples parent-based, so a request sent with
    flags 00 would produce no span at all."""
    return f"00-{trace_id(run_id, request_id).hex()}-{client_span_id(run_id, request_id).hex()}-01"


def parse_traceparent(value: str | None) -> tuple[bytes, bytes] | None:
    """(trace id, parent span id) from a ``traceparent`` header, or None when invalid."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        tid, sid = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return None
    if not any(tid) or not any(sid):
        return None
    return tid, sid


def request_of(prefix: bytes, tid: bytes) -> int | None:
    """The request id a trace id carries when it belongs to the run with ``prefix``."""
    if len(tid) != 16 or tid[:8] != prefix:
        return None
    return int.from_bytes(tid[8:], "big")


def phase_attributes(*, arrival: float, queued: float, scheduled: float | None, first_token: float | None,
                     last_token: float | None, end: float, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """vLLM's per-request latency attributes from the engine's timestamps (seconds, one clock).

    The same arithmetic as vLLM's ``OutputProcessor.do_tracing``: queue = scheduled -
    queued, prefill = first token - scheduled, decode = last - first token, inference =
    last token - scheduled, TTFT = first token - arrival, E2E = end - arrival. A phase the
    request never reached (aborted before it) is left out rather than given as 0."""
    attrs: dict[str, Any] = {E2E: end - arrival, PROMPT_TOKENS: int(prompt_tokens),
                             COMPLETION_TOKENS: int(completion_tokens)}
    if scheduled is not None:
        attrs[QUEUE] = scheduled - queued
    if first_token is not None:
        attrs[TTFT] = first_token - arrival
        if scheduled is not None:
            attrs[PREFILL] = first_token - scheduled
    if first_token is not None and last_token is not None:
        attrs[DECODE] = last_token - first_token
    if scheduled is not None and last_token is not None:
        attrs[INFERENCE] = last_token - scheduled
    return attrs


# -- values -------------------------------------------------------------------------------
def _any_value(v: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def _py_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_py_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _py_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes_of(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _py_value(kv.value) for kv in kvs}


# -- spans ----------------------------------------------------------------------------------
@dataclass
class SpanData:
    """One span, decoded: what the receiver and the exporters pass around."""

    trace_id: bytes
    span_id: bytes
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    parent_span_id: bytes = b""
    kind: int = SPAN_KIND_SERVER
    service: str | None = None

    def attributes_json(self) -> str:
        text = json.dumps(self.attributes, default=str, sort_keys=True)
        if len(text) > MAX_ATTRIBUTES_JSON:
            text = json.dumps({"truncated": True, **{k: self.attributes[k] for k in sorted(self.attributes)[:32]}},
                              default=str)[:MAX_ATTRIBUTES_JSON]
        return text


def encode(spans: Iterable[SpanData], service: str) -> bytes:
    """An ``ExportTraceServiceRequest`` (OTLP/HTTP protobuf body) holding ``spans``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    scope = ScopeSpans(scope=InstrumentationScope(name="burstbench", version=__version__))
    for s in spans:
        scope.spans.append(Span(
            trace_id=s.trace_id, span_id=s.span_id, parent_span_id=s.parent_span_id, name=s.name,
            kind=s.kind, start_time_unix_nano=s.start_ns, end_time_unix_nano=s.end_ns,
            attributes=[KeyValue(key=k, value=_any_value(v)) for k, v in s.attributes.items()],
        ))
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    msg = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])])
    return msg.SerializeToString()


def decode(body: bytes, content_type: str) -> list[SpanData]:
    """Spans of an OTLP/HTTP body (``application/x-protobuf`` or ``application/json``).

    Raises ValueError on a body that is neither; the receiver answers 400."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    msg = ExportTraceServiceRequest()
    if content_type.startswith("application/json"):
        from google.protobuf import json_format

        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), msg)
    else:
        from google.protobuf.message import DecodeError

        try:
            msg.ParseFromString(body)
        except DecodeError as exc:
            raise ValueError(f"not an OTLP protobuf body ({exc})") from None
    return spans_of(msg)


def spans_of(msg: Any) -> list[SpanData]:
    """The spans of an ``ExportTraceServiceRequest`` message (HTTP body or gRPC call)."""
    out: list[SpanData] = []
    for rs in msg.resource_spans:
        service = attributes_of(rs.resource.attributes).get("service.name")
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(SpanData(bytes(sp.trace_id), bytes(sp.span_id), sp.name, sp.start_time_unix_nano,
                                    sp.end_time_unix_nano, attributes_of(sp.attributes), bytes(sp.parent_span_id),
                                    sp.kind, service if isinstance(service, str) else None))
    return out


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(obj: Any) -> Any:
    """OTLP/JSON writes ids as hex (a documented exception to proto3 JSON's base64)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _ID_KEYS and isinstance(v, str) and v and all(c in "0123456789abcdefABCDEF" for c in v):
                out[k] = base64.b64encode(bytes.fromhex(v)).decode() if len(v) % 2 == 0 else v
            else:
                out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(obj, list):
        return [_hex_ids_to_base64(v) for v in obj]
    return obj


def collector_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as ``HOST:PORT`` or a URL (``/v1/traces`` added)."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    return url if url.rstrip("/").endswith("/v1/traces") else url.rstrip("/") + "/v1/traces"


def wall_ns(mono_s: float, mono_now: float, wall_now: float) -> int:
    """Unix nanoseconds of a monotonic timestamp, given one (monotonic, wall) pair."""
    return int((wall_now + (mono_s - mono_now)) * 1e9)


def phase_seconds(attrs: Mapping[str, Any]) -> dict[str, float | None]:
    """The six latency phases of a span's attributes, keyed by the ``server_spans`` columns."""
    def num(key: str) -> float | None:
        v = attrs.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    return {"queue_s": num(QUEUE), "prefill_s": num(PREFILL), "decode_s": num(DECODE),
            "inference_s": num(INFERENCE), "ttft_s": num(TTFT), "e2e_s": num(E2E)}
