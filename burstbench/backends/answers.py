"""Reading an OpenAI-compatible answer into an ``Outcome``: the SSE stream or the JSON body.

The per-chunk hot path of every live run (see ``openai.py``'s module docstring for the
timing and failure definitions it implements): one clock reading per socket read,
back-dated to when the bytes arrived (``TimedResponseHandler``), SSE events parsed in
C-level splits (``sse.py``), JSON decoded by orjson where it can, and per-chunk flags
and token counts kept sparse until the stream ends. Split from the backend so the
request side (session, pool, credentials, payload) and the answer side each stay one
screenful of concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from array import array
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from burstbench.backends.base import Clock, Outcome
from burstbench.backends.sse import DONE, SSEError, SSEParser
from burstbench.backends.wire import Connection, Exchange, WireError
from burstbench.limits import MAX_SSE_EVENT_BYTES, MAX_TOKENS

_perf = time.perf_counter

Fail = Callable[[Outcome, str, str, object], None]  # (outcome, status, error class, error or message)

class TimedResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, noting when bytes last came off the socket.

    A chunk is timestamped by when it arrived, not by when this request's task got
    to run again: with hundreds of streams in one loop the two differ by the loop's
    backlog, which would otherwise be added to TTFT and ITL."""

    rx_perf = 0.0

    def data_received(self, data: bytes) -> None:
        # aiohttp 3.14's resume_reading() calls data_received(b"") from inside every
        # readany() to resume its parser: no bytes arrived, and stamping it would move
        # rx_perf to when the task ran, undoing the back-dating below.
        if data:
            self.rx_perf = _perf()
        super().data_received(data)


MESSAGE_MAX = 500
ERROR_BODY_MAX = 64 * 1024  # of an HTTP error's body, read for its message
_loads = json.loads
_scan = json.JSONDecoder().scan_once  # the C scanner, without loads()' per-call overhead
try:
    from orjson import loads as _orjson_loads
except ImportError:  # an environment installed before orjson was a dependency
    _orjson_loads = None


def _decode_event(ev: bytes) -> Any:
    """JSON of one SSE payload; ValueError when it is not exactly one JSON value.

    Decoding is the largest single part of the client's per-chunk CPU. orjson takes
    ~0.9 us for a vLLM-sized chunk, the stdlib's C scanner below ~2.1 us
    (``json.loads(bytes)`` ~4 us). orjson is strict RFC 8259, a subset of what the
    stdlib accepts, so whatever it refuses (NaN, Infinity, 1e400, lone surrogates,
    bad UTF-8, extra data) goes on to the stdlib path and is accepted or refused as
    before. The one value it decodes differently is an integer outside 64 bits,
    which comes back as the nearest float: no token count that large fits a
    result column, and a check for long digit runs would cost half the gain."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(ev)
        except ValueError:
            pass
    s = ev.decode()
    try:
        obj, end = _scan(s, 0)
    except StopIteration:  # the scanner's "no value here" (e.g. leading spaces)
        return _loads(s)  # raises ValueError when it is not JSON at all
    if end != len(s) and s[end:].strip():
        raise ValueError(f"extra data after the JSON value at {end}")
    return obj


class StreamAnswer:
    """One streamed answer's state: fed each socket read's bytes with their arrival time.

    The per-chunk work of both transports (aiohttp's reader task and the wire
    protocol's callback): SSE split, JSON decode, token and reasoning flags. Reasoning
    flags and per-chunk token counts are kept as sparse lists and expanded into the
    Outcome's arrays once, in ``close``."""

    __slots__ = ("chat", "chunk_t", "done", "fail", "feed_sse", "finish", "keep", "out", "parser",
                 "prev_ct", "reasoning_at", "texts", "tokens_at", "usage", "visible")

    def __init__(self, out: Outcome, *, chat: bool, keep_text: bool, fail: Fail) -> None:
        self.out = out
        self.chat = chat
        self.keep = keep_text
        self.fail = fail
        self.parser = SSEParser()
        self.feed_sse = self.parser.feed
        self.texts: list[str] = []
        self.chunk_t = out.chunk_t
        self.reasoning_at: list[int] = []  # indexes of reasoning-only chunks
        self.tokens_at: list[tuple[int, int]] = []  # (index, tokens) from per-chunk usage
        self.visible: float | None = None
        self.usage: dict | None = None
        self.prev_ct = 0
        self.finish: str | None = None
        self.done = False  # [DONE] seen

    def feed(self, raw: bytes, t: float) -> bool:
        """One read's bytes (b"": end of stream) that arrived at ``t``; True when the answer
        is over: [DONE], end of stream, or a failure (``out.status`` says which)."""
        out = self.out
        if raw:
            try:
                events = self.feed_sse(raw)
            except SSEError as e:
                self.fail(out, "error", "sse_malformed", e)
                return True
        else:
            events = self.parser.finish()
        chunk_t = self.chunk_t
        chat = self.chat
        append = chunk_t.append
        decode = _decode_event
        try:
            for ev in events:
                if ev == DONE:
                    self.done = True
                    return True
                try:
                    obj = decode(ev)
                except ValueError:
                    self.fail(out, "error", "sse_malformed", f"invalid JSON in SSE data: {ev[:200]!r}")
                    return True
                if type(obj) is not dict:
                    self.fail(out, "error", "sse_malformed", f"SSE data is not an object: {ev[:200]!r}")
                    return True
                choices = obj.get("choices")
                if choices:
                    c = choices[0]
                    if chat:
                        d = c.get("delta") or c.get("message") or {}
                        content = d.get("content") or d.get("tool_calls")
                        if content:
                            token = True
                        elif d.get("reasoning_content") or d.get("reasoning"):
                            self.reasoning_at.append(len(chunk_t))
                            token = True
                        else:  # "" content: a token without text, unless role-only
                            token = d.get("content") is not None and "role" not in d
                    else:
                        content = c.get("text")
                        token = content is not None
                    if c.get("finish_reason"):
                        self.finish = str(c["finish_reason"])
                    if token:
                        append(t)
                        if content:
                            if self.visible is None:
                                self.visible = t
                            if self.keep and type(content) is str:
                                self.texts.append(content)
                        u = obj.get("usage")
                        if u and (ctok := u.get("completion_tokens")) is not None:
                            ctok = count(ctok)
                            self.tokens_at.append((len(chunk_t) - 1, ctok - self.prev_ct))
                            self.prev_ct = ctok
                            self.usage = u
                        continue
                u = obj.get("usage")
                if u:
                    self.usage = u
                    if (ctok := u.get("completion_tokens")) is not None:
                        self.prev_ct = count(ctok)
                elif "error" in obj or obj.get("object") == "error":
                    self.fail(out, "error", "stream_error", message_of(obj))
                    return True
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            # valid JSON of the wrong shape, e.g. {"choices": [1]}
            self.fail(out, "error", "sse_malformed", f"unexpected SSE event shape ({e})")
            return True
        return not raw

    def close(self) -> None:
        """Fill the Outcome from what was read; also after a stall, drop or cancel, so the
        times measured so far are kept. A stream that ended without [DONE] and without
        both content and a finish_reason is ``truncated``."""
        out = self.out
        chunk_t = self.chunk_t
        n = len(chunk_t)
        if n:
            out.first_token_s = chunk_t[0]
            out.last_token_s = chunk_t[-1]
        out.first_visible_s = self.visible
        flags = array("b", bytes(n))
        for i in self.reasoning_at:
            flags[i] = 1
        out.chunk_reasoning = flags
        toks = array("i", [-1]) * n
        for i, k in self.tokens_at:
            toks[i] = k
        out.chunk_tokens = toks
        if self.tokens_at and len(self.tokens_at) == n:
            out.output_tokens_counted = sum(k for _, k in self.tokens_at)
        else:
            out.output_tokens_counted = n  # one per chunk when the server does not say
        if self.usage is not None:
            apply_usage(out, self.usage)
        if self.keep:
            out.text = "".join(self.texts)
        out.finish_reason = self.finish

    def verdict(self, content_type: str) -> None:
        """After ``close``, when the stream ended normally: was it complete?"""
        out = self.out
        n = len(self.chunk_t)
        if out.status == "ok" and not self.done and not (n and self.finish):
            out.status = "error"
            out.error_class = "truncated"
            out.error_message = f"stream ended without [DONE] after {n} token chunks" + (
                "" if self.finish else " and without a finish_reason"
            )
            if not n and self.usage is None:  # nothing at all: say what came instead
                out.error_message += f" (Content-Type: {content_type})"


async def read_stream(resp: aiohttp.ClientResponse, out: Outcome, clock: Clock, *, chat: bool, keep_text: bool,
                      fail: Fail) -> None:
    """aiohttp's reader: one clock() per socket read, back-dated to when the bytes arrived."""
    answer = StreamAnswer(out, chat=chat, keep_text=keep_text, fail=fail)
    feed = answer.feed
    read = resp.content.readany
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    timed = isinstance(proto, TimedResponseHandler)
    perf = _perf
    try:
        while True:
            raw = await read()
            t = clock()
            if timed and proto.rx_perf:  # back-date to when the bytes arrived
                t -= perf() - proto.rx_perf
            if feed(raw, t):
                break
        if out.status != "ok":
            resp.close()  # drop the connection: the rest of this stream is unusable
        elif answer.done and not resp.content.is_eof():
            await drain(resp)
    finally:
        answer.close()
    answer.verdict(resp.content_type)


async def read_body(resp: aiohttp.ClientResponse, out: Outcome, clock: Clock, *, chat: bool, keep_text: bool,
                    fail: Fail) -> None:
    body = await resp.read()
    t = clock()
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    if isinstance(proto, TimedResponseHandler) and proto.rx_perf:
        t -= _perf() - proto.rx_perf
    parse_body(body, t, out, chat=chat, keep_text=keep_text, fail=fail)


def parse_body(body: bytes, t: float, out: Outcome, *, chat: bool, keep_text: bool, fail: Fail) -> None:
    """A whole (non-streamed) answer that arrived at ``t``: one chunk."""
    try:
        obj = _loads(body)
    except ValueError:
        fail(out, "error", "malformed", f"response is not JSON: {body[:200]!r}")
        return
    if type(obj) is not dict:
        fail(out, "error", "malformed", f"response is not a JSON object: {body[:200]!r}")
        return
    if "error" in obj or obj.get("object") == "error":
        fail(out, "error", "stream_error", message_of(obj))
        return
    try:
        choices = obj.get("choices") or []
        content = reasoning = None
        if choices:
            c = choices[0]
            if chat:
                m = c.get("message") or c.get("delta") or {}
                content = m.get("content") or m.get("tool_calls")
                reasoning = m.get("reasoning_content") or m.get("reasoning")
            else:
                content = c.get("text")
            fr = c.get("finish_reason")
            out.finish_reason = str(fr) if fr else None
        usage = obj.get("usage")
        if content or reasoning:
            ctok = usage.get("completion_tokens") if usage else None
            n_tok = count(ctok) if ctok is not None else -1
            out.chunk_t.append(t)
            out.chunk_reasoning.append(0 if content else 1)
            out.chunk_tokens.append(n_tok)
            out.first_token_s = out.last_token_s = t
            if content:
                out.first_visible_s = t
            if keep_text and isinstance(content, str):
                out.text = content
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        fail(out, "error", "malformed", f"unexpected response shape ({e})")
        return
    out.output_tokens_counted = None  # one body: nothing to count without a tokenizer
    if usage:
        apply_usage(out, usage)


class WireAnswer(Exchange):
    """An answer read by the wire transport's socket callbacks (``wire.py``) into an Outcome.

    The same reading as aiohttp's path (``StreamAnswer``, ``parse_body``, ``http_error``),
    driven by the connection instead of a task: ``done`` resolves when the answer is over,
    with None or the ``WireError`` that ended it. A streamed answer's stall watch is one
    timer re-armed from the connection's last read, not one per chunk."""

    def __init__(self, out: Outcome, clock: Clock, *, stream: bool, chat: bool, keep_text: bool,
                 fail: Fail) -> None:
        self.out = out
        self.clock = clock
        self.stream = stream
        self.chat = chat
        self.keep_text = keep_text
        self.fail = fail
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.answer: StreamAnswer | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = MAX_SSE_EVENT_BYTES  # a whole JSON answer is one event's worth
        self.content_type = "application/octet-stream"
        self.reason = ""
        self.retry_after: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.ended: WireError | bool | None = False  # False until over; then None or what ended it

    def head(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.out.http_status = status
        self.reason = reason
        self.retry_after = headers.get("retry-after")
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        self.content_type = ctype or "application/octet-stream"
        if status != 200:
            self.limit = ERROR_BODY_MAX
        elif self.stream and self.content_type != "application/json":
            self.answer = StreamAnswer(self.out, chat=self.chat, keep_text=self.keep_text, fail=self.fail)

    def data(self, body: bytes, t: float) -> bool:
        if self.answer is not None:
            if self.answer.feed(body, t):
                self.reuse = self.out.status == "ok"
                self._resolve(None)
                return True
            return False
        self.parts.append(body)
        self.size += len(body)
        if self.size <= self.limit:
            return False
        if self.out.http_status != 200:  # enough of an error's body for its message
            self.end(t)
            return True
        self.fail(self.out, "error", "malformed", f"response body longer than {self.limit:,} bytes")
        self.reuse = False
        self._resolve(None)
        return True

    def end(self, t: float) -> None:
        out = self.out
        if self.answer is not None:
            self.answer.feed(b"", t)
        elif out.http_status != 200:
            http_error(out, self.reason, self.retry_after, b"".join(self.parts)[:ERROR_BODY_MAX])
        else:
            parse_body(b"".join(self.parts), t, out, chat=self.chat, keep_text=self.keep_text, fail=self.fail)
        self._resolve(None)

    def lost(self, err: WireError) -> None:
        self._resolve(err)

    def _resolve(self, err: WireError | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.ended is False:
            self.ended = err
        if not self.done.done():  # (cancelled when the send's task was)
            self.done.set_result(err)

    def watch(self, conn: Connection, stall_s: float) -> None:
        """Fail the answer as ``stall`` when no byte arrives for ``stall_s``."""
        loop = asyncio.get_running_loop()
        clock = self.clock
        conn.last_rx = clock()

        def check() -> None:
            quiet = clock() - conn.last_rx
            if quiet >= stall_s:
                self._resolve(WireError("stall", f"no data for {stall_s} s (stall timeout)"))
            else:
                self._timer = loop.call_later(stall_s - quiet, check)

        self._timer = loop.call_later(stall_s, check)

    def close(self) -> None:
        """Fill the Outcome from what was read, however the answer ended; judge a whole stream."""
        if self._timer is not None:
            self._timer.cancel()
        if self.answer is not None:
            self.answer.close()
            if self.ended is None:
                self.answer.verdict(self.content_type)


def http_error(out: Outcome, reason: str, retry_after: str | None, body: bytes) -> None:
    """An HTTP error answer: its class, and its message from the body (or the reason phrase)."""
    out.status = "error"
    out.error_class = f"http_{out.http_status}"
    msg = message_of_body(body) or reason
    if retry_after:
        msg = f"{msg} (Retry-After: {retry_after})"
    out.error_message = msg


async def drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] (the chunked terminator) so the connection is reused;
    a server that keeps the stream open after [DONE] just loses the connection."""
    try:
        async with asyncio.timeout(1.0):
            await resp.content.read()
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        resp.close()
    except asyncio.CancelledError:
        # the answer was already complete: a (single) cancel here must not turn it
        # into a cancelled request; the connection is just not reused
        resp.close()
        task = asyncio.current_task()
        if task is not None and task.uncancel() > 0:
            raise


def apply_usage(out: Outcome, usage: Any) -> None:
    # a usage object of the wrong shape is ignored; the chunk counts remain
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        _apply_usage_fields(out, usage)


def count(value: Any) -> int:
    """A token count a server reported, as an int in [0, MAX_TOKENS]; ValueError otherwise.

    Why bounded: the counts go into 32-bit per-chunk arrays and result columns, and a
    count past 2^31 from a broken or hostile server raised OverflowError while the
    outcome was being saved, losing the request's timings; a negative one made the
    per-chunk deltas nonsense."""
    try:
        n = int(value)
    except OverflowError:  # int(inf): JSON's 1e400
        raise ValueError(f"token count {value} outside [0, {MAX_TOKENS}]") from None
    if not 0 <= n <= MAX_TOKENS:
        raise ValueError(f"token count {n} outside [0, {MAX_TOKENS}]")
    return n


def _apply_usage_fields(out: Outcome, usage: dict) -> None:
    ct = usage.get("completion_tokens")
    pt = usage.get("prompt_tokens")
    pd = usage.get("prompt_tokens_details")
    cd = usage.get("completion_tokens_details")
    cached = pd.get("cached_tokens") if isinstance(pd, dict) else None
    reasoning = cd.get("reasoning_tokens") if isinstance(cd, dict) else None
    # all counted before any is kept: one impossible count makes the whole object unusable
    ct, pt, cached, reasoning = (None if v is None else count(v) for v in (ct, pt, cached, reasoning))
    if ct is not None:
        out.output_tokens_server = ct
    if pt is not None:
        out.input_tokens_server = pt
    if cached is not None:
        out.cached_tokens = cached
    if reasoning is not None:
        out.reasoning_tokens = reasoning


def message_of(obj: dict) -> str:
    err = obj.get("error", obj)
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or json.dumps(err)[:MESSAGE_MAX]
        kind = err.get("type") or err.get("code")
        return f"{kind}: {msg}" if kind else str(msg)
    return str(err)


def message_of_body(body: bytes) -> str:
    if not body:
        return ""
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:MESSAGE_MAX].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        if "error" in obj or "message" in obj:
            return message_of(obj)
        if "detail" in obj:
            return str(obj["detail"])
    return body[:MESSAGE_MAX].decode("utf-8", "replace").strip()
