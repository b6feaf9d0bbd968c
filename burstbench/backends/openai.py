"""The ``openai`` backend: any OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI,
llama.cpp, hosted APIs), ``/v1/completions`` or ``/v1/chat/completions``,
streamed (SSE) or not.

Timing definitions (DESIGN section 4), all on the injected clock:

Two transports carry the requests (``transport=``, or ``$BURSTBENCH_TRANSPORT``):
``wire`` (the default, ``wire.py``): our own HTTP/1.1 client, whose connections read
each answer in the socket's callback, so no task runs per chunk and a send due now
waits only for the reads in progress; ``aiohttp``: one aiohttp session, each answer
read by its request's task (the design before; kept as the fallback). Both give the
same outcomes for the same bytes (``tests/integration/test_openai_backend.py`` runs
every test on both).

* ``sent_s``: when the request was written to the socket (wire: as the write
  begins; aiohttp: its ``on_request_chunk_sent`` trace); if it never was
  (connection refused), when the request was handed to the transport. vLLM's client
  takes the latter, so its TTFT also holds the client's own request set-up; here
  that time is schedule lag.
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
* Its time is when its bytes came off the socket: read from the injected clock in
  the protocol's ``data_received`` (wire), or noted there and converted when the
  request's task reads them (aiohttp, a protocol subclass swapped into the
  connector); events that arrived together share it. Appended to
  ``Outcome.chunk_t``. (If a future aiohttp hides the protocol factory,
  ``arrival_timestamps`` is False and its read time is used.)
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
import functools
import json
import os
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler

from burstbench.backends.answers import (
    ERROR_BODY_MAX,
    MESSAGE_MAX,
    TimedResponseHandler,
    WireAnswer,
    http_error,
    read_body,
    read_stream,
)
from burstbench.backends.base import Clock, Outcome, Request, check_url, split_credentials
from burstbench.backends.pool import ConnectionReserve
from burstbench.backends.prompts import PromptBuilder
from burstbench.backends.wire import Pool, WireError
from burstbench.errors import BackendError, UsageError
from burstbench.store import redact_url

__all__ = ["OpenAIBackend"]

TRANSPORT_ENV = "BURSTBENCH_TRANSPORT"
TRANSPORTS = ("wire", "aiohttp")


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


def _cancelled_once(out: Outcome) -> bool:
    """On a first cancel, mark ``out`` cancelled and let the task finish (the module's
    cancellation contract); False when the task was cancelled again: re-raise."""
    task = asyncio.current_task()
    if task is not None and task.uncancel() > 0:
        return False
    out.status = "cancelled"
    out.error_class = "cancelled"
    out.error_message = f"cancelled in flight after {len(out.chunk_t)} token chunks"
    return True


# aiohttp >= 3.10 tells a connect timeout apart from a read timeout
_CONNECT_TIMEOUT: Any = getattr(aiohttp, "ConnectionTimeoutError", ())


class OpenAIBackend:
    """Pooled connections to an OpenAI-compatible endpoint (wire or aiohttp, module doc).

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
        transport: str | None = None,
    ) -> None:
        if api not in ("completions", "chat"):
            raise UsageError(f"--api must be 'completions' or 'chat', got '{api}'")
        transport = transport or os.environ.get(TRANSPORT_ENV) or "wire"
        if transport not in TRANSPORTS:
            raise UsageError(f"transport (${TRANSPORT_ENV}) must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.transport = transport
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
        root, self._basic_auth = split_credentials(base_url.rstrip("/"))
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
        self._pool: Pool | None = None  # the wire transport's connections
        self._head = b""  # the wire transport's request head, up to the per-request lines
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
                TimedResponseHandler, *factory.args, **factory.keywords
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
        if self.transport == "wire":
            self._start_wire(headers)
        else:
            self._reserve = ConnectionReserve(self._session, self.url, self._timeout)
        models = await self._models()
        if self.model is None and self.discover_model and models is not None and len(models) == 1:
            self.model = models[0]

    def _start_wire(self, headers: dict[str, str]) -> None:
        """The wire pool and the request head every send shares (see ``wire.py`` for why)."""
        from burstbench import __version__

        parts = urlsplit(self.url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {netloc}", f"User-Agent: burstbench/{__version__}",
                 "Accept: */*", *(f"{k}: {v}" for k, v in headers.items())]
        head = "\r\n".join(lines) + "\r\n"
        if any(c in v for v in headers.values() for c in "\r\n") or not head.isascii():
            where = f"${self.api_key_env}" if self.api_key_env else "the URL's credentials"
            raise UsageError(f"the API key in {where} holds a line break or a non-ASCII character; "
                             "an HTTP header cannot carry it")
        self._head = head.encode("ascii")
        self._pool = Pool(host, port, tls=tls, connect_timeout_s=self._timeout.sock_connect)

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
        if self._pool is not None:
            return await self._pool.warm(n)

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
        if self._pool is not None:
            self._pool.top_up()
        elif self._reserve is not None:
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
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._headers = {}  # forget the key with the session
        self._head = b""
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
            out.error_message = str(e)[:MESSAGE_MAX]
            out.end_s = out.sent_s
            return out
        out = Outcome(request.request_id, sent_s=clock())  # refined when the body is written
        if self._pool is not None:
            await self._send_wire(self._pool, request, data, out, clock)
            out.end_s = clock()
            return out
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
                    await read_stream(resp, out, clock, chat=self.api == "chat", keep_text=self.keep_text,
                                      fail=self._fail)
                else:
                    await read_body(resp, out, clock, chat=self.api == "chat", keep_text=self.keep_text,
                                    fail=self._fail)
        except asyncio.CancelledError:
            if not _cancelled_once(out):
                raise  # cancelled more than once: stop at once
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

    async def _send_wire(self, pool: Pool, request: Request, data: bytes, out: Outcome, clock: Clock) -> None:
        """The wire transport's send: a pooled connection is written at once, with no await
        in between, and the answer is read by the connection's callbacks (``wire.py``)."""
        answer = WireAnswer(out, clock, stream=self.stream, chat=self.api == "chat",
                            keep_text=self.keep_text, fail=self._fail)
        trace = request.traceparent
        msg = b"".join((self._head, b"Content-Length: %d\r\n" % len(data),
                        b"traceparent: %s\r\n" % trace.encode("ascii") if trace else b"", b"\r\n", data))
        conn = None
        timeout = self._timeout
        try:
            async with asyncio.timeout(timeout.total):
                conn = pool.take_idle() or await pool.connect()
                # read before the write: on loopback the write itself can hand the CPU to the
                # server, which then sees the request before a clock read after the write would
                out.sent_s = clock()
                conn.send(msg, answer)
                if self.stream and timeout.sock_read:
                    answer.watch(conn, timeout.sock_read)
                err = await answer.done
            if err is not None:
                raise err
        except asyncio.CancelledError:
            if not _cancelled_once(out):
                raise  # cancelled more than once: stop at once
        except WireError as e:
            status = "timeout" if e.kind in ("stall", "connect_timeout") else "error"
            kind = "client_error" if e.kind == "protocol" else e.kind
            self._fail(out, status, kind, str(e))
        except TimeoutError:  # the total per-request timeout
            self._fail(out, "timeout", "timeout", f"not complete within {timeout.total} s (request timeout)")
        finally:
            if conn is not None and answer.ended is False:
                conn.abandon()  # cut before the answer ended: the connection cannot be reused
            answer.close()
        if out.error_message:
            out.error_message = self._redact(out.error_message)[:MESSAGE_MAX]

    async def _http_error(self, resp: aiohttp.ClientResponse, out: Outcome) -> None:
        try:
            body = await resp.content.read(ERROR_BODY_MAX)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        http_error(out, resp.reason or "", resp.headers.get("Retry-After"), body)
        out.error_message = self._redact(out.error_message or "")[:MESSAGE_MAX]

    def _fail(self, out: Outcome, status: str, error_class: str, err: object) -> None:
        out.status = status
        out.error_class = error_class
        if isinstance(err, BaseException):
            text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        else:
            text = str(err)
        out.error_message = self._redact(text)[:MESSAGE_MAX]

    def _redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text
