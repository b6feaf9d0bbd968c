"""The reference engine's OpenTelemetry spans: vLLM's per-request span, from either clock.

vLLM (``--otlp-traces-endpoint``) ends every request with one SERVER span named
``llm_request`` that continues the client's W3C ``traceparent`` and carries the
request's phases (queue, prefill, decode, inference, TTFT, E2E). The reference
engine does the same, so a measured run and a simulated one decompose alike:

- ``serve --otlp-traces-endpoint URL``: ``SpanEmitter`` batches spans and POSTs them
  as OTLP/HTTP protobuf from the server's event loop, every ``interval_s`` (vLLM's
  batch processor waits up to 5 s; a shorter wait only shortens the grace window);
- ``simulate``: ``simulated_span_frame`` writes the same phases straight into the
  ``server_spans`` table from the virtual-time timestamps.

The engine itself stays clock-free: it records the iteration that first scheduled a
request (``Seq.sched_it``); callers turn iterations into times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from burstbench.backends.reference.engine import DONE, Seq
from burstbench.otlp import (
    COMPLETION_TOKENS,
    DECODE,
    E2E,
    INFERENCE,
    MAX_TOKENS,
    PREFILL,
    PROMPT_TOKENS,
    QUEUE,
    REQUEST_ID,
    SPAN_KIND_SERVER,
    TTFT,
    SpanData,
    collector_url,
    encode,
    parse_traceparent,
    phase_attributes,
    run_prefix,
    wall_ns,
)

SPAN_NAME = "llm_request"  # vLLM's name for the request span
MAX_QUEUED_SPANS = 65_536  # spans waiting for export; a collector that is down costs spans, not memory


class SpanEmitter:
    """Batches finished-request spans and POSTs them to an OTLP/HTTP collector."""

    def __init__(self, endpoint: str, service: str, *, interval_s: float = 0.2) -> None:
        self.url = collector_url(endpoint)
        self.service = service
        self.interval_s = interval_s
        self.sent = self.dropped = self.failed = 0
        self._queue: list[SpanData] = []
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self._warned = False

    @classmethod
    def attach(cls, app: Any, endpoint: str, service: str) -> SpanEmitter:
        """An emitter started and stopped with an aiohttp application."""
        em = cls(endpoint, service)
        app.on_startup.append(em._start)
        app.on_cleanup.append(em._stop)
        return em

    async def _start(self, app: Any = None) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0))
        self._task = asyncio.create_task(self._loop())

    async def _stop(self, app: Any = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # what finished last still goes out
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        import aiohttp

        spans, self._queue = self._queue, []
        for i in range(0, len(spans), 512):
            part = spans[i:i + 512]
            try:
                async with self._session.post(self.url, data=encode(part, self.service),
                                              headers={"Content-Type": "application/x-protobuf"}) as resp:
                    await resp.read()
                    ok = resp.status < 300
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            else:
                why = f"HTTP {resp.status}"
            if ok:
                self.sent += len(part)
            else:
                self.failed += len(part)
                if not self._warned:  # once: a collector that is down must not flood the log
                    self._warned = True
                    print(f"span export to {self.url} failed ({why}); spans are dropped", file=sys.stderr)

    def request_done(self, header: str | None, request_id: str, *, arrival: float, scheduled: float | None,
                     first_token: float | None, last_token: float | None, end: float, prompt_tokens: int,
                     completion_tokens: int, max_tokens: int | None = None) -> None:
        """Queue the span of a finished request; times are ``loop.time()`` seconds."""
        if len(self._queue) >= MAX_QUEUED_SPANS:
            self.dropped += 1
            return
        scheduled, first_token, last_token = (None if t is None or t < 0 else t  # -1: never reached
                                              for t in (scheduled, first_token, last_token))
        ctx = parse_traceparent(header)
        tid, parent = ctx if ctx is not None else (os.urandom(16), b"")
        attrs = phase_attributes(arrival=arrival, queued=arrival, scheduled=scheduled, first_token=first_token,
                                 last_token=last_token, end=end, prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens)
        attrs[REQUEST_ID] = request_id
        if max_tokens is not None:
            attrs[MAX_TOKENS] = max_tokens
        wall = time.time()
        loop_now = asyncio.get_running_loop().time()  # the loop's clock is monotonic; align it once
        self._queue.append(SpanData(tid, os.urandom(8), SPAN_NAME, wall_ns(arrival, loop_now, wall),
                                    wall_ns(end, loop_now, wall), attrs, parent, SPAN_KIND_SERVER, self.service))


def iteration_starts(seq: Seq, times: np.ndarray) -> float:
    """Start of the iteration that first scheduled ``seq``, from its replica's end times.

    An iteration starts where the previous one ended, or at the arrival that woke an
    idle engine (the simulator moves an idle replica's clock to the next arrival)."""
    prev = float(times[seq.sched_it - 1]) if seq.sched_it > 0 else 0.0
    return max(prev, seq.arrival)


def simulated_span_frame(run_id: str, seqs: Sequence[Seq | None], replica_of: np.ndarray, times: list[array],
                         service: str) -> pl.DataFrame:
    """``server_spans`` rows of a simulation: vLLM's phases from virtual time, one per completed request.

    Column-wise (numpy) because a simulated hour has 10^4–10^6 requests: the phases are
    the same subtractions ``phase_attributes`` makes, element by element, and the
    attributes JSON is the text ``json.dumps(phase_attributes(...), sort_keys=True)``
    gives (keys in sorted order, floats as ``repr``), built without a dict per row."""
    idx = [i for i, s in enumerate(seqs) if s is not None and s.state == DONE and s.sched_it >= 0]
    n = len(idx)
    done = [seqs[i] for i in idx]
    rep = replica_of[idx].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    off = np.cumsum([0] + [len(t) for t in times])
    all_t = np.concatenate([np.frombuffer(t, dtype=np.float64) for t in times if len(t)] or [np.zeros(0)])
    base = off[rep]
    sched_it = np.fromiter((s.sched_it for s in done), dtype=np.int64, count=n)
    arrival = np.fromiter((s.arrival for s in done), dtype=np.float64, count=n)
    first = all_t[base + np.fromiter((s.first_it for s in done), dtype=np.int64, count=n)]
    last = all_t[base + np.fromiter((s.last_it for s in done), dtype=np.int64, count=n)]
    prev = np.where(sched_it > 0, all_t[np.maximum(base + sched_it - 1, 0)] if n else all_t[:0], 0.0)
    scheduled = np.maximum(prev, arrival)
    ph = {  # phase_attributes' arithmetic; queued = arrival, end = last token
        "queue_s": scheduled - arrival, "prefill_s": first - scheduled, "decode_s": last - first,
        "inference_s": last - scheduled, "ttft_s": first - arrival, "e2e_s": last - arrival,
    }
    prompt = [s.prompt_len for s in done]
    completion = [s.max_out for s in done]
    cols = {k: v.tolist() for k, v in ph.items()}
    attrs = [
        f'{{"{E2E}": {e2e!r}, "{DECODE}": {dec!r}, "{INFERENCE}": {inf!r}, "{PREFILL}": {pre!r}, '
        f'"{QUEUE}": {q!r}, "{TTFT}": {tt!r}, "{COMPLETION_TOKENS}": {c}, "{PROMPT_TOKENS}": {p}}}'
        for e2e, dec, inf, pre, q, tt, c, p in zip(
            cols["e2e_s"], cols["decode_s"], cols["inference_s"], cols["prefill_s"], cols["queue_s"],
            cols["ttft_s"], completion, prompt, strict=True)
    ]
    prefix = run_prefix(run_id).hex()
    rid = np.asarray(idx, dtype=np.int64)
    return pl.DataFrame({
        "run_id": pl.repeat(run_id, n, eager=True, dtype=pl.String),
        "request_id": rid,
        "trace_id": [f"{prefix}{i & 0xFFFF_FFFF_FFFF_FFFF:016x}" for i in idx],
        "span_id": [f"{i + 1:016x}" for i in idx],
        "name": pl.repeat(SPAN_NAME, n, eager=True, dtype=pl.String),
        "service": pl.repeat(service, n, eager=True, dtype=pl.String),
        "arrival_s": arrival,
        "received_s": pl.repeat(None, n, eager=True, dtype=pl.Float64),
        **ph,
        "prompt_tokens": pl.Series(prompt, dtype=pl.Int64),
        "completion_tokens": pl.Series(completion, dtype=pl.Int64),
        "attributes": pl.Series(attrs, dtype=pl.String),
    })
