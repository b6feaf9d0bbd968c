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
from burstbench.limits import MAX_TOKENS

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


async def read_stream(resp: aiohttp.ClientResponse, out: Outcome, clock: Clock, *, chat: bool, keep_text: bool,
                  fail: Fail) -> None:
    """The hot loop: one clock() per socket read, per event only what is needed.

    Reasoning flags and per-chunk token counts are kept as sparse lists and
    expanded into the Outcome's arrays once, at the end."""
    parser = SSEParser()
    feed = parser.feed
    read = resp.content.readany
    decode = _decode_event
    keep = keep_text
    texts: list[str] = []
    chunk_t = out.chunk_t
    ct_append = chunk_t.append
    reasoning_at: list[int] = []  # indexes of reasoning-only chunks
    tokens_at: list[tuple[int, int]] = []  # (index, tokens) from per-chunk usage
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    timed = isinstance(proto, TimedResponseHandler)
    perf = _perf
    visible = None
    usage: dict | None = None
    prev_ct = 0
    finish = None
    done = False
    eof = False
    try:
        while True:
            raw = await read()
            t = clock()
            if timed and proto.rx_perf:  # back-date to when the bytes arrived
                t -= perf() - proto.rx_perf
            if raw:
                try:
                    events = feed(raw)
                except SSEError as e:
                    fail(out, "error", "sse_malformed", e)
                    break
            else:
                eof = True
                events = parser.finish()
            try:
                for ev in events:
                    if ev == DONE:
                        done = True
                        break
                    try:
                        obj = decode(ev)
                    except ValueError:
                        fail(
                            out,
                            "error",
                            "sse_malformed",
                            f"invalid JSON in SSE data: {ev[:200]!r}",
                        )
                        break
                    if type(obj) is not dict:
                        fail(
                            out,
                            "error",
                            "sse_malformed",
                            f"SSE data is not an object: {ev[:200]!r}",
                        )
                        break
                    choices = obj.get("choices")
                    if choices:
                        c = choices[0]
                        if chat:
                            d = c.get("delta") or c.get("message") or {}
                            content = d.get("content") or d.get("tool_calls")
                            if content:
                                token = True
                            elif d.get("reasoning_content") or d.get("reasoning"):
                                reasoning_at.append(len(chunk_t))
                                token = True
                            else:  # "" content: a token without text, unless role-only
                                token = d.get("content") is not None and "role" not in d
                        else:
                            content = c.get("text")
                            token = content is not None
                        if c.get("finish_reason"):
                            finish = str(c["finish_reason"])
                        if token:
                            ct_append(t)
                            if content:
                                if visible is None:
                                    visible = t
                                if keep and type(content) is str:
                                    texts.append(content)
                            u = obj.get("usage")
                            if u and (ctok := u.get("completion_tokens")) is not None:
                                ctok = count(ctok)
                                tokens_at.append((len(chunk_t) - 1, ctok - prev_ct))
                                prev_ct = ctok
                                usage = u
                            continue
                    u = obj.get("usage")
                    if u:
                        usage = u
                        if (ctok := u.get("completion_tokens")) is not None:
                            prev_ct = count(ctok)
                    elif "error" in obj or obj.get("object") == "error":
                        fail(out, "error", "stream_error", message_of(obj))
                        break
            except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
                # valid JSON of the wrong shape, e.g. {"choices": [1]}
                fail(out, "error", "sse_malformed", f"unexpected SSE event shape ({e})")
            if done or eof or out.status != "ok":
                break
        if out.status != "ok":
            resp.close()  # drop the connection: the rest of this stream is unusable
        elif done and not resp.content.is_eof():
            await drain(resp)
    finally:
        # also on an exception (stall, drop, cancel): keep what was measured
        n = len(chunk_t)
        if n:
            out.first_token_s = chunk_t[0]
            out.last_token_s = chunk_t[-1]
        out.first_visible_s = visible
        flags = array("b", bytes(n))
        for i in reasoning_at:
            flags[i] = 1
        out.chunk_reasoning = flags
        toks = array("i", [-1]) * n
        for i, k in tokens_at:
            toks[i] = k
        out.chunk_tokens = toks
        if tokens_at and len(tokens_at) == n:
            out.output_tokens_counted = sum(k for _, k in tokens_at)
        else:
            out.output_tokens_counted = n  # one per chunk when the server does not say
        if usage is not None:
            apply_usage(out, usage)
        if keep:
            out.text = "".join(texts)
        out.finish_reason = finish
    if out.status == "ok" and not done and not (len(chunk_t) and finish):
        out.status = "error"
        out.error_class = "truncated"
        out.error_message = f"stream ended without [DONE] after {len(chunk_t)} token chunks" + (
            "" if finish else " and without a finish_reason"
        )
        if not chunk_t and usage is None:  # nothing at all: say what came instead
            out.error_message += f" (Content-Type: {resp.content_type})"

async def read_body(resp: aiohttp.ClientResponse, out: Outcome, clock: Clock, *, chat: bool, keep_text: bool,
                fail: Fail) -> None:
    body = await resp.read()
    t = clock()
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    if isinstance(proto, TimedResponseHandler) and proto.rx_perf:
        t -= _perf() - proto.rx_perf
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
