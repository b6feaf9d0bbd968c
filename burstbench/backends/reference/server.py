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

Endpoints: ``/v1/completions``, ``/v1/chat/completions`` (streaming or not,
``stream_options.include_usage``), ``/v1/models``, ``/health``, ``/metrics``
(Prometheus text, vLLM metric names), ``/stats`` (JSON, for benchmarks).
With an API key, ``/v1/*`` and ``/stats`` need ``Authorization: Bearer KEY``
(compared in constant time); ``/health`` and ``/metrics`` stay open, as in vLLM.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import itertools
import json
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from burstbench.backends.reference.engine import DONE, EngineCore, Seq
from burstbench.backends.reference.faults import NO_FAULTS, FaultConfig, FaultInjector, FaultPlan
from burstbench.backends.reference.kvcache import chain_hashes, text_block_keys
from burstbench.backends.reference.router import Router
from burstbench.backends.reference.spans import SpanEmitter
from burstbench.backends.reference.tokens import (
    DEFAULT_REASONING_SHARE,
    OutputLengths,
    output_text,
    reasoning_split,
    request_seed,
)
from burstbench.errors import UsageError

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
LATENESS_KEEP = 200_000


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
    otlp_traces_endpoint: str | None = None  # export vLLM-like request spans here (OTLP/HTTP)

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise UsageError(f"--time-scale must be positive, got {self.time_scale}")
        if self.max_concurrent < 1:
            raise UsageError("--max-concurrent must be >= 1")
        if not 0 <= self.reasoning_share <= 1:
            raise UsageError("--reasoning-share must be in [0, 1]")


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class _Stream:
    """Per-request state shared between the replica loop (producer) and the handler."""

    __slots__ = ("closed", "deadline", "direct", "event", "pending", "preempted", "t_first", "t_last", "t_sched")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.pending = 0
        self.deadline = 0.0  # deadline of the oldest unwritten token
        self.preempted = 0
        self.direct: _Ctx | None = None  # set while the replica loop writes this stream itself
        self.closed = False  # the server is shutting down
        self.t_sched = self.t_first = self.t_last = -1.0  # loop times of the span's phases


async def _write_direct(st: _Stream) -> None:
    """Write a plain stream's ready tokens from the replica loop itself (no handler wake-up).

    Only while the connection's write buffer is nearly empty, so the write cannot
    wait for the peer (aiohttp only waits when the transport is paused); a slow
    reader's stream goes back to its handler, which may wait without holding up
    the other streams.
    """
    ctx = st.direct
    assert ctx is not None
    tr = ctx.request.transport
    if tr is None or tr.is_closing() or tr.get_write_buffer_size() > 16384:
        st.direct = None
        st.event.set()
        return
    n = st.pending
    st.pending = 0
    data = ctx.render(n, st.deadline)
    try:
        await ctx.resp.write(data)
    except (ConnectionError, RuntimeError):
        ctx.failed = True
    if ctx.done >= ctx.n_out or ctx.failed:
        st.direct = None
        st.event.set()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A replica loop must never end on its own; if it does, say why instead of hanging silently."""
    if not task.cancelled() and task.exception() is not None:
        import sys
        import traceback

        exc = task.exception()
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


class _Replica:
    """One engine and the real-time loop that drives it."""

    def __init__(self, engine: EngineCore, scale: float, stats: _Stats, spin_s: float = 0.001) -> None:
        self.engine = engine
        self.scale = scale
        self.spin_s = spin_s
        self.stats = stats
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        eng = self.engine
        start: float | None = None
        while True:
            if not eng.has_work():
                self.wake.clear()
                await self.wake.wait()
                start = None
                continue
            now = loop.time()
            if start is None or start < now - 0.25:
                # idle before, or more than 250 ms behind: restart the schedule from now
                start = now
            out = eng.step(collect=True)
            if out is None:
                continue
            self.stats.iterations += 1
            deadline = start + out.dt / self.scale
            delay = deadline - loop.time()
            if delay > self.spin_s:
                await asyncio.sleep(delay - self.spin_s)
            # the selector sleeps in whole milliseconds: yield-spin the last stretch
            while loop.time() < deadline:
                await asyncio.sleep(0)
            direct: list[_Stream] = []
            released = loop.time()  # span times: when tokens really left the engine, late or not
            for s in out.admitted:  # not before it arrived: a handler may add it after ``start``
                s.tag.t_sched = max(start, s.arrival)
            for s in out.emitted:
                st: _Stream = s.tag
                if st.t_first < 0:
                    st.t_first = released
                st.t_last = released
                if st.pending == 0:
                    st.deadline = deadline
                st.pending += 1
                if st.direct is not None:
                    direct.append(st)
                else:
                    st.event.set()
            for s in out.preempted:
                s.tag.preempted += 1
            for st in direct:
                await _write_direct(st)
            start = deadline


class _Stats:
    def __init__(self) -> None:
        self.iterations = 0
        self.tokens_written = 0
        self.lateness = array("d")
        self.lateness_hist = Histogram(LATENESS_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.success: dict[str, int] = {}
        self.rejected = 0
        self.aborted = 0

    def late(self, v: float) -> None:
        self.lateness_hist.observe(v)
        if len(self.lateness) < LATENESS_KEEP:
            self.lateness.append(v)


def _error(status: int, message: str, *, etype: str = "invalid_request_error", param: str | None = None, code: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return " ".join(parts)
    raise _BadRequest(f"{where} must be a string or a list of content parts", param=where)


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
        self.stats = _Stats()
        self.faults = FaultInjector(c.faults)
        self._key = c.api_key.encode() if c.api_key else None
        self._rid = 0
        self._active = 0
        self.replicas: list[_Replica] = []
        self.created = int(time.time())
        self.app = web.Application(client_max_size=c.max_request_bytes, middlewares=[self._auth])
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
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
            _Replica(self._engine(), self.config.time_scale, self.stats, self.config.spin_s) for _ in range(self.config.replicas)
        ]
        for r in self.replicas:
            r.task = asyncio.create_task(r.run())
            r.task.add_done_callback(_report_crash)

    async def _on_shutdown(self, app: web.Application) -> None:
        """Release every open request so handlers end now instead of at the shutdown timeout."""
        for r in self.replicas:
            eng = r.engine
            for s in [*eng.running, *eng.waiting, *(e[3] for e in eng._wheap)]:
                st = s.tag
                if isinstance(st, _Stream):
                    st.closed = True
                    st.direct = None
                    st.event.set()

    async def _stop(self, app: web.Application) -> None:
        for r in self.replicas:
            if r.task is not None:
                r.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await r.task

    # -- auth --------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._key is not None and (request.path.startswith("/v1/") or request.path == "/stats"):
            got = request.headers.get("Authorization", "")
            token = got[7:].encode() if got.startswith("Bearer ") else b""
            if not hmac.compare_digest(token, self._key):
                return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        return await handler(request)

    # -- simple endpoints -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "burstbench",
                        "max_model_len": self.replicas[0].engine.max_context if self.replicas else self.model.max_context,
                    }
                ],
            }
        )

    async def stats_view(self, request: web.Request) -> web.Response:
        lat = sorted(self.stats.lateness)

        def q(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))]

        engines = [r.engine for r in self.replicas]
        return web.json_response(
            {
                "iterations": self.stats.iterations,
                "tokens_written": self.stats.tokens_written,
                "lateness_s": {"n": len(lat), "p50": q(0.5), "p99": q(0.99), "max": lat[-1] if lat else None},
                "preemptions": sum(e.num_preemptions for e in engines),
                "generation_tokens": sum(e.generation_tokens for e in engines),
                "rejected": self.stats.rejected,
                "aborted": self.stats.aborted,
                "faults": dict(self.faults.counts),
                "kv_blocks_per_replica": self.num_blocks - 1,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        lines: list[str] = []
        name = self.name.replace('"', "")

        def family(metric: str, kind: str, doc: str, rows: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} {kind}")
            for labels, v in rows:
                lines.append(f"{metric}{{{labels}}} {v}")

        per = [(f'model_name="{name}",engine="{i}"', r.engine) for i, r in enumerate(self.replicas)]
        family("vllm:num_requests_running", "gauge", "Requests in model execution batches.", [(lab, e.num_running) for lab, e in per])
        family("vllm:num_requests_waiting", "gauge", "Requests waiting to be processed.", [(lab, e.num_waiting) for lab, e in per])
        family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", [(lab, e.kv_usage()) for lab, e in per])
        family("vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage (older name).", [(lab, e.kv_usage()) for lab, e in per])
        family("vllm:num_preemptions_total", "counter", "Cumulative number of preemptions.", [(lab, e.num_preemptions) for lab, e in per])
        family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", [(lab, e.prompt_tokens) for lab, e in per])
        family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", [(lab, e.generation_tokens) for lab, e in per])
        family("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in tokens.", [(lab, e.prefix_queries) for lab, e in per])
        family("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in tokens.", [(lab, e.prefix_hits) for lab, e in per])
        base = f'model_name="{name}"'
        family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [(f'{base},finished_reason="{k}"', v) for k, v in sorted(self.stats.success.items())] or [(f'{base},finished_reason="length"', 0)],
        )
        for metric, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.stats.ttft),
            ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", self.stats.e2e),
            ("burstbench:token_emission_lateness_seconds", "How late token writes are against the model's schedule.", self.stats.lateness_hist),
        ):
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} histogram")
            lines.extend(hist.render(metric, base))
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")

    # -- generation ---------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _parse(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.config.max_request_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.config.max_request_bytes, actual_size=request.content_length)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"request body is not valid JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise _BadRequest("request body must be a JSON object")
        return body

    def _prompt(self, body: dict[str, Any], chat: bool) -> tuple[int, list[str]]:
        """Prompt tokens and words (words feed the prefix-cache hashes)."""
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise _BadRequest("'messages' must be a non-empty list", param="messages")
            words: list[str] = []
            for i, m in enumerate(msgs):
                if not isinstance(m, dict):
                    raise _BadRequest(f"messages[{i}] must be an object", param="messages")
                words.extend(_text_of(m.get("content"), f"messages[{i}].content").split())
            return len(words), words
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) == 0:
                raise _BadRequest("'prompt' must not be empty", param="prompt")
            if all(isinstance(x, int) for x in prompt):
                return len(prompt), [str(x) for x in prompt]
            if len(prompt) != 1:
                raise _BadRequest("batched prompts are not supported; send one prompt per request", param="prompt")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _BadRequest("'prompt' must be a string", param="prompt")
        words = prompt.split()
        return len(words), words

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        c = self.config
        try:
            body = await self._parse(request)
            model = body.get("model")
            if model is not None and model != self.name:
                return _error(404, f"The model `{model}` does not exist.", etype="invalid_request_error", param="model", code="model_not_found")
            n_prompt, words = self._prompt(body, chat)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise _BadRequest("'stream' must be a boolean", param="stream")
            if body.get("n", 1) != 1:
                raise _BadRequest("only n=1 is supported", param="n")
            field_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
            max_tokens = body.get(field_name)
            eng0 = self.replicas[0].engine
            if max_tokens is None:
                max_tokens = eng0.max_context - n_prompt
            elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise _BadRequest(f"'{field_name}' must be an integer >= 1, got {max_tokens!r}", param=field_name)
            if n_prompt < 1:
                raise _BadRequest("the prompt must contain at least one token (word)", param="messages" if chat else "prompt")
            if n_prompt + max_tokens > eng0.max_context:
                raise _BadRequest(
                    f"This model's maximum context length is {eng0.max_context} tokens. However, you requested "
                    f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                    "Please reduce the length of the messages or completion.",
                    param=field_name,
                    code="context_length_exceeded",
                )
            ignore_eos = bool(body.get("ignore_eos", False))
            include_usage = bool((body.get("stream_options") or {}).get("include_usage", False)) if stream else True
        except _BadRequest as exc:
            return _error(400, str(exc), param=exc.param, code=exc.code)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body larger than {c.max_request_bytes} bytes", code="request_too_large")

        if ignore_eos:
            n_out = max_tokens
        else:
            seed = body.get("seed")
            n_out = min(max_tokens, c.output_lengths.draw(request_seed(c.seed, seed, " ".join(words[-64:]), n_prompt) if seed is None else request_seed(c.seed, seed)))
        finish_reason = "length" if n_out >= max_tokens else "stop"

        plan: FaultPlan = self.faults.plan(n_out) if c.faults.active else NO_FAULTS
        if plan.error is not None:
            headers = {"Retry-After": str(int(max(1, round(c.faults.retry_after_s))))} if plan.error in (429, 503) else None
            etype = "rate_limit_error" if plan.error == 429 else "server_error"
            return _error(plan.error, f"injected fault: HTTP {plan.error}", etype=etype, code=plan.error, headers=headers)
        if self._active >= c.max_concurrent:
            return _error(
                429,
                f"too many concurrent requests (limit {c.max_concurrent}); retry later",
                etype="rate_limit_error",
                code="too_many_requests",
                headers={"Retry-After": str(int(max(1, round(c.retry_after_s))))},
            )
        replica = self.replicas[self.router.pick(self.replicas)]
        rid = self._rid
        self._rid += 1
        hashes = None
        if c.enable_prefix_caching:
            # the output text is known in advance: hash prompt + answer, so the blocks the
            # answer fills are cached and a follow-up turn that repeats it hits them (the first
            # 8192 answer tokens: hashing is on the event loop, so bound it)
            answer = output_text(rid, 0, min(n_out, 8192)).split()
            hashes = chain_hashes(text_block_keys(words + answer, c.block_size))
        st = _Stream()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        seq = Seq(rid=rid, prompt_len=n_prompt, max_out=n_out, arrival=t0, hashes=hashes, tag=st)
        prio = body.get("priority", 0)
        if isinstance(prio, int) and not isinstance(prio, bool):
            seq.priority = prio
        if not replica.engine.add(seq):
            self.stats.rejected += 1
            return _error(
                503,
                "The server is overloaded: the waiting queue is full. Retry later.",
                etype="server_error",
                code="overloaded",
                headers={"Retry-After": str(int(max(1, round(c.retry_after_s))))},
            )
        replica.wake.set()
        self._active += 1
        reasoning_n = reasoning_split(n_out, c.reasoning_share) if (self.model.reasoning and chat) else 0
        ctx = _Ctx(self, request, seq, st, rid, chat, n_prompt, n_out, reasoning_n, finish_reason, include_usage, plan, t0, replica)
        try:
            if plan.slow_first_byte_s > 0:
                await asyncio.sleep(plan.slow_first_byte_s)
            if stream:
                return await ctx.stream()
            return await ctx.whole()
        finally:
            self._active -= 1
            if seq.state != DONE:
                replica.engine.abort(seq)
                self.stats.aborted += 1


class _Ctx:
    """One generation request in flight: writes its stream (or its whole answer)."""

    def __init__(self, app: ReferenceApp, request: web.Request, seq: Seq, st: _Stream, rid: int, chat: bool, n_prompt: int, n_out: int, reasoning_n: int, finish_reason: str, include_usage: bool, plan: FaultPlan, t0: float, replica: _Replica) -> None:
        self.app = app
        self.request = request
        self.seq = seq
        self.st = st
        self.chat = chat
        self.n_prompt = n_prompt
        self.n_out = n_out
        self.reasoning_n = reasoning_n
        self.finish_reason = finish_reason
        self.include_usage = include_usage
        self.plan = plan
        self.t0 = t0
        self.rid = rid
        self.done = 0  # tokens written
        self.failed = False
        self.resp: web.StreamResponse | None = None
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = app.name
        # Pre-built JSON fragments: the hot path only splices the text in.
        if chat:
            self._head = f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},"model":{json.dumps(self.model)},"choices":[{{"index":0,"delta":{{'
            self._tail = '},"logprobs":null,"finish_reason":null}]}\n\n'
            self._tail_fin = self._tail.replace('"finish_reason":null', f'"finish_reason":"{finish_reason}"')
        else:
            self._head = f'data: {{"id":"{self.id}","object":"text_completion","created":{self.created},"model":{json.dumps(self.model)},"choices":[{{"index":0,"text":'
            self._tail = ',"logprobs":null,"finish_reason":null}]}\n\n'
            self._tail_fin = self._tail.replace('"finish_reason":null', f'"finish_reason":"{finish_reason}"')

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": self.n_prompt,
            "completion_tokens": self.n_out,
            "total_tokens": self.n_prompt + self.n_out,
            "prompt_tokens_details": {"cached_tokens": max(self.seq.cached_tokens, 0)},
        }
        if self.reasoning_n:
            u["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_n}
        return u

    def _event(self, start: int, count: int) -> str:
        """One SSE event with tokens [start, start+count); the last one carries finish_reason (as vLLM's)."""
        text = output_text(self.rid, start, count)
        tail = self._tail_fin if start + count >= self.n_out else self._tail
        if not self.chat:
            return self._head + json.dumps(text) + tail
        key = "reasoning_content" if start < self.reasoning_n else "content"
        return self._head + f'"{key}":' + json.dumps(text) + tail

    async def _next_tokens(self) -> int:
        """Wait for the engine to release tokens; returns how many are ready."""
        st = self.st
        await st.event.wait()
        st.event.clear()
        n = st.pending
        st.pending = 0
        return n

    def _record_done(self, loop: asyncio.AbstractEventLoop) -> None:
        stats = self.app.stats
        stats.e2e.observe(loop.time() - self.t0)
        stats.success[self.finish_reason] = stats.success.get(self.finish_reason, 0) + 1
        if self.app.spans is not None:
            st = self.st
            self.app.spans.request_done(
                self.request.headers.get("traceparent"), self.id, arrival=self.t0, scheduled=st.t_sched,
                first_token=st.t_first, last_token=st.t_last, end=loop.time(), prompt_tokens=self.n_prompt,
                completion_tokens=self.n_out)

    async def whole(self) -> web.Response:
        loop = asyncio.get_running_loop()
        done = 0
        first = True
        while done < self.n_out:
            n = await self._next_tokens()
            if self.st.closed:
                return _error(503, "the server is shutting down", etype="server_error", code="shutting_down")
            if first:
                self.app.stats.ttft.observe(loop.time() - self.t0)
                first = False
            done += n
        if self.plan.stall_at is not None:
            await asyncio.sleep(self.app.config.faults.stall_s)
        self._record_done(loop)
        text = output_text(self.rid, self.reasoning_n, self.n_out - self.reasoning_n)
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if self.reasoning_n:
                msg["reasoning_content"] = output_text(self.rid, 0, self.reasoning_n)
            choice: dict[str, Any] = {"index": 0, "message": msg, "logprobs": None, "finish_reason": self.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": output_text(self.rid, 0, self.n_out), "logprobs": None, "finish_reason": self.finish_reason}
            obj = "text_completion"
        return web.json_response(
            {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage()}
        )

    def render(self, n: int, deadline: float) -> bytes:
        """SSE bytes for the next ``n`` tokens (role chunk first, split at the reasoning boundary)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        stats = self.app.stats
        parts: list[str] = []
        done = self.done
        if done == 0:
            stats.ttft.observe(now - self.t0)
            if self.chat:
                parts.append(self._head + '"role":"assistant","content":""' + self._tail)
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
        app = self.app
        stats = app.stats
        plan = self.plan
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
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
                        parts.append(self._head + '"role":"assistant","content":""' + self._tail)
                # split at the reasoning boundary and at injected faults
                end = done + n
                cuts = sorted({done, end, *(x for x in (self.reasoning_n, plan.stall_at, plan.disconnect_at, plan.malformed_at, plan.stream_error_at) if x is not None and done < x < end)})
                for a, b in itertools.pairwise(cuts):
                    if plan.disconnect_at is not None and a == plan.disconnect_at:
                        await self._flush(resp, parts)
                        self._disconnect()
                        return resp
                    if plan.stream_error_at is not None and a == plan.stream_error_at:
                        parts.append('data: {"error": {"message": "injected fault: in-stream error", "type": "server_error", "param": null, "code": 500}}\n\n')
                        parts.append("data: [DONE]\n\n")
                        await self._flush(resp, parts)
                        return resp
                    if plan.malformed_at is not None and a == plan.malformed_at:
                        parts.append('data: {"id": "malformed", "choices": [\n\n')
                    if plan.stall_at is not None and a == plan.stall_at:
                        await self._flush(resp, parts)
                        await asyncio.sleep(app.config.faults.stall_s)
                    parts.append(self._event(a, b - a))
                await self._flush(resp, parts)
                stats.late(late)
                stats.tokens_written += n
                self.done = end
            tail = ""
            if self.include_usage:
                usage = {
                    "id": self.id,
                    "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
                tail += "data: " + json.dumps(usage) + "\n\n"
            tail += "data: [DONE]\n\n"
            await resp.write(tail.encode())
            self._record_done(loop)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; the caller aborts the request in the engine
        finally:
            self.st.direct = None
        return resp

    @staticmethod
    async def _flush(resp: web.StreamResponse, parts: list[str]) -> None:
        if parts:
            await resp.write("".join(parts).encode())
            parts.clear()

    def _disconnect(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class ReferenceServer:
    """``async with ReferenceServer(model=..., hardware=..., port=0) as srv: srv.url``.

    Keyword arguments are ``ServeConfig`` fields. ``port=0`` picks a free port.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("port", 0)
        self.config = ServeConfig(**kwargs)
        self.app = ReferenceApp(self.config)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self.url = f"http://{self.config.host}:{self.port}"

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
    """Run until cancelled (the CLI's main)."""
    server = ReferenceServer(**{k: getattr(config, k) for k in config.__dataclass_fields__})
    await server.start()
    if on_ready is not None:
        on_ready(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
