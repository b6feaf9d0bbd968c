"""Writing one generation request's answer: as it is generated (SSE) or whole.

``SingleWriter`` is the hot path: one choice of plain text, SSE fragments
pre-built (``ChunkShape``), written by the replica loop itself while the reader
keeps up; injected stream faults (stall, disconnect, malformed event, in-stream
error) happen here. ``MultiWriter`` serves everything else vLLM's API offers on
top: ``n`` choices, logprobs, ``echo``, stop strings, per-chunk usage
(``continuous_usage_stats``); its events are built as dicts, one per engine
iteration, with every choice that moved in it. Injected stream faults (stall,
disconnect, malformed, in-stream error) apply to single-choice plain streams
only; HTTP-error and slow-first-byte faults apply to every request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from burstbench.backends.reference.engine import Seq
from burstbench.backends.reference.faults import FaultPlan
from burstbench.backends.reference.protocol import GenRequest
from burstbench.backends.reference.realtime import Stream
from burstbench.backends.reference.responses import (
    DONE_EVENT,
    MALFORMED_EVENT,
    STREAM_ERROR_EVENT,
    ChunkShape,
    answer_entries,
    chat_logprobs,
    choice,
    completion_logprobs,
    error,
    prompt_entries,
    response_body,
    stream_choice,
    usage,
)
from burstbench.backends.reference.spans import SpanEmitter
from burstbench.backends.reference.stats import ServerStats
from burstbench.backends.reference.tokens import Answer

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass
class Choice:
    """One sequence of a request: what it will say, its engine sequence, its token feed."""

    index: int
    answer: Answer
    seq: Seq
    st: Stream
    done: int = 0  # tokens written
    offset: int = 0  # characters written (completions' logprobs text_offset)
    entries: list[Any] = field(default_factory=list)  # logprob entries of a whole answer


class _Writer:
    """What both writers share: the request, its ids and the server's counters."""

    def __init__(self, request: web.Request, req: GenRequest, choices: list[Choice], plan: FaultPlan, t0: float, *, model: str, stats: ServerStats, stall_s: float,
                 spans: SpanEmitter | None = None) -> None:
        self.request = request
        self.req = req
        self.chat = req.chat
        self.choices = choices
        self.plan = plan
        self.t0 = t0
        self.model = model
        self.stats = stats
        self.stall_s = stall_s
        self.spans = spans
        self.id = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.shape = ChunkShape(self.id, self.created, model, req.chat, choices[0].answer.finish_reason)

    def usage(self, done: int | None = None) -> dict[str, Any]:
        """Usage of the whole answer (or of ``done`` tokens so far); cached tokens as the engine found them."""
        n_out = sum(c.answer.n for c in self.choices) if done is None else done
        reasoning = sum(c.answer.reasoning for c in self.choices) if done is None else 0
        cached = max(self.choices[0].seq.cached_tokens, 0)
        return usage(self.req.n_prompt, n_out, cached=cached, reasoning=reasoning)

    def _record_done(self, loop: asyncio.AbstractEventLoop) -> None:
        stats = self.stats
        stats.e2e.observe(loop.time() - self.t0)
        reason = self.choices[0].answer.finish_reason
        stats.success[reason] = stats.success.get(reason, 0) + 1
        if self.spans is not None:  # one span per request, timed by its first choice (as vLLM's)
            st = self.choices[0].st
            self.spans.request_done(
                self.request.headers.get("traceparent"), self.id, arrival=self.t0, scheduled=st.t_sched,
                first_token=st.t_first, last_token=st.t_last, end=loop.time(), prompt_tokens=self.req.n_prompt,
                completion_tokens=sum(c.answer.n for c in self.choices))

    def _closed(self) -> web.Response:
        return error(503, "the server is shutting down", etype="server_error", code="shutting_down")


class SingleWriter(_Writer):
    """One choice of plain text (the fast path; see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ch = self.choices[0]
        self.answer = ch.answer
        self.seq = ch.seq
        self.st = ch.st
        self.n_out = ch.answer.n
        self.reasoning_n = ch.answer.reasoning
        self.done = 0  # tokens written
        self.failed = False
        self.resp: web.StreamResponse | None = None

    def _event(self, start: int, count: int) -> str:
        """One SSE event with tokens [start, start+count); the last one carries finish_reason (as vLLM's)."""
        text = self.answer.text(start, count)
        return self.shape.event(text, reasoning=start < self.reasoning_n, finish=start + count >= self.n_out)

    async def _next_tokens(self) -> int:
        """Wait for the engine to release tokens; returns how many are ready."""
        st = self.st
        await st.event.wait()
        st.event.clear()
        n = st.pending
        st.pending = 0
        return n

    async def whole(self) -> web.Response:
        loop = asyncio.get_running_loop()
        done = 0
        first = True
        while done < self.n_out:
            n = await self._next_tokens()
            if self.st.closed:
                return self._closed()
            if first:
                self.stats.ttft.observe(loop.time() - self.t0)
                first = False
            done += n
        if self.plan.stall_at is not None:
            await asyncio.sleep(self.stall_s)
        self._record_done(loop)
        return web.json_response(response_body(self.id, self.created, self.model, self.chat, [whole_choice(self.req, self.choices[0])], self.usage()))

    def render(self, n: int, deadline: float) -> bytes:
        """SSE bytes for the next ``n`` tokens (role chunk first, split at the reasoning boundary)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        stats = self.stats
        parts: list[str] = []
        done = self.done
        if done == 0:
            stats.ttft.observe(now - self.t0)
            if self.chat:
                parts.append(self.shape.role())
        end = done + n
        r = self.reasoning_n
        if done < r < end:
            parts.append(self._event(done, r - done))
            parts.append(self._event(r, end - r))
        else:
            parts.append(self._event(done, n))
        stats.late(now - deadline)
        stats.tokens_written += n
        self.done = end
        return "".join(parts).encode()

    async def stream(self) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        stats = self.stats
        plan = self.plan
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(self.request)
        self.resp = resp
        plain = plan.stall_at is None and plan.disconnect_at is None and plan.malformed_at is None and plan.stream_error_at is None
        if plain:
            self.st.direct = self  # the replica loop writes it
        try:
            while self.done < self.n_out:
                n = await self._next_tokens()
                if self.failed or self.st.closed:
                    return resp
                if n == 0:
                    continue
                if plain:  # a plain stream whose reader fell behind: written here, may wait
                    await resp.write(self.render(n, self.st.deadline))
                    continue
                late = loop.time() - self.st.deadline
                parts: list[str] = []
                done = self.done
                if done == 0:
                    stats.ttft.observe(loop.time() - self.t0)
                    if self.chat:
                        parts.append(self.shape.role())
                # split at the reasoning boundary and at injected faults
                end = done + n
                cuts = sorted({done, end, *(x for x in (self.reasoning_n, plan.stall_at, plan.disconnect_at, plan.malformed_at, plan.stream_error_at) if x is not None and done < x < end)})
                for a, b in itertools.pairwise(cuts):
                    if plan.disconnect_at is not None and a == plan.disconnect_at:
                        await _flush(resp, parts)
                        self._disconnect()
                        return resp
                    if plan.stream_error_at is not None and a == plan.stream_error_at:
                        parts.append(STREAM_ERROR_EVENT)
                        parts.append(DONE_EVENT)
                        await _flush(resp, parts)
                        return resp
                    if plan.malformed_at is not None and a == plan.malformed_at:
                        parts.append(MALFORMED_EVENT)
                    if plan.stall_at is not None and a == plan.stall_at:
                        await _flush(resp, parts)
                        await asyncio.sleep(self.stall_s)
                    parts.append(self._event(a, b - a))
                await _flush(resp, parts)
                stats.late(late)
                stats.tokens_written += n
                self.done = end
            tail = self.shape.usage_event(self.usage()) if self.req.include_usage else ""
            tail += DONE_EVENT
            await resp.write(tail.encode())
            self._record_done(loop)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; the caller aborts the request in the engine
        finally:
            self.st.direct = None
        return resp

    def _disconnect(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


async def _flush(resp: web.StreamResponse, parts: list[str]) -> None:
    if parts:
        await resp.write("".join(parts).encode())
        parts.clear()


def _echo(req: GenRequest) -> str:
    return req.prompt.text if req.echo else ""


def whole_choice(req: GenRequest, ch: Choice) -> dict[str, Any]:
    """One choice of a whole response, with its logprobs and echo."""
    a = ch.answer
    k = req.logprobs
    content = a.text(a.reasoning, a.n - a.reasoning)
    echo = _echo(req)
    logprobs = None
    if k is not None:
        entries = answer_entries(a, a.reasoning, a.n - a.reasoning, k)
        if req.chat:
            logprobs = chat_logprobs(entries, k)
        else:
            logprobs = completion_logprobs(prompt_entries(echo) + entries if echo else entries, k, 0)
    if req.chat:
        reasoning = a.text(0, a.reasoning) if a.reasoning else None
        return choice(True, echo + content, a.finish_reason, reasoning=reasoning, index=ch.index, logprobs=logprobs, stop_reason=a.stop_reason)
    return choice(False, echo + a.text(0, a.n), a.finish_reason, index=ch.index, logprobs=logprobs, stop_reason=a.stop_reason)


class MultiWriter(_Writer):
    """``n`` choices, logprobs, echo, stop strings, per-chunk usage (see the module's docstring).

    The choices' streams share one event, so one wake-up collects every
    choice that moved in an engine iteration.
    """

    async def _wait(self) -> bool:
        """Wait for the engine; False when the server is shutting down."""
        ev = self.choices[0].st.event
        await ev.wait()
        ev.clear()
        return not any(c.st.closed for c in self.choices)

    def _finished(self) -> bool:
        return all(c.done >= c.answer.n for c in self.choices)

    async def whole(self) -> web.Response:
        loop = asyncio.get_running_loop()
        first = True
        while not self._finished():
            if not await self._wait():
                return self._closed()
            if first:
                self.stats.ttft.observe(loop.time() - self.t0)
                first = False
            for c in self.choices:
                c.done += c.st.pending
                c.st.pending = 0
        self._record_done(loop)
        choices = [whole_choice(self.req, c) for c in self.choices]
        return web.json_response(response_body(self.id, self.created, self.model, self.chat, choices, self.usage()))

    def _opening(self) -> list[dict[str, Any]]:
        """Chat's role delta per choice; the echoed text first (with its logprobs when asked)."""
        req = self.req
        echo = _echo(req)
        out = []
        for c in self.choices:
            logprobs = None
            if echo and req.logprobs is not None and not req.chat:
                logprobs = completion_logprobs(prompt_entries(echo), req.logprobs, 0)
                c.offset = len(echo)
            if req.chat or echo:
                out.append(stream_choice(req.chat, c.index, echo if (echo or req.chat) else None, role=req.chat, logprobs=logprobs))
        return out

    def _moved(self, c: Choice, n: int) -> list[dict[str, Any]]:
        """Stream choices for ``n`` new tokens of ``c``, split at its reasoning boundary."""
        a, req = c.answer, self.req
        start, end = c.done, c.done + n
        cuts = sorted({start, end, *((a.reasoning,) if start < a.reasoning < end else ())})
        out = []
        for lo, hi in itertools.pairwise(cuts):
            reasoning = lo < a.reasoning
            text = a.text(lo, hi - lo)
            logprobs = None
            if req.logprobs is not None and not reasoning:
                entries = answer_entries(a, lo, hi - lo, req.logprobs)
                logprobs = chat_logprobs(entries, req.logprobs) if req.chat else completion_logprobs(entries, req.logprobs, c.offset)
            c.offset += len(text)
            last = hi >= a.n
            fin = a.finish_reason if last else None
            if text or last or logprobs:
                out.append(stream_choice(req.chat, c.index, text, reasoning=reasoning, finish_reason=fin, stop_reason=a.stop_reason if last else None, logprobs=logprobs))
        c.done = end
        return out

    async def stream(self) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        req, stats = self.req, self.stats
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(self.request)
        written = 0
        try:
            while not self._finished():
                if not await self._wait():
                    return resp
                parts: list[str] = []
                if written == 0:
                    stats.ttft.observe(loop.time() - self.t0)
                    opening = self._opening()
                    if opening:
                        parts.append(self.shape.chunk(opening, self.usage(0) if req.continuous_usage else None))
                moving = [c.st.deadline for c in self.choices if c.st.pending]
                late = loop.time() - min(moving) if moving else 0.0
                n_new = 0
                for c in self.choices:
                    n, c.st.pending = c.st.pending, 0
                    if n:
                        n_new += n
                        written += n
                        moved = self._moved(c, n)
                        if moved:
                            parts.append(self.shape.chunk(moved, self.usage(written) if req.continuous_usage else None))
                if parts:
                    await resp.write("".join(parts).encode())
                if n_new:
                    stats.late(late)
                    stats.tokens_written += n_new
            tail = self.shape.usage_event(self.usage()) if req.include_usage else ""
            await resp.write((tail + DONE_EVENT).encode())
            self._record_done(loop)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; the caller aborts the requests in the engine
        return resp
