"""The ``openai`` backend: any OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI,
llama.cpp, hosted APIs), ``/v1/completions`` or ``/v1/chat/completions``,
streamed (SSE) or not.

Timing definitions (DESIGN section 4), all on the injected clock:

* ``sent_s``: when the request body was written to the socket (aiohttp's
  ``on_request_chunk_sent`` trace); if it never was (connection refused), when the
  request was handed to aiohttp. vLLM's client takes the latter, so its TTFT also
  holds the client's own request set-up; here that time is schedule lag.
* A *token-carrying chunk* is an SSE event whose ``choices[0]`` carries output:
  a ``text`` string (completions, even ``""``), or a chat ``delta`` with
  ``content`` / ``reasoning_content`` / ``reasoning`` / ``tool_calls``. vLLM's
  client counts every event with a non-empty ``choices`` list; so do we, except
  events that carry no output at all: the role-only opening delta of chat streams
  (``{"role": "assistant", "content": ""}``) and empty deltas (``{}``, OpenAI's
  closing chunk). vLLM sends the role delta with the first token, so TTFT agrees
  and our chunk ITLs do not get a spurious near-zero gap. Empty-text chunks *are*
  counted: vLLM sends them for tokens that have no text yet (special tokens under
  ``ignore_eos``, a multi-byte character split across tokens), and dropping them
  would end E2EL early.
* Its time is when its bytes came off the socket: noted in aiohttp's protocol
  callback (a subclass swapped into the connector), converted to the injected
  clock when the request's task reads them; events that arrived together share
  it. Appended to ``Outcome.chunk_t``. (If a future aiohttp hides the protocol
  factory, ``arrival_timestamps`` is False and the read time is used.)
* ``first_token_s``: first token-carrying chunk, reasoning included (vLLM's TTFT);
  ``first_visible_s``: first chunk with non-reasoning content (TTFVT);
  ``last_token_s``: last token-carrying chunk (E2EL); ``end_s``: response closed.
* ``chunk_tokens``: tokens in the chunk from per-chunk usage deltas when the server
  sends them (vLLM ``continuous_usage_stats``, asked for when ``/v1/models`` says the
  models are ``owned_by: vllm``: vLLM streams several tokens per chunk under load,
  and only then is the per-token ITL known; other APIs may reject the option), else
  -1 (unknown);
  ``output_tokens_counted`` is their sum, or one per chunk when unknown.
* Non-streaming: the whole body is one chunk at the time it was read.

Failures are outcomes, never exceptions (``status``/``error_class``):
``http_<code>`` (non-200), ``connect`` (refused/DNS), ``connect_timeout``,
``disconnect`` (reset or cut mid-stream), ``stall`` (status ``timeout``: no byte
for ``stall_timeout_s``), ``timeout`` (status ``timeout``: ``timeout_s`` total),
``sse_malformed`` (bad SSE/JSON), ``malformed`` (a non-streamed body that is not
the expected JSON), ``stream_error`` (an error object inside a 200
stream), ``truncated`` (the stream ended without ``[DONE]`` and without both content
and a ``finish_reason``; with both it is tolerated as ok), ``client_error`` (any
other aiohttp error).

Cancellation contract: cancel the task running ``send`` once and the task
*finishes normally* with ``Outcome(status='cancelled')`` holding the times measured
so far (``send`` calls ``Task.uncancel()`` so structured-concurrency helpers in
the caller keep working). If the task is cancelled again before ``send`` returns,
the ``CancelledError`` propagates and no outcome is returned.

Model: ``model`` if given; else the one model the endpoint lists at ``/v1/models``
(looked up once in ``start``; none is sent when it lists several); a trace's own model names (``Request.model``, e.g.
BurstGPT's "ChatGPT") are sent only with ``use_request_model=True``.

``start()`` raises ``BackendError`` in one case only: ``/v1/models`` answers 401 or
403, i.e. the credentials are missing or wrong, which no request could survive.

The API key is read from the environment variable named by ``api_key_env`` in
``start()`` and sent as ``Authorization: Bearer``; it is never stored on an
outcome, and any server message that echoes it is redacted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import time
from array import array
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler

from burstbench.backends.base import Clock, Outcome, Request, check_url
from burstbench.backends.pool import ConnectionReserve
from burstbench.backends.prompts import PromptBuilder
from burstbench.backends.sse import DONE, SSEError, SSEParser
from burstbench.errors import BackendError, UsageError
from burstbench.limits import MAX_TOKENS
from burstbench.store import redact_url

__all__ = ["OpenAIBackend"]

_perf = time.perf_counter


class _BasicAuth(NamedTuple):
    login: str
    password: str

    def encode(self) -> str:
        raw = f"{self.login}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _split_credentials(url: str) -> tuple[str, _BasicAuth | None]:
    """The URL without user:password, and those as Basic auth (sent as a header, so
    they never travel in a URL that could be logged or stored)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    auth = _BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), auth


class _Written:
    """Where a request's write time goes: its Outcome and the run's clock."""

    __slots__ = ("clock", "out")

    def __init__(self, out: Outcome, clock: Clock) -> None:
        self.out = out
        self.clock = clock


async def _mark_written(session: Any, ctx: Any, params: Any) -> None:
    """``sent_s`` := when the request body went to the socket (aiohttp's chunk-sent trace).

    Until then ``sent_s`` is the moment the request was handed to aiohttp; the time in
    between (building the request, taking a pooled connection) is the client's own work,
    so it belongs to schedule lag, not to the server's TTFT."""
    w = ctx.trace_request_ctx
    if isinstance(w, _Written):
        w.out.sent_s = w.clock()
        ctx.trace_request_ctx = None  # a multi-chunk body keeps its first write


class _TimedResponseHandler(ResponseHandler):
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


_ERROR_BODY_MAX = 64 * 1024
_MESSAGE_MAX = 500
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


# aiohttp >= 3.10 tells a connect timeout apart from a read timeout
_CONNECT_TIMEOUT: Any = getattr(aiohttp, "ConnectionTimeoutError", ())


class OpenAIBackend:
    """One pooled aiohttp session against an OpenAI-compatible endpoint.

    ``base_url`` is the server root (``http://host:8000``) or its ``/v1``; the path
    is added from ``api``. Safe to share between many concurrent ``send`` calls in
    one event loop.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api: str = "completions",
        model: str | None = None,
        stream: bool = True,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float | None = 600.0,
        connect_timeout_s: float | None = 10.0,
        stall_timeout_s: float | None = 300.0,
        ignore_eos: bool = True,
        use_min_tokens: bool = False,
        extra_body: dict[str, Any] | None = None,
        tokenizer_json: str | None = None,
        keep_text: bool = False,
        block_size: int = 512,
        prompt_seed: int = 0,
        max_tokens_field: str = "max_tokens",
        read_bufsize: int = 4 * 1024 * 1024,
        use_request_model: bool = False,
        discover_model: bool = True,
    ) -> None:
        if api not in ("completions", "chat"):
            raise UsageError(f"--api must be 'completions' or 'chat', got '{api}'")
        if why := check_url(base_url):
            raise UsageError(f"--url {why}")
        for label, v in (
            ("timeout_s", timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("stall_timeout_s", stall_timeout_s),
        ):
            if v is not None and v <= 0:
                raise UsageError(f"{label} must be positive (or None for no limit), got {v}")
        # user:password in the URL become a Basic auth header (an API key, when set, wins),
        # so credentials never travel in a URL that could be logged or stored
        root, self._basic_auth = _split_credentials(base_url.rstrip("/"))
        if root.endswith("/v1"):
            root = root[:-3]
        self.base_url = root
        self.api = api
        self.url = root + ("/v1/chat/completions" if api == "chat" else "/v1/completions")
        self.model = model
        self.stream = stream
        self.api_key_env = api_key_env
        self.ignore_eos = ignore_eos
        self.use_min_tokens = use_min_tokens
        self.extra_body = dict(extra_body or {})
        self.keep_text = keep_text
        self.max_tokens_field = max_tokens_field
        self.read_bufsize = read_bufsize
        self.use_request_model = use_request_model
        self.discover_model = discover_model
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=connect_timeout_s, sock_read=stall_timeout_s
        )
        # a non-streamed answer is silent until it is complete: no stall limit there
        self._request_timeout = (
            self._timeout
            if stream
            else aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        )
        self.prompts = PromptBuilder(
            block_size=block_size, seed=prompt_seed, tokenizer_json=tokenizer_json
        )
        self._session: aiohttp.ClientSession | None = None
        self._reserve: ConnectionReserve | None = None
        self._headers: dict[str, str] = {}
        self._secret: str | None = None
        self.arrival_timestamps = False  # set by start(): chunk times from the socket callback
        self.continuous_usage = False  # set by start(): the endpoint is vLLM, ask per-chunk usage

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Open the pooled session (no connection cap) and read the API key."""
        if self._session is not None:
            return
        # identity: a compressing proxy would hold chunks back to fill its blocks,
        # and the chunk timing is the measurement
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
            self._secret = key
        elif self._basic_auth is not None:
            headers["Authorization"] = self._basic_auth.encode()
            self._secret = self._basic_auth.password or None
        self._headers = headers
        # keep idle connections less long than servers do (uvicorn, so vLLM: 5 s), so a
        # request is rarely written into a connection the server is closing
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=4.0
        )
        # arrival timestamps: swap in the timed protocol where this aiohttp allows it
        factory = getattr(connector, "_factory", None)
        self.arrival_timestamps = isinstance(factory, functools.partial) and (
            factory.func is ResponseHandler
        )
        if self.arrival_timestamps:
            connector._factory = functools.partial(  # type: ignore[attr-defined]
                _TimedResponseHandler, *factory.args, **factory.keywords
            )
        written = aiohttp.TraceConfig()
        written.on_request_chunk_sent.append(_mark_written)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[written],
            timeout=self._timeout,
            read_bufsize=self.read_bufsize,
            max_line_size=1024 * 1024,
            max_field_size=1024 * 1024,
            auto_decompress=True,
        )
        self._reserve = ConnectionReserve(self._session, self.url, self._timeout)
        models = await self._models()
        if self.model is None and self.discover_model and models is not None and len(models) == 1:
            self.model = models[0]

    async def _models(self) -> list[str] | None:
        """The ids ``/v1/models`` lists, or None when it does not answer usefully.

        Used to fill in the model when the endpoint serves exactly one (vLLM rejects
        requests without one; on a multi-model API such as a hosted one, guessing
        would measure the wrong model), and to stop at once, with a BackendError,
        when the endpoint rejects the credentials (HTTP 401/403), instead of sending
        a whole trace that can only fail. Anything else is left to the requests."""
        assert self._session is not None
        status = None
        try:
            async with (
                asyncio.timeout(5.0),
                self._session.get(self.base_url + "/v1/models", headers=self._headers) as r,
            ):
                status = r.status
                if status == 200:
                    data = (await r.json(content_type=None)).get("data") or []
                    models = [m for m in data if isinstance(m, dict) and m.get("id")]
                    self.continuous_usage = bool(models) and all(
                        m.get("owned_by") == "vllm" for m in models)
                    return [str(m["id"]) for m in models]
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, TypeError):
            return None
        if status in (401, 403):
            await self.close()
            raise BackendError(self._auth_advice(status))
        return None

    async def warm(self, n: int) -> int:
        """Open ``n`` pooled connections before the run starts; returns how many answered.

        Why: a request that finds no idle connection pays a TCP connect in the loop after
        its deadline, several loop turns behind every open stream's reads (py-spy, 200
        streams: connects were a third of the send path), so the first few hundred sends
        of a run were the late ones. ``n`` concurrent ``GET /v1/models`` (cheap on every
        server; any answer, even a 404, leaves its connection pooled) do it at start-up,
        where lateness costs nothing. Idle connections live ``keepalive_timeout`` (4 s)."""
        session = self._session
        if session is None or n <= 0:
            return 0

        async def one() -> bool:
            try:
                async with asyncio.timeout(5.0), session.get(self.base_url + "/v1/models",
                                                             headers=self._headers) as r:
                    await r.read()
                    return True
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        answered = sum(await asyncio.gather(*(one() for _ in range(n))))
        if self._reserve is not None:
            self._reserve.target = n  # from now on, top_up keeps n idle ahead of the sends
        return answered

    def top_up(self) -> None:
        """Open connections in the background until ``warm``'s n are idle again.

        The dispatcher calls this as it prepares each send (see ``backends/pool.py`` for
        why and what it measured)."""
        if self._reserve is not None:
            self._reserve.top_up()

    def _auth_advice(self, status: int) -> str:
        where = redact_url(self.base_url)
        env = self.api_key_env
        if not env:
            return (
                f"{where}: the endpoint wants credentials (HTTP {status}); give an API key variable"
            )
        if env not in os.environ:
            return (
                f"{where}: the endpoint wants an API key (HTTP {status}) and ${env} is not set; "
                f"export {env}=... (or name another variable)"
            )
        return (
            f"{where}: the endpoint rejected the API key in ${env} (HTTP {status}); "
            "check the key, or name another variable"
        )

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        session, self._session = self._session, None
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            await reserve.close()
        self._headers = {}  # forget the key with the session
        self._secret = None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> OpenAIBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- request body ---------------------------------------------------------

    def payload(self, request: Request) -> dict[str, Any]:
        """The JSON body for one request (exposed for tests and dry runs)."""
        body: dict[str, Any] = {}
        model = self.model or (request.model if self.use_request_model else None)
        if model:
            body["model"] = model
        if self.api == "chat":
            body["messages"] = self.prompts.messages_for_request(request)
        else:
            body["prompt"] = self.prompts.for_request(request)
        out = request.output_tokens
        if out is not None and out > 0:
            body[self.max_tokens_field] = int(out)
            if self.use_min_tokens:
                body["min_tokens"] = int(out)
        if self.ignore_eos and request.ignore_eos and out is not None:
            body["ignore_eos"] = True
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            if self.continuous_usage:
                body["stream_options"]["continuous_usage_stats"] = True
        if self.extra_body:
            body.update(self.extra_body)
        return body

    def prepare(self, request: Request) -> None:
        """Encode the request's body into ``request.body`` ahead of its send deadline.

        The dispatcher calls this before it waits for the deadline, so building the
        prompt and the JSON is not part of the send lag (with hundreds of streams open,
        every step after the deadline also waits for a loop turn). A body that cannot
        be encoded is left to ``send``, which reports it."""
        try:
            request.body = json.dumps(self.payload(request)).encode()
        except (TypeError, ValueError):
            request.body = None

    # -- the hot path ---------------------------------------------------------

    async def send(self, request: Request, clock: Clock) -> Outcome:
        """Send one request; every failure comes back as an ``Outcome`` (see module doc)."""
        session = self._session
        if session is None:
            raise RuntimeError("OpenAIBackend.send called before start()")
        try:
            data = request.body if request.body is not None else json.dumps(self.payload(request)).encode()
        except (TypeError, ValueError) as e:
            out = Outcome(request.request_id, sent_s=clock(), status="error")
            out.error_class = "bad_request_body"
            out.error_message = str(e)[:_MESSAGE_MAX]
            out.end_s = out.sent_s
            return out
        out = Outcome(request.request_id, sent_s=clock())  # refined when the body is written
        try:
            async with session.post(
                self.url, data=data, timeout=self._request_timeout,
                headers={**self._headers, "traceparent": request.traceparent} if request.traceparent else self._headers,
                trace_request_ctx=_Written(out, clock),
            ) as resp:
                out.http_status = resp.status
                if resp.status != 200:
                    await self._http_error(resp, out)
                elif self.stream and resp.content_type != "application/json":
                    await self._read_stream(resp, out, clock)
                else:
                    await self._read_body(resp, out, clock)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.uncancel() > 0:
                raise  # cancelled more than once: stop at once
            out.status = "cancelled"
            out.error_class = "cancelled"
            out.error_message = f"cancelled in flight after {len(out.chunk_t)} token chunks"
        except _CONNECT_TIMEOUT:
            t = self._timeout.sock_connect
            self._fail(out, "timeout", "connect_timeout", f"no connection within {t} s")
        except aiohttp.ServerTimeoutError:  # sock_read: no byte for stall_timeout_s
            t = self._timeout.sock_read
            self._fail(out, "timeout", "stall", f"no data for {t} s (stall timeout)")
        except TimeoutError:  # the total per-request timeout
            t = self._timeout.total
            self._fail(out, "timeout", "timeout", f"not complete within {t} s (request timeout)")
        except aiohttp.ClientConnectorError as e:
            self._fail(out, "error", "connect", e)
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
            ConnectionError,
        ) as e:
            self._fail(out, "error", "disconnect", e)
        except aiohttp.ClientError as e:
            self._fail(out, "error", "client_error", e)
        except Exception as e:  # a bug here must not kill the run; it shows as its own class
            self._fail(out, "error", "internal", e)
        out.end_s = clock()
        return out

    async def _read_stream(self, resp: aiohttp.ClientResponse, out: Outcome, clock: Clock) -> None:
        """The hot loop: one clock() per socket read, per event only what is needed.

        Reasoning flags and per-chunk token counts are kept as sparse lists and
        expanded into the Outcome's arrays once, at the end."""
        parser = SSEParser()
        feed = parser.feed
        read = resp.content.readany
        decode = _decode_event
        chat = self.api == "chat"
        keep = self.keep_text
        texts: list[str] = []
        chunk_t = out.chunk_t
        ct_append = chunk_t.append
        reasoning_at: list[int] = []  # indexes of reasoning-only chunks
        tokens_at: list[tuple[int, int]] = []  # (index, tokens) from per-chunk usage
        conn = resp.connection
        proto = conn.protocol if conn is not None else None
        timed = isinstance(proto, _TimedResponseHandler)
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
                        self._fail(out, "error", "sse_malformed", e)
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
                            self._fail(
                                out,
                                "error",
                                "sse_malformed",
                                f"invalid JSON in SSE data: {ev[:200]!r}",
                            )
                            break
                        if type(obj) is not dict:
                            self._fail(
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
                                    ctok = _count(ctok)
                                    tokens_at.append((len(chunk_t) - 1, ctok - prev_ct))
                                    prev_ct = ctok
                                    usage = u
                                continue
                        u = obj.get("usage")
                        if u:
                            usage = u
                            if (ctok := u.get("completion_tokens")) is not None:
                                prev_ct = _count(ctok)
                        elif "error" in obj or obj.get("object") == "error":
                            self._fail(out, "error", "stream_error", _message_of(obj))
                            break
                except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
                    # valid JSON of the wrong shape, e.g. {"choices": [1]}
                    self._fail(out, "error", "sse_malformed", f"unexpected SSE event shape ({e})")
                if done or eof or out.status != "ok":
                    break
            if out.status != "ok":
                resp.close()  # drop the connection: the rest of this stream is unusable
            elif done and not resp.content.is_eof():
                await _drain(resp)
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
                _apply_usage(out, usage)
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

    async def _read_body(self, resp: aiohttp.ClientResponse, out: Outcome, clock: Clock) -> None:
        body = await resp.read()
        t = clock()
        conn = resp.connection
        proto = conn.protocol if conn is not None else None
        if isinstance(proto, _TimedResponseHandler) and proto.rx_perf:
            t -= _perf() - proto.rx_perf
        try:
            obj = _loads(body)
        except ValueError:
            self._fail(out, "error", "malformed", f"response is not JSON: {body[:200]!r}")
            return
        if type(obj) is not dict:
            self._fail(out, "error", "malformed", f"response is not a JSON object: {body[:200]!r}")
            return
        if "error" in obj or obj.get("object") == "error":
            self._fail(out, "error", "stream_error", _message_of(obj))
            return
        try:
            choices = obj.get("choices") or []
            content = reasoning = None
            if choices:
                c = choices[0]
                if self.api == "chat":
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
                n_tok = _count(ctok) if ctok is not None else -1
                out.chunk_t.append(t)
                out.chunk_reasoning.append(0 if content else 1)
                out.chunk_tokens.append(n_tok)
                out.first_token_s = out.last_token_s = t
                if content:
                    out.first_visible_s = t
                if self.keep_text and isinstance(content, str):
                    out.text = content
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            self._fail(out, "error", "malformed", f"unexpected response shape ({e})")
            return
        out.output_tokens_counted = None  # one body: nothing to count without a tokenizer
        if usage:
            _apply_usage(out, usage)

    async def _http_error(self, resp: aiohttp.ClientResponse, out: Outcome) -> None:
        out.status = "error"
        out.error_class = f"http_{resp.status}"
        try:
            body = await resp.content.read(_ERROR_BODY_MAX)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        msg = _message_of_body(body) or (resp.reason or "")
        retry = resp.headers.get("Retry-After")
        if retry:
            msg = f"{msg} (Retry-After: {retry})"
        out.error_message = self._redact(msg)[:_MESSAGE_MAX]

    def _fail(self, out: Outcome, status: str, error_class: str, err: object) -> None:
        out.status = status
        out.error_class = error_class
        if isinstance(err, BaseException):
            text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        else:
            text = str(err)
        out.error_message = self._redact(text)[:_MESSAGE_MAX]

    def _redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text


async def _drain(resp: aiohttp.ClientResponse) -> None:
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


def _apply_usage(out: Outcome, usage: Any) -> None:
    # a usage object of the wrong shape is ignored; the chunk counts remain
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        _apply_usage_fields(out, usage)


def _count(value: Any) -> int:
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
    ct, pt, cached, reasoning = (None if v is None else _count(v) for v in (ct, pt, cached, reasoning))
    if ct is not None:
        out.output_tokens_server = ct
    if pt is not None:
        out.input_tokens_server = pt
    if cached is not None:
        out.cached_tokens = cached
    if reasoning is not None:
        out.reasoning_tokens = reasoning


def _message_of(obj: dict) -> str:
    err = obj.get("error", obj)
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or json.dumps(err)[:_MESSAGE_MAX]
        kind = err.get("type") or err.get("code")
        return f"{kind}: {msg}" if kind else str(msg)
    return str(err)


def _message_of_body(body: bytes) -> str:
    if not body:
        return ""
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:_MESSAGE_MAX].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        if "error" in obj or "message" in obj:
            return _message_of(obj)
        if "detail" in obj:
            return str(obj["detail"])
    return body[:_MESSAGE_MAX].decode("utf-8", "replace").strip()
