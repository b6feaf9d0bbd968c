"""``serve``: the reference engine behind an OpenAI-compatible aiohttp server, in real time.

The same ``EngineCore`` as the simulator, driven by a real-time loop per
replica: each iteration is scheduled, its time taken from the cost model, and
its tokens released at the iteration's absolute deadline
(``start + step_time / time_scale``; the next iteration starts at that
deadline, so the schedule does not drift with loop jitter). Handlers wake at
the deadline and write one SSE event per request per iteration, as vLLM does.
How late each write is against its deadline is recorded
(``burstbench:token_emission_lateness_seconds``, and ``/stats``).

Token accounting (no tokenizer here): a prompt's tokens are its whitespace
words (chat: the words of all message text parts; ``prompt`` given as a list of
token ids counts its ids), and the output's text has exactly one word per
token. See ``tokens`` for output lengths and reasoning content.

Endpoints: ``/v1/completions``, ``/v1/chat/completions`` (streaming or not; the
request fields vLLM takes, see ``protocol``), ``/v1/models`` and
``/v1/models/{id}``, ``/tokenize``, ``/detokenize``, ``/version``, ``/health``,
``/metrics`` (Prometheus text, vLLM metric names), ``/stats`` (JSON, for
benchmarks); any other route answers ``{"detail": "Not Found"}`` as vLLM's
FastAPI server does. With an API key, ``/v1/*`` and ``/stats`` need
``Authorization: Bearer KEY`` (compared in constant time); the rest stays open,
as in vLLM.

Connections are bounded: request headers must arrive within
``header_timeout_s`` (aiohttp's keep-alive timer, which runs from the moment a
connection opens), a body within ``body_timeout_s`` (else 408 and close), and at
most ``max_connections`` are open at once (past that: 503 and close).

Modules: ``protocol`` (what a request may say), ``responses`` (what goes back),
``realtime`` (the replica loops), ``writers`` (one request's stream or body),
``stats`` (what is exported). This module is the HTTP face: routes, auth,
admission, faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from burstbench import __version__
from burstbench.backends.reference.engine import DONE, EngineCore, Seq
from burstbench.backends.reference.faults import NO_FAULTS, FaultConfig, FaultInjector, FaultPlan
from burstbench.backends.reference.fields import check_setting
from burstbench.backends.reference.kvcache import chain_hashes, text_block_keys
from burstbench.backends.reference.protocol import (
    BadRequest,
    GenRequest,
    parse_body,
    parse_detokenize,
    parse_generation,
    parse_tokenize,
)
from burstbench.backends.reference.realtime import Replica, Stream, report_crash
from burstbench.backends.reference.responses import error, error_body
from burstbench.backends.reference.router import Router
from burstbench.backends.reference.spans import SpanEmitter
from burstbench.backends.reference.stats import ServerStats
from burstbench.backends.reference.tokens import (
    DEFAULT_REASONING_SHARE,
    Answer,
    OutputLengths,
    id_word,
    reasoning_split,
    request_seed,
    word_id,
)
from burstbench.backends.reference.writers import Choice, MultiWriter, SingleWriter
from burstbench.errors import UsageError

KEY_MASK = (1 << 62) - 1


@dataclass
class ServeConfig:
    """Everything ``serve`` takes; the CLI and ``ReferenceServer`` build one."""

    model: Any = "llama-3.1-8b"
    hardware: Any = "h100-sxm"
    tp: int = 1
    replicas: int = 1
    router: str = "round_robin"
    host: str = "127.0.0.1"
    port: int = 8000
    time_scale: float = 1.0
    api_key: str | None = None
    served_model_name: str | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_waiting: int | None = None
    policy: str = "fcfs"
    max_request_bytes: int = 4 * 2**20
    max_concurrent: int = 4096
    retry_after_s: float = 1.0
    output_lengths: OutputLengths = field(default_factory=OutputLengths)
    reasoning_share: float = DEFAULT_REASONING_SHARE
    seed: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    num_blocks: int | None = None  # override the KV size (tests)
    spin_s: float = 0.001  # yield-spin this long before each deadline (timer precision; 0: off)
    header_timeout_s: float = 10.0  # a connection's request headers (and keep-alive idle) within this
    body_timeout_s: float = 30.0  # a request body within this
    max_connections: int | None = None  # open connections at once (default: max_concurrent + 1024, within the fd limit)
    otlp_traces_endpoint: str | None = None  # export vLLM-like request spans here (OTLP/HTTP)

    def __post_init__(self) -> None:
        check_setting("--time-scale", self.time_scale, 0, math.inf, lo_open=True)
        check_setting("--max-concurrent", self.max_concurrent, 1, 10**7)
        check_setting("--reasoning-share", self.reasoning_share, 0, 1)
        check_setting("--header-timeout", self.header_timeout_s, 0, 86400, lo_open=True)
        check_setting("--body-timeout", self.body_timeout_s, 0, 86400, lo_open=True)
        check_setting("retry_after_s", self.retry_after_s, 0, 86400)
        check_setting("--max-request-bytes", self.max_request_bytes, 1, 2**30)
        check_setting("spin_s", self.spin_s, 0, 1)
        if self.max_connections is None:
            self.max_connections = max(1, min(self.max_concurrent + 1024, _fd_limit() - 64))
        check_setting("--max-connections", self.max_connections, 1, 10**7)
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key (or BURSTBENCH_API_KEY) is empty: give a non-empty key, or leave both unset to serve without one")


def _fd_limit() -> int:
    """This process's open-file limit: connections past it would fail in accept(), unanswered."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 30
    return soft if soft > 0 else 1 << 30


def url_of(host: str, port: int) -> str:
    """``http://HOST:PORT``, with an IPv6 literal in brackets (RFC 3986)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ReferenceApp:
    """The aiohttp application and the replicas behind it."""

    def __init__(self, config: ServeConfig) -> None:
        from burstbench.backends.hardware.profile import HardwareProfile, load_hardware
        from burstbench.backends.reference.costmodel import CostModel
        from burstbench.backends.reference.models import ModelConfig, load_model

        self.config = c = config
        self.model = c.model if isinstance(c.model, ModelConfig) else load_model(c.model)
        self.hardware = c.hardware if isinstance(c.hardware, HardwareProfile) else load_hardware(c.hardware)
        self.cost = CostModel(self.model, self.hardware, tp=c.tp)
        self.num_blocks = c.num_blocks or (
            self.cost.kv_cache_blocks(
                block_size=c.block_size,
                gpu_memory_utilization=c.gpu_memory_utilization,
                max_num_batched_tokens=c.max_num_batched_tokens,
                max_num_seqs=c.max_num_seqs,
            )
            + 1
        )
        self.name = c.served_model_name or self.model.name
        self.router = Router(c.router, c.replicas)
        self.stats = ServerStats()
        self.faults = FaultInjector(c.faults)
        self._key = c.api_key.encode() if c.api_key else None
        self._rid = 0
        self._active = 0
        self.replicas: list[Replica] = []
        self.created = int(time.time())
        self.app = web.Application(client_max_size=c.max_request_bytes, middlewares=[self._not_found, self._auth])
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/v1/models/{model:.+}", self.model_card)
        self.app.router.add_get("/version", self.version)
        self.app.router.add_post("/tokenize", self.tokenize)
        self.app.router.add_post("/detokenize", self.detokenize)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/stats", self.stats_view)
        self.app.on_startup.append(self._start)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._stop)
        self.spans = SpanEmitter.attach(self.app, c.otlp_traces_endpoint, self.name) if c.otlp_traces_endpoint else None

    def _engine(self) -> EngineCore:
        c = self.config
        return EngineCore(
            self.cost,
            self.num_blocks,
            block_size=c.block_size,
            max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens,
            enable_prefix_caching=c.enable_prefix_caching,
            max_waiting=c.max_waiting,
            policy=c.policy,
            max_context=self.model.max_context,
        )

    async def _start(self, app: web.Application) -> None:
        self.replicas = [
            Replica(self._engine(), self.config.time_scale, self.stats, self.config.spin_s) for _ in range(self.config.replicas)
        ]
        for r in self.replicas:
            r.task = asyncio.create_task(r.run())
            r.task.add_done_callback(report_crash)

    async def _on_shutdown(self, app: web.Application) -> None:
        """Release every open request so handlers end now instead of at the shutdown timeout."""
        for r in self.replicas:
            eng = r.engine
            for s in [*eng.running, *eng.waiting, *(e[3] for e in eng._wheap)]:
                st = s.tag
                if isinstance(st, Stream):
                    st.closed = True
                    st.direct = None
                    st.event.set()

    async def _stop(self, app: web.Application) -> None:
        for r in self.replicas:
            if r.task is not None:
                r.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await r.task

    # -- auth, unknown routes, bodies ----------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._key is not None and (request.path.startswith("/v1/") or request.path == "/stats"):
            got = request.headers.get("Authorization", "")
            token = got[7:].encode() if got.startswith("Bearer ") else b""
            if not hmac.compare_digest(token, self._key):
                return error(401, "Incorrect API key provided.", code="invalid_api_key")
        return await handler(request)

    @web.middleware
    async def _not_found(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Unknown routes and methods answer as vLLM's FastAPI server does: ``{"detail": ...}``."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed as exc:
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": ", ".join(sorted(exc.allowed_methods))})

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        """The body as a JSON object: bounded in size and in time (a slow sender gets 408)."""
        c = self.config
        if request.content_length is not None and request.content_length > c.max_request_bytes:
            raise BadRequest(f"request body larger than {c.max_request_bytes} bytes", code="request_too_large", status=413)
        try:
            async with asyncio.timeout(c.body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise BadRequest(f"request body not received within {c.body_timeout_s:g} s", code="request_timeout", status=408) from None
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"request body larger than {c.max_request_bytes} bytes", code="request_too_large", status=413) from None
        return parse_body(raw)

    @staticmethod
    async def _refuse(request: web.Request, exc: BadRequest) -> web.Response:
        resp = error(exc.status, str(exc), param=exc.param, code=exc.code)
        if exc.status == 408:
            # the rest of the body may still be trickling in: send the answer, then close
            # (aiohttp would otherwise linger, reading it, before closing)
            await resp.prepare(request)
            await resp.write_eof()
            if request.protocol is not None:
                request.protocol.force_close()
        return resp

    # -- simple endpoints -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    def _card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "burstbench",
            "root": self.model.name,
            "parent": None,
            "max_model_len": self.replicas[0].engine.max_context if self.replicas else self.model.max_context,
        }

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card()]})

    async def model_card(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model != self.name:
            return error(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return web.json_response(self._card())

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize``: a token is a whitespace word; ids are stable (see ``tokens.word_id``)."""
        vocab = self.model.vocab_size
        try:
            body = await self._read_json(request)
            prompt = parse_tokenize(body, name=self.name, vocab_size=vocab)
        except BadRequest as exc:
            return await self._refuse(request, exc)
        ids = list(prompt.ids) if prompt.ids is not None else [word_id(w, vocab) for w in prompt.words]
        strs = [id_word(i) for i in ids] if body.get("return_token_strs") else None
        return web.json_response({"count": len(ids), "max_model_len": self.replicas[0].engine.max_context, "tokens": ids, "token_strs": strs})

    async def detokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
            ids = parse_detokenize(body, name=self.name, vocab_size=self.model.vocab_size, max_tokens=self.replicas[0].engine.max_context)
        except BadRequest as exc:
            return await self._refuse(request, exc)
        return web.json_response({"prompt": " ".join(id_word(i) for i in ids)})

    async def stats_view(self, request: web.Request) -> web.Response:
        engines = [r.engine for r in self.replicas]
        return web.json_response(self.stats.to_json(engines, dict(self.faults.counts), self.num_blocks - 1))

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.stats.prometheus(self.name, [r.engine for r in self.replicas])
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    # -- generation ---------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _answers(self, req: GenRequest, rid: int) -> list[Answer]:
        """What each of the ``n`` choices will say, decided before the engine runs it.

        Lengths: ``max_tokens`` with ``ignore_eos``, else drawn from the request's
        ``seed`` (or its prompt), at least ``min_tokens``. Text: greedy
        (``temperature`` 0) answers depend on the prompt only; seeded ones on
        seed, prompt and choice, so a seed repeats its answer; others differ
        per request and choice.
        """
        c = self.config
        tail = " ".join(req.words[-64:])
        base = request_seed(c.seed, req.seed) if req.seed is not None else request_seed(c.seed, req.seed, tail, req.n_prompt)
        out = []
        for i in range(req.n):
            if req.ignore_eos:
                n_out = req.max_tokens
            else:
                greedy_or_first = i == 0 or req.temperature == 0  # greedy choices are all the same answer
                n_out = min(req.max_tokens, max(req.min_tokens, c.output_lengths.draw(base if greedy_or_first else request_seed(base, i))))
            finish = "length" if n_out >= req.max_tokens else "stop"
            if req.temperature == 0:
                key = request_seed("greedy", c.seed, tail, req.n_prompt) & KEY_MASK
            elif req.seed is not None:
                key = request_seed("seeded", c.seed, req.seed, tail, req.n_prompt, i) & KEY_MASK
            else:
                key = rid * 1_000_003 + i if i else rid
            reasoning = reasoning_split(n_out, c.reasoning_share) if (self.model.reasoning and req.chat) else 0
            out.append(Answer.make(key, n_out, reasoning, finish, req.stop, req.include_stop))
        return out

    def _overloaded(self, message: str, code: str, status: int, etype: str) -> web.Response:
        return error(status, message, etype=etype, code=code, headers={"Retry-After": str(int(max(1, round(self.config.retry_after_s))))})

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        c = self.config
        try:
            body = await self._read_json(request)
            eng0 = self.replicas[0].engine
            req = parse_generation(
                body, chat=chat, name=self.name, max_context=eng0.max_context, vocab_size=self.model.vocab_size,
                max_n=c.max_num_seqs, priority_policy=c.policy == "priority",
            )
        except BadRequest as exc:
            return await self._refuse(request, exc)
        rid = self._rid
        self._rid += 1
        answers = self._answers(req, rid)
        plan: FaultPlan = self.faults.plan(answers[0].n) if c.faults.active else NO_FAULTS
        if plan.error is not None:
            headers = {"Retry-After": str(int(max(1, round(c.faults.retry_after_s))))} if plan.error in (429, 503) else None
            etype = "rate_limit_error" if plan.error == 429 else "server_error"
            return error(plan.error, f"injected fault: HTTP {plan.error}", etype=etype, code=plan.error, headers=headers)
        if self._active >= c.max_concurrent:
            return self._overloaded(f"too many concurrent requests (limit {c.max_concurrent}); retry later", "too_many_requests", 429, "rate_limit_error")
        replica = self.replicas[self.router.pick(self.replicas)]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        choices: list[Choice] = []
        shared = asyncio.Event()  # n choices: one wake-up collects them all
        # the output text is known in advance: hash prompt + answer, so the blocks the answer
        # fills are cached and a follow-up turn that repeats it hits them (the first 8192
        # answer tokens: hashing is on the event loop, so bound it); the prompt's full blocks
        # are hashed once for all n choices
        full = req.n_prompt // c.block_size * c.block_size
        prompt_keys = text_block_keys(req.words[:full], c.block_size) if c.enable_prefix_caching else []
        for i, a in enumerate(answers):
            hashes = None
            if c.enable_prefix_caching:
                tail = req.words[full:] + a.text(0, min(a.n, 8192)).split()
                hashes = chain_hashes(prompt_keys + text_block_keys(tail, c.block_size))
            st = Stream()
            if len(answers) > 1:
                st.event = shared
            seq = Seq(rid=rid if i == 0 else -(rid * 1024 + i), prompt_len=req.n_prompt, max_out=a.n, arrival=t0, hashes=hashes, tag=st)
            seq.priority = req.priority
            if not replica.engine.add(seq):
                for ch in choices:
                    replica.engine.abort(ch.seq)
                self.stats.rejected += 1
                return self._overloaded("The server is overloaded: the waiting queue is full. Retry later.", "overloaded", 503, "server_error")
            choices.append(Choice(i, a, seq, st))
        replica.wake.set()
        self._active += 1
        kind = SingleWriter if req.plain else MultiWriter
        writer = kind(request, req, choices, plan, t0, model=self.name, stats=self.stats, stall_s=c.faults.stall_s,
                      spans=self.spans)
        try:
            if plan.slow_first_byte_s > 0:
                await asyncio.sleep(plan.slow_first_byte_s)
            if req.stream:
                return await writer.stream()
            return await writer.whole()
        finally:
            self._active -= 1
            for ch in choices:
                if ch.seq.state != DONE:
                    replica.engine.abort(ch.seq)
                    self.stats.aborted += 1


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class _CappedServer(web.Server):
    """aiohttp's connection manager, with a cap: a connection past it gets a 503 and is closed.

    aiohttp has no connection limit of its own; without one, thousands of idle
    or trickling sockets hold file descriptors and memory until they time out.
    """

    max_connections = 0
    refused = 0

    def connection_made(self, handler: Any, transport: Any) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.max_connections:
            self.refused += 1
            body = json.dumps(error_body(f"too many open connections (limit {self.max_connections}); retry later", etype="server_error", code="too_many_connections")).encode()
            transport.write(_REFUSED % (len(body), body))
            transport.close()


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _CappedServer
        assert isinstance(server, _CappedServer)
        server.max_connections = self.max_connections
        return server


class ReferenceServer:
    """``async with ReferenceServer(model=..., hardware=..., port=0) as srv: srv.url``.

    Keyword arguments are ``ServeConfig`` fields. ``port=0`` picks a free port.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("port", 0)
        self.config = ServeConfig(**kwargs)
        self.app = ReferenceApp(self.config)
        self._runner: _Runner | None = None
        self.url = ""
        self.port = 0

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        c = self.config
        assert c.max_connections is not None
        # aiohttp's keep-alive timer runs from the moment a connection opens and closes it
        # while no request has arrived: with header_timeout_s it bounds slow headers too
        self._runner = _Runner(self.app.app, c.max_connections, access_log=None, handle_signals=False, keepalive_timeout=c.header_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self.url = url_of(self.config.host, self.port)

    @property
    def open_connections(self) -> int:
        """Connections open now (what ``max_connections`` caps)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class ServerHandle:
    """A server running in a background thread; ``stop()`` shuts it down and joins."""

    url: str
    server: ReferenceServer
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(**kwargs: Any) -> ServerHandle:
    """Start a ``ReferenceServer`` on its own event loop in a daemon thread (demo, sync tests)."""
    server = ReferenceServer(**kwargs)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name="burstbench-reference-server", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("reference server did not start within 30 s")
    if errors:
        raise errors[0]
    return ServerHandle(server.url, server, loop, thread)


async def serve_forever(config: ServeConfig, *, on_ready: Any = None) -> None:
    """Run until cancelled or sent SIGTERM (the CLI's main).

    SIGTERM (what a supervisor, ``kill`` or a container runtime sends) stops the server
    the way Ctrl-C does: in-flight streams end, the port is closed, and the process
    exits 0, rather than dying with 143 before the writers flush."""
    server = ReferenceServer(**{k: getattr(config, k) for k in config.__dataclass_fields__})
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread / on Windows
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        await server.stop()
