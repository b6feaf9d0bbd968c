"""A configurable OpenAI-compatible streaming server for tests and benchmarks.

It stands in for vLLM where the point is the *client*: chunk timing is set
exactly (TTFT, inter-chunk gap, tokens per chunk, output length from
``max_tokens``), chunks are written against absolute deadlines from the request's
arrival (so a slow write does not shift later ones), and the server records the
``time.perf_counter()`` just before each chunk write (``ServerRecord.write_t``).
On Linux ``perf_counter`` is CLOCK_MONOTONIC, shared by every process on the
host, so a benchmark in another process can compare its own timestamps with
these.

Fault modes reproduce what real endpoints do to a load generator: HTTP 429
(with or without ``Retry-After``), 500, 503; a stall after k chunks; a dropped
connection mid-stream; malformed SSE; an error object inside a 200 stream; a
slow first byte (headers); a stream that ends without ``[DONE]`` or ends early.
``fault_every`` applies them to every k-th request only.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /metrics`` (Prometheus text with vLLM's metric names),
``GET /stats`` (the records as JSON, for out-of-process use; ``?bodies=1`` adds
the request bodies, ``?clear=1`` empties the list).

In-process::

    async with StreamServer(ttft_s=0.05, itl_s=0.02) as srv:
        ... srv.url ... srv.records ...

Separate process (benchmarks)::

    python -m burstbench.testing.stream_server --port 8123 --ttft 0.05 --itl 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import web

__all__ = ["ServerRecord", "StreamServer", "StreamSettings", "main"]

_perf = time.perf_counter


@dataclass
class StreamSettings:
    """How the server answers. Change ``server.settings`` between requests freely."""

    ttft_s: float = 0.0  # request arrival -> first token chunk
    itl_s: float = 0.0  # gap between token chunks
    tokens_per_chunk: int = 1
    default_output_tokens: int = 16  # when the request has no max_tokens
    reasoning_tokens: int = 0  # chat: the first n tokens come as reasoning_content deltas
    usage: str = "auto"  # auto (stream_options.include_usage) | always | never | continuous
    role_chunk: bool = True  # chat: open with a role-only delta, as vLLM does
    prompt_token_bias: int = 0  # added to the counted prompt words (e.g. 1 for a BOS token)
    cached_tokens: int | None = None  # reported as prompt_tokens_details.cached_tokens
    prefix_block: int = 0  # >0: a prefix cache over blocks of this many prompt words,
    # reporting the words of the longest already-seen block prefix as cached_tokens
    events_per_write: int = 1  # >1 batches SSE events per write when itl_s == 0 (capacity runs)
    crlf: bool = False  # end SSE lines with CRLF instead of LF
    keepalive: bool = False  # send a ': ping' comment before every chunk
    empty_every: int = 0  # every k-th token chunk has empty text (vLLM: token without text yet)
    # faults
    status: int | None = None  # answer with this HTTP status instead of streaming
    retry_after: str | None = None  # Retry-After header with `status`
    first_byte_delay_s: float = 0.0  # delay before the response headers
    stall_after: int | None = None  # stop writing after k token chunks, keep the socket open
    stall_max_s: float = 30.0  # bound on a stall (the server never hangs forever)
    drop_after: int | None = None  # abort the connection after k token chunks
    malformed_after: int | None = None  # write broken SSE/JSON after k token chunks
    error_after: int | None = None  # write an in-stream error object after k token chunks
    end_after: int | None = None  # end the stream cleanly after k chunks (no finish, no [DONE])
    omit_done: bool = False  # finish normally but never send [DONE]
    fault_every: int = 1  # apply the fault settings to every k-th request only

    def faults_off(self) -> StreamSettings:
        return replace(
            self,
            status=None,
            first_byte_delay_s=0.0,
            stall_after=None,
            drop_after=None,
            malformed_after=None,
            error_after=None,
            end_after=None,
            omit_done=False,
        )


@dataclass
class ServerRecord:
    """What the server saw and did for one request."""

    seq: int
    path: str
    received_s: float  # perf_counter when the body was read
    body: dict[str, Any]
    authorization: str | None
    accept_encoding: str | None = None
    status: int = 200
    write_t: list[float] = field(default_factory=list)  # perf_counter before each token chunk
    chunk_tokens: list[int] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int | None = None
    finished: bool = False  # the server wrote everything it meant to
    disconnected: bool = False  # the client went away first

    def to_json(self, with_body: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("authorization")
        if not with_body:
            d.pop("body")
        return d


class StreamServer:
    """An aiohttp OpenAI-compatible streaming server on 127.0.0.1 (async context manager)."""

    def __init__(
        self,
        settings: StreamSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "burstbench-test",
        owned_by: str = "bb",
        record: bool = True,
        max_records: int = 1_000_000,
        **overrides: Any,
    ) -> None:
        base = settings or StreamSettings()
        self.settings = replace(base, **overrides) if overrides else base
        self.host = host
        self.port = port
        self.model = model
        self.owned_by = owned_by  # /v1/models' owner; "vllm" makes clients treat it as vLLM
        self.record = record
        self.max_records = max_records
        self.records: list[ServerRecord] = []
        self.active = 0
        self.peak_active = 0
        self.seq = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Condition()
        self._watchers = 0
        self._seen_blocks: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> StreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """End open streams at their next chunk (stalls at once), give them up to a
        second to close cleanly, then shut the server down."""
        self._stop.set()
        if self.active:
            with contextlib.suppress(TimeoutError):
                await self.wait_until(lambda: self.active == 0, timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_records(self, n: int, *, finished: bool = True, timeout: float = 10.0) -> None:
        """Wait until ``n`` requests are recorded (and done, when ``finished``)."""

        def ready() -> bool:
            rs = self.records
            return len(rs) >= n and (not finished or all(r.finished or r.disconnected for r in rs))

        await self.wait_until(ready, timeout=timeout)

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; re-checked at every request start, chunk
        write and request end. Raises TimeoutError after ``timeout`` seconds."""
        self._watchers += 1
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        finally:
            self._watchers -= 1

    async def _notify(self) -> None:
        if self._watchers:
            async with self._changed:
                self._changed.notify_all()

    # -- handlers ---------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": self.owned_by}]}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        m = f'model_name="{self.model}"'
        text = (
            "# HELP vllm:num_requests_running Number of requests currently running.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{m}}} {float(self.active)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{m}}} 0.0\n"
            "# HELP vllm:gpu_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            f"vllm:gpu_cache_usage_perc{{{m}}} {min(1.0, self.active / 256):.4f}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage (vLLM V1 name). 1 means 100 percent.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{m}}} {min(1.0, self.active / 256):.4f}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt_tokens_total)}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{m}}} {float(self.generation_tokens_total)}\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _stats(self, request: web.Request) -> web.Response:
        with_body = request.query.get("bodies") == "1"
        data = [r.to_json(with_body) for r in self.records]
        if request.query.get("clear") == "1":
            self.records = []
        return web.json_response({"records": data, "active": self.active, "seq": self.seq})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            return web.json_response(
                {"error": {"message": "body is not JSON", "type": "BadRequestError", "code": 400}},
                status=400,
            )
        received = _perf()
        self.seq += 1
        s = self.settings
        if s.fault_every > 1 and self.seq % s.fault_every:
            s = s.faults_off()
        chat = request.path.endswith("/chat/completions")
        rec = ServerRecord(
            seq=self.seq,
            path=request.path,
            received_s=received,
            body=body if isinstance(body, dict) else {},
            authorization=request.headers.get("Authorization"),
            accept_encoding=request.headers.get("Accept-Encoding"),
        )
        if self.record and len(self.records) < self.max_records:
            self.records.append(rec)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        await self._notify()
        try:
            return await self._answer(request, rec, s, chat, received)
        except (ConnectionError, asyncio.CancelledError):
            rec.disconnected = True
            raise
        finally:
            self.active -= 1
            await self._notify()

    async def _answer(
        self, request: web.Request, rec: ServerRecord, s: StreamSettings, chat: bool, t0: float
    ) -> web.StreamResponse:
        body = rec.body
        if s.first_byte_delay_s > 0:
            await self._sleep_until(t0 + s.first_byte_delay_s)
        if s.status is not None and s.status != 200:
            rec.status = s.status
            rec.finished = True
            headers = {"Retry-After": s.retry_after} if s.retry_after else None
            kind = {429: "RateLimitError", 503: "ServiceUnavailableError"}.get(
                s.status, "InternalServerError"
            )
            return web.json_response(
                {
                    "error": {
                        "message": f"simulated HTTP {s.status}",
                        "type": kind,
                        "code": s.status,
                    }
                },
                status=s.status,
                headers=headers,
            )
        n_out = _int(body.get("max_tokens") or body.get("max_completion_tokens"))
        if n_out is None or n_out <= 0:
            n_out = s.default_output_tokens
        words = _prompt_words(body, chat)
        rec.prompt_tokens = len(words) + s.prompt_token_bias
        rec.cached_tokens = (
            self._prefix_cache(words, s.prefix_block) if s.prefix_block > 0 else s.cached_tokens
        )
        self.prompt_tokens_total += rec.prompt_tokens
        per = max(1, s.tokens_per_chunk)
        sizes = [per] * (n_out // per) + ([n_out % per] if n_out % per else [])
        n_reason = min(s.reasoning_tokens, n_out) if chat else 0
        rid = f"cmpl-{rec.seq}"
        created = int(time.time())
        if not body.get("stream"):
            return await self._non_stream(rec, s, chat, t0, sizes, n_reason, rid, created)

        opts = body.get("stream_options") or {}
        usage_mode = s.usage
        if usage_mode == "auto":
            usage_mode = "always" if opts.get("include_usage") else "never"
        if opts.get("continuous_usage_stats") and usage_mode != "never":
            usage_mode = "continuous"
        eol = b"\r\n" if s.crlf else b"\n"
        sep = eol + eol
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        write = resp.write
        if chat and s.role_chunk:
            role = {"role": "assistant", "content": ""}
            await write(b"data: " + _chunk(rid, created, self.model, chat, role, None) + sep)

        done_tokens = 0
        cache: dict[tuple[bool, int, bool, bool], bytes] = {}
        pending: list[bytes] = []
        batch = s.events_per_write if s.itl_s <= 0 else 1
        for i, size in enumerate(sizes):
            if s.stall_after is not None and i == s.stall_after:
                await self._flush(write, pending)
                try:
                    async with asyncio.timeout(s.stall_max_s):
                        await self._stop.wait()
                except TimeoutError:
                    pass
                return resp
            if s.drop_after is not None and i == s.drop_after:
                await self._flush(write, pending)
                if request.transport is not None:
                    request.transport.abort()
                rec.disconnected = True
                return resp
            if s.malformed_after is not None and i == s.malformed_after:
                await self._flush(write, pending)
                await write(b'data: {"choices": [{"text": "unterminated' + sep)
                rec.finished = True
                return resp
            if s.error_after is not None and i == s.error_after:
                await self._flush(write, pending)
                err = {
                    "error": {
                        "object": "error",
                        "message": "simulated engine failure",
                        "type": "InternalServerError",
                        "code": 500,
                    }
                }
                await write(b"data: " + json.dumps(err).encode() + sep + b"data: [DONE]" + sep)
                rec.finished = True
                return resp
            if s.end_after is not None and i == s.end_after:
                await self._flush(write, pending)
                await resp.write_eof()
                rec.finished = True
                return resp

            if self._stop.is_set():  # shutting down: end the stream here, incomplete
                await self._flush(write, pending)
                await resp.write_eof()
                return resp
            deadline = t0 + s.ttft_s + i * s.itl_s
            if s.itl_s > 0 or i == 0:
                await self._sleep_until(deadline)
            done_tokens += size
            last = i == len(sizes) - 1
            reasoning = chat and done_tokens <= n_reason
            empty = s.empty_every > 0 and (i + 1) % s.empty_every == 0 and not reasoning
            if usage_mode == "continuous":
                usage = _usage(
                    rec.prompt_tokens, done_tokens, rec.cached_tokens, min(done_tokens, n_reason)
                )
                ev = b"data: " + _chunk(rid, created, self.model, chat, _delta(chat, reasoning, size, empty),
                                        "length" if last else None, usage) + sep
            else:  # identical chunks are serialised once per request (keeps the server fast)
                key = (reasoning, size, last, empty)
                ev = cache.get(key)
                if ev is None:
                    ev = cache[key] = b"data: " + _chunk(rid, created, self.model, chat,
                                                         _delta(chat, reasoning, size, empty),
                                                         "length" if last else None) + sep
            if s.keepalive:
                ev = b": ping" + sep + ev
            rec.chunk_tokens.append(size)
            if batch > 1:
                pending.append(ev)
                rec.write_t.append(_perf())
                if len(pending) >= batch or last:
                    await self._flush(write, pending)
            else:
                rec.write_t.append(_perf())
                await write(ev)
            rec.completion_tokens = done_tokens
            self.generation_tokens_total += size
            if self._watchers:
                await self._notify()
        await self._flush(write, pending)
        tail = b""
        if usage_mode in ("always", "continuous"):
            final = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.model,
                "choices": [],
                "usage": _usage(rec.prompt_tokens, done_tokens, rec.cached_tokens, n_reason),
            }
            tail += b"data: " + json.dumps(final).encode() + sep
        if not s.omit_done:
            tail += b"data: [DONE]" + sep
        if tail:
            await write(tail)
        await resp.write_eof()
        rec.finished = True
        return resp

    async def _non_stream(
        self,
        rec: ServerRecord,
        s: StreamSettings,
        chat: bool,
        t0: float,
        sizes: list[int],
        n_reason: int,
        rid: str,
        created: int,
    ) -> web.Response:
        n_out = sum(sizes)
        await self._sleep_until(t0 + s.ttft_s + max(0, len(sizes) - 1) * s.itl_s)
        text = " tok" * (n_out - n_reason)
        if chat:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if n_reason:
                msg["reasoning_content"] = " tok" * n_reason
            choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": "length"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
            obj = "text_completion"
        rec.write_t.append(_perf())
        rec.chunk_tokens.append(n_out)
        rec.completion_tokens = n_out
        rec.finished = True
        self.generation_tokens_total += n_out
        return web.json_response(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.model,
                "choices": [choice],
                "usage": _usage(rec.prompt_tokens, n_out, rec.cached_tokens, n_reason),
            }
        )

    def _prefix_cache(self, words: list[str], block: int) -> int:
        """Words of the longest prefix of whole blocks seen before (vLLM-style block
        hashes chained from the start), then remember this prompt's blocks."""
        h = 0
        hit = 0
        miss = False
        for i in range(len(words) // block):
            h = hash((h, tuple(words[i * block : (i + 1) * block])))
            if not miss and h in self._seen_blocks:
                hit += block
            else:
                miss = True
                if len(self._seen_blocks) >= 1_000_000:
                    self._seen_blocks.clear()  # bound memory in long benchmarks
                self._seen_blocks.add(h)
        return hit

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - _perf()
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    async def _flush(write, pending: list[bytes]) -> None:
        if pending:
            data = b"".join(pending)
            pending.clear()
            await write(data)


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _prompt_words(body: dict[str, Any], chat: bool) -> list[str]:
    """Prompt 'tokens' as whitespace-separated words: exact for burstbench's word prompts."""
    if chat:
        words: list[str] = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                words += c.split()
            elif isinstance(c, list):
                for part in c:
                    if isinstance(part, dict):
                        words += str(part.get("text", "")).split()
        return words
    p = body.get("prompt")
    if isinstance(p, str):
        return p.split()
    if isinstance(p, list):  # token ids or several prompts
        return [w for x in p for w in (x.split() if isinstance(x, str) else [str(x)])]
    return []


def _usage(prompt: int, completion: int, cached: int | None, reasoning: int) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


def _delta(chat: bool, reasoning: bool, size: int, empty: bool = False) -> dict[str, Any]:
    word = "" if empty else " tok" * size
    if not chat:
        return {"text": word}
    return {"reasoning_content": word} if reasoning else {"content": word}


def _chunk(
    rid: str,
    created: int,
    model: str,
    chat: bool,
    delta: dict[str, Any],
    finish: str | None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta.get("text", ""), "logprobs": None}
        kind = "text_completion"
    choice["finish_reason"] = finish
    choice["stop_reason"] = None
    obj: dict[str, Any] = {
        "id": rid,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if usage is not None:
        obj["usage"] = usage
    return json.dumps(obj, separators=(",", ":")).encode()


# -- separate process ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m burstbench.testing.stream_server",
        description="OpenAI-compatible streaming test server on 127.0.0.1. "
        "Example: python -m burstbench.testing.stream_server --port 8123 --ttft 0.05 --itl 0.02",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--model", default="burstbench-test")
    p.add_argument("--ttft", type=float, default=0.0, help="seconds to the first chunk")
    p.add_argument("--itl", type=float, default=0.0, help="seconds between chunks")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--output-tokens", type=int, default=16, help="when max_tokens is absent")
    p.add_argument("--reasoning-tokens", type=int, default=0)
    p.add_argument("--usage", default="auto", choices=["auto", "always", "never", "continuous"])
    p.add_argument("--events-per-write", type=int, default=1)
    p.add_argument("--prefix-block", type=int, default=0, help="simulate a prefix cache")
    p.add_argument("--empty-every", type=int, default=0, help="every k-th chunk has empty text")
    p.add_argument("--status", type=int, default=None)
    p.add_argument("--retry-after", default=None)
    p.add_argument("--first-byte-delay", type=float, default=0.0)
    p.add_argument("--stall-after", type=int, default=None)
    p.add_argument("--drop-after", type=int, default=None)
    p.add_argument("--malformed-after", type=int, default=None)
    p.add_argument("--error-after", type=int, default=None)
    p.add_argument("--end-after", type=int, default=None)
    p.add_argument("--omit-done", action="store_true")
    p.add_argument("--fault-every", type=int, default=1)
    p.add_argument("--no-record", action="store_true", help="keep no per-request records")
    p.add_argument("--max-records", type=int, default=1_000_000)
    return p


def settings_from_args(a: argparse.Namespace) -> StreamSettings:
    names = {f.name for f in fields(StreamSettings)}
    values = {
        "ttft_s": a.ttft,
        "itl_s": a.itl,
        "tokens_per_chunk": a.tokens_per_chunk,
        "default_output_tokens": a.output_tokens,
        "reasoning_tokens": a.reasoning_tokens,
        "usage": a.usage,
        "events_per_write": a.events_per_write,
        "empty_every": a.empty_every,
        "prefix_block": a.prefix_block,
        "status": a.status,
        "retry_after": a.retry_after,
        "first_byte_delay_s": a.first_byte_delay,
        "stall_after": a.stall_after,
        "drop_after": a.drop_after,
        "malformed_after": a.malformed_after,
        "error_after": a.error_after,
        "end_after": a.end_after,
        "omit_done": a.omit_done,
        "fault_every": a.fault_every,
    }
    assert set(values) <= names
    return StreamSettings(**values)


async def _serve(a: argparse.Namespace) -> None:
    server = StreamServer(
        settings_from_args(a),
        host=a.host,
        port=a.port,
        model=a.model,
        record=not a.no_record,
        max_records=a.max_records,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(json.dumps({"url": server.url, "port": server.port}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    asyncio.run(_serve(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
