"""OpenAIBackend against real aiohttp servers on 127.0.0.1 (StreamServer and small ad-hoc apps).

Client times use ``time.perf_counter`` directly as the clock, so they are on the same
clock as the server's recorded write times and can be compared one to one.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from app_server import start_app

from burstbench.backends.base import Backend, Outcome, Request, get_backend
from burstbench.backends.openai import TRANSPORT_ENV, TRANSPORTS, OpenAIBackend
from burstbench.errors import BackendError, UsageError
from burstbench.limits import MAX_SSE_EVENT_BYTES
from burstbench.testing import StreamServer, StreamSettings

clock = time.perf_counter


@pytest.fixture(autouse=True, params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both transports: the wire client (the default) and aiohttp."""
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    return request.param


def req(i: int = 1, n_in: int = 12, n_out: int = 8, **kw) -> Request:
    return Request(request_id=i, input_tokens=n_in, output_tokens=n_out, **kw)


async def one(url: str, request: Request | None = None, **kw) -> Outcome:
    async with OpenAIBackend(url, **kw) as b:
        return await b.send(request or req(), clock)


# -- timing definitions -------------------------------------------------------------


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_chunk_times_follow_server_writes(api: str) -> None:
    async with StreamServer(ttft_s=0.06, itl_s=0.015, tokens_per_chunk=2) as srv:
        o = await one(srv.url, req(n_out=9), api=api)
        (rec,) = srv.records
    assert o.status == "ok", o.error_message
    # 9 tokens at 2 per chunk -> 5 token chunks; the chat role-only delta is not one
    assert len(rec.write_t) == 5
    assert len(o.chunk_t) == len(rec.write_t)
    assert list(o.chunk_tokens) == [-1] * 5  # no per-chunk usage from this server
    # the server writes on absolute deadlines from arrival, never before them
    for i, w in enumerate(rec.write_t):
        assert w - rec.received_s >= 0.06 + i * 0.015 - 1e-6
    # every chunk is seen after the server wrote it, in order
    for client_t, server_t in zip(o.chunk_t, rec.write_t, strict=True):
        assert client_t >= server_t
    assert list(o.chunk_t) == sorted(o.chunk_t)
    assert o.first_token_s == o.chunk_t[0] and o.last_token_s == o.chunk_t[-1]
    assert o.first_visible_s == o.first_token_s
    assert o.first_token_s - o.sent_s >= 0.06  # TTFT can't beat the server's delay
    assert o.sent_s <= rec.received_s
    assert o.end_s is not None and o.end_s >= o.last_token_s
    assert o.output_tokens_server == 9  # usage preferred over counting
    assert o.finish_reason == "length"  # the length followed max_tokens
    assert o.output_tokens_counted == 5  # one per chunk when the server does not say
    assert o.input_tokens_server == 12
    assert o.http_status == 200


async def test_continuous_usage_gives_tokens_per_chunk() -> None:
    async with StreamServer(tokens_per_chunk=3) as srv:
        extra = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        o = await one(srv.url, req(n_out=10), extra_body=extra)
        (rec,) = srv.records
    assert o.status == "ok"
    assert list(o.chunk_tokens) == rec.chunk_tokens == [3, 3, 3, 1]
    assert o.output_tokens_counted == 10 == o.output_tokens_server


async def test_without_usage_counts_chunks() -> None:
    async with StreamServer(tokens_per_chunk=4, usage="never") as srv:
        o = await one(srv.url, req(n_out=8))
    assert o.status == "ok"
    assert o.output_tokens_server is None and o.input_tokens_server is None
    assert o.output_tokens_counted == 2


async def test_reasoning_then_visible_content() -> None:
    async with StreamServer(reasoning_tokens=3, itl_s=0.005) as srv:
        o = await one(srv.url, req(n_out=6), api="chat", keep_text=True)
    assert o.status == "ok"
    assert list(o.chunk_reasoning) == [1, 1, 1, 0, 0, 0]
    assert o.first_token_s == o.chunk_t[0]
    assert o.first_visible_s == o.chunk_t[3] > o.first_token_s
    assert o.reasoning_tokens == 3
    assert o.text == " tok" * 3  # visible text only


async def test_usage_details_are_read() -> None:
    async with StreamServer(cached_tokens=7, prompt_token_bias=1) as srv:
        o = await one(srv.url, req(n_in=30))
    assert o.cached_tokens == 7
    assert o.input_tokens_server == 31  # the drift the loadgen reports (here a BOS token)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_non_streaming(api: str) -> None:
    async with StreamServer(ttft_s=0.02, itl_s=0.002, reasoning_tokens=2) as srv:
        o = await one(srv.url, req(n_out=5), api=api, stream=False, keep_text=True)
        (rec,) = srv.records
    assert o.status == "ok", o.error_message
    assert "stream" not in rec.body
    assert len(o.chunk_t) == 1 and o.chunk_t[0] >= rec.write_t[0]
    assert o.output_tokens_server == 5
    assert o.first_token_s == o.last_token_s == o.chunk_t[0]
    assert o.finish_reason == "length"
    assert o.text == (" tok" * 3 if api == "chat" else " tok" * 5)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_request_body(api: str) -> None:
    async with StreamServer() as srv:
        o = await one(
            srv.url,
            req(n_in=20, n_out=4),
            api=api,
            model="m1",
            use_min_tokens=True,
            extra_body={"temperature": 0},
        )
        (rec,) = srv.records
    assert o.status == "ok"
    body = rec.body
    assert rec.path == ("/v1/chat/completions" if api == "chat" else "/v1/completions")
    assert body["model"] == "m1" and body["max_tokens"] == 4 and body["min_tokens"] == 4
    assert body["ignore_eos"] is True and body["temperature"] == 0
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert rec.accept_encoding == "identity"  # no compression holding chunks back
    if api == "chat":
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert len(body["messages"][0]["content"].split()) == 20
    else:
        assert len(body["prompt"].split()) == 20


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_shared_prefix_hashes_hit_the_servers_prefix_cache(api: str) -> None:
    cases = [
        (1, (1, 2, 3), 0),  # cold
        (2, (1, 2, 9), 32),  # two shared blocks of 16
        (3, (5,), 0),  # other first block: nothing shared
        (4, None, 0),  # no hashes: a unique prompt
        (5, (1, 2, 3), 48),  # the same three blocks again
    ]
    async with (
        StreamServer(prefix_block=16) as srv,
        OpenAIBackend(srv.url, api=api, block_size=16) as b,
    ):
        outs = [await b.send(req(i, n_in=48, prefix_hashes=h), clock) for i, h, _ in cases]
    assert [o.cached_tokens for o in outs] == [want for *_, want in cases]
    assert {o.input_tokens_server for o in outs} == {48}


async def test_model_discovered_and_trace_model_not_sent() -> None:
    async with StreamServer(model="served-model") as srv:
        await one(srv.url, req(model="ChatGPT"))
        await one(srv.url, req(model="ChatGPT"), discover_model=False)
        await one(srv.url, req(model="m-b"), discover_model=False, use_request_model=True)
        await one(srv.url, req(model="m-b"), model="m-a", use_request_model=True)
        models = [r.body.get("model") for r in srv.records]
    assert models == ["served-model", None, "m-b", "m-a"]


async def test_real_prompt_and_messages_are_sent_verbatim() -> None:
    history = [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    async with StreamServer() as srv:
        async with OpenAIBackend(srv.url, api="chat") as b:
            await b.send(req(messages=history), clock)
        async with OpenAIBackend(srv.url + "/v1/") as b:
            await b.send(req(prompt="Why is the sky blue?", ignore_eos=False), clock)
        chat, comp = srv.records
    assert chat.body["messages"] == history
    assert comp.body["prompt"] == "Why is the sky blue?"
    assert "ignore_eos" not in comp.body


# -- failures are outcomes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, "2"), (429, None), (500, None), (503, "1")]
)
async def test_http_errors(status: int, retry_after: str | None) -> None:
    async with StreamServer(status=status, retry_after=retry_after) as srv:
        o = await one(srv.url)
    assert (o.status, o.error_class, o.http_status) == ("error", f"http_{status}", status)
    assert f"simulated HTTP {status}" in (o.error_message or "")
    assert ("Retry-After: 2" in o.error_message) == (retry_after == "2")
    assert not o.chunk_t and o.first_token_s is None and o.end_s is not None


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    o = await one(f"http://127.0.0.1:{port}")
    assert (o.status, o.error_class) == ("error", "connect")
    assert o.http_status is None


async def test_stall_is_cut_by_the_stall_timeout() -> None:
    async with StreamServer(stall_after=2, itl_s=0.005) as srv:
        o = await one(srv.url, stall_timeout_s=0.3, timeout_s=20)
    assert (o.status, o.error_class) == ("timeout", "stall")
    assert len(o.chunk_t) == 2  # what came before the stall is kept
    assert o.end_s - o.last_token_s >= 0.3


async def test_total_timeout() -> None:
    # bytes keep coming (keep-alive comments), so only the total timeout can end it
    async with StreamServer(ttft_s=0.0, itl_s=0.1, keepalive=True) as srv:
        o = await one(srv.url, req(n_out=100), timeout_s=0.6, stall_timeout_s=5)
    assert (o.status, o.error_class) == ("timeout", "timeout")
    assert 1 <= len(o.chunk_t) < 100


async def test_slow_first_byte() -> None:
    async with StreamServer(first_byte_delay_s=0.4) as srv:
        cut = await one(srv.url, stall_timeout_s=0.15)
        ok = await one(srv.url, stall_timeout_s=2)
    assert (cut.status, cut.error_class) == ("timeout", "stall")
    assert ok.status == "ok" and ok.first_token_s - ok.sent_s >= 0.4


async def test_drop_mid_stream() -> None:
    async with StreamServer(drop_after=3, itl_s=0.005) as srv:
        o = await one(srv.url)
    assert (o.status, o.error_class) == ("error", "disconnect")
    assert len(o.chunk_t) == 3


async def test_malformed_sse() -> None:
    async with StreamServer(malformed_after=2) as srv:
        o = await one(srv.url)
    assert (o.status, o.error_class) == ("error", "sse_malformed")
    assert len(o.chunk_t) == 2
    assert "unterminated" in (o.error_message or "")


async def test_error_object_inside_200_stream() -> None:
    async with StreamServer(error_after=1) as srv:
        o = await one(srv.url)
    assert (o.status, o.error_class, o.http_status) == ("error", "stream_error", 200)
    assert "simulated engine failure" in (o.error_message or "")
    assert len(o.chunk_t) == 1


async def test_missing_done_is_tolerated_when_finished() -> None:
    async with StreamServer(omit_done=True) as srv:
        o = await one(srv.url, req(n_out=4))
    assert o.status == "ok" and len(o.chunk_t) == 4 and o.output_tokens_server == 4


async def test_stream_ending_early_is_truncated() -> None:
    async with StreamServer(end_after=2) as srv:
        o = await one(srv.url, req(n_out=6))
    assert (o.status, o.error_class) == ("error", "truncated")
    assert len(o.chunk_t) == 2


async def test_fault_every_second_request() -> None:
    async with StreamServer(status=500, fault_every=2) as srv, OpenAIBackend(srv.url) as b:
        outs = [await b.send(req(i), clock) for i in range(4)]
    assert [o.status for o in outs] == ["ok", "error", "ok", "error"]


async def test_cancel_returns_partial_outcome() -> None:
    async with (
        StreamServer(stall_after=2, itl_s=0.002) as srv,
        OpenAIBackend(srv.url, stall_timeout_s=10) as b,
    ):
        task = asyncio.create_task(b.send(req(), clock))
        await srv.wait_until(lambda: bool(srv.records) and len(srv.records[0].write_t) == 2)
        task.cancel()
        o = await asyncio.wait_for(task, 5)
        assert not task.cancelled()
        assert o.status == "cancelled" and o.end_s is not None
        assert len(o.chunk_t) <= 2
        # a second cancel while cancelled is pending propagates
        task2 = asyncio.create_task(b.send(req(2), clock))
        await srv.wait_records(2, finished=False)
        task2.cancel()
        task2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task2


async def test_cancel_while_waiting_for_headers() -> None:
    async with (
        StreamServer(first_byte_delay_s=5) as srv,
        OpenAIBackend(srv.url, stall_timeout_s=10) as b,
    ):
        task = asyncio.create_task(b.send(req(), clock))
        await srv.wait_records(1, finished=False)
        task.cancel()
        o = await asyncio.wait_for(task, 5)
    assert (o.status, o.error_class, o.http_status) == ("cancelled", "cancelled", None)
    assert not o.chunk_t and o.first_token_s is None and o.end_s >= o.sent_s


# -- the key, the pool, the registry ------------------------------------------------


async def test_api_key_sent_as_bearer_and_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-very-secret-0042"
    monkeypatch.setenv("BB_TEST_KEY", secret)
    seen: list[str | None] = []

    async def echo_401(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        seen.append(auth)
        return web.json_response({"error": {"message": f"bad key {auth}"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/completions", echo_401)
    runner, url = await start_app(app)
    try:
        o = await one(url, api_key_env="BB_TEST_KEY")
    finally:
        await runner.cleanup()
    assert seen == [f"Bearer {secret}"]
    assert o.error_class == "http_401"
    assert "***" in o.error_message
    assert secret not in repr(o)
    async with StreamServer() as srv:
        b = OpenAIBackend(srv.url, api_key_env="BB_TEST_KEY")
        await b.start()
        ok = await b.send(req(), clock)
        await b.close()
        assert srv.records[0].authorization == f"Bearer {secret}"
    assert secret not in repr(ok) and secret not in repr(vars(b))  # forgotten at close


@pytest.mark.parametrize("key", [None, "sk-wrong-key-777"])
async def test_rejected_credentials_stop_at_start(monkeypatch: pytest.MonkeyPatch, key) -> None:
    async def models_401(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "invalid key"}}, status=401)

    if key:
        monkeypatch.setenv("BB_TEST_KEY", key)
    else:
        monkeypatch.delenv("BB_TEST_KEY", raising=False)
    app = web.Application()
    app.router.add_get("/v1/models", models_401)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        b = OpenAIBackend(url, api_key_env="BB_TEST_KEY")
        with pytest.raises(BackendError, match="BB_TEST_KEY") as err:
            await b.start()
    finally:
        await runner.cleanup()
    assert ("is not set" in str(err.value)) == (key is None)
    assert key is None or key not in str(err.value)
    assert b._session is None  # closed again


async def test_no_key_no_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with StreamServer() as srv:
        await one(srv.url)
        assert srv.records[0].authorization is None


async def test_no_connection_cap_300_concurrent_streams() -> None:
    async with StreamServer(ttft_s=0.3, itl_s=0.01) as srv:
        async with OpenAIBackend(srv.url) as b:
            outs = await asyncio.gather(*(b.send(req(i, n_out=4), clock) for i in range(300)))
        assert srv.peak_active >= 300  # aiohttp's default connector would cap this at 100
    assert [o.status for o in outs].count("ok") == 300
    assert len({o.request_id for o in outs}) == 300


async def test_metrics_endpoint_has_vllm_names() -> None:
    async with (
        StreamServer(stall_after=1, stall_max_s=5) as srv,
        OpenAIBackend(srv.url, stall_timeout_s=10) as b,
    ):
        tasks = [asyncio.create_task(b.send(req(i), clock)) for i in range(3)]
        await srv.wait_records(3, finished=False)
        async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
            text = await r.text()
        for t in tasks:
            t.cancel()
        outs = await asyncio.gather(*tasks)
    assert 'vllm:num_requests_running{model_name="burstbench-test"} 3.0' in text
    assert "vllm:num_requests_waiting" in text and "vllm:generation_tokens_total" in text
    assert {o.status for o in outs} == {"cancelled"}


async def test_chunk_times_come_from_the_socket_callback() -> None:
    async with StreamServer(itl_s=0.003) as srv, OpenAIBackend(srv.url) as b:
        assert b.arrival_timestamps  # this aiohttp lets the timed protocol in
        o = await b.send(req(n_out=5), clock)
        (rec,) = srv.records
    # arrival times, not read times: each after its write, and none after the read ended
    assert all(c >= w for c, w in zip(o.chunk_t, rec.write_t, strict=True))
    assert o.chunk_t[-1] <= o.end_s


def test_registry_and_protocol() -> None:
    cls = get_backend("openai")
    assert cls is OpenAIBackend
    assert isinstance(OpenAIBackend("http://127.0.0.1:1"), Backend)
    with pytest.raises(UsageError, match="--api"):
        OpenAIBackend("http://127.0.0.1:1", api="embeddings")
    with pytest.raises(UsageError, match="http"):
        OpenAIBackend("127.0.0.1:8000")
    with pytest.raises(UsageError, match="stall_timeout_s"):
        OpenAIBackend("http://127.0.0.1:1", stall_timeout_s=0)


async def test_server_in_a_separate_process() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "burstbench.testing.stream_server",
            "--ttft",
            "0.01",
            "--itl",
            "0.001",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        url = json.loads(line)["url"]
        o = await one(url, req(n_out=5))
        async with aiohttp.ClientSession() as s, s.get(url + "/stats") as r:
            stats = await r.json()
    finally:
        proc.terminate()
        proc.wait(10)
    assert o.status == "ok" and len(o.chunk_t) == 5
    (rec,) = stats["records"]
    # same host clock: the client saw each chunk after the other process wrote it
    assert all(c >= w for c, w in zip(o.chunk_t, rec["write_t"], strict=True))
    assert proc.returncode == 0


def test_command_line_flags_reach_the_settings() -> None:
    from burstbench.testing.stream_server import _parser, settings_from_args

    a = _parser().parse_args(
        shlex.split(
            "--ttft 0.05 --itl 0.02 --tokens-per-chunk 3 --output-tokens 7 --reasoning-tokens 2 "
            "--usage continuous --events-per-write 4 --empty-every 5 --prefix-block 16 --status 429 "
            "--retry-after 3 --first-byte-delay 0.1 --stall-after 2 --drop-after 3 "
            "--malformed-after 4 --error-after 5 --end-after 6 --omit-done --fault-every 2"
        )
    )
    s = settings_from_args(a)
    assert (s.ttft_s, s.itl_s, s.tokens_per_chunk, s.default_output_tokens) == (0.05, 0.02, 3, 7)
    assert (s.reasoning_tokens, s.usage, s.events_per_write, s.empty_every) == (
        2,
        "continuous",
        4,
        5,
    )
    assert (s.prefix_block, s.status, s.retry_after, s.first_byte_delay_s) == (16, 429, "3", 0.1)
    assert (s.stall_after, s.drop_after, s.malformed_after, s.error_after) == (2, 3, 4, 5)
    assert (s.end_after, s.omit_done, s.fault_every) == (6, True, 2)


def test_settings_copy_is_independent() -> None:
    s = StreamSettings(status=500, stall_after=1)
    off = s.faults_off()
    assert off.status is None and off.stall_after is None and s.status == 500


# -- odd but real streams, from a server that sends given bytes ------------------------


class RawServer:
    """A 200 text/event-stream (or given content type) answer with fixed bytes."""

    def __init__(
        self, body: bytes, content_type: str = "text/event-stream", hold_s: float = 0.0
    ) -> None:
        self.body, self.content_type, self.hold_s = body, content_type, hold_s

    async def __aenter__(self) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": self.content_type})
            await resp.prepare(request)
            await resp.write(self.body)
            if self.hold_s:  # keep the response open after the body
                await asyncio.sleep(self.hold_s)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/completions", handle)
        app.router.add_post("/v1/chat/completions", handle)
        self.runner, url = await start_app(app)
        return url

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def sse(*events: str, eol: str = "\n") -> bytes:
    return "".join(f"data: {e}{eol}{eol}" for e in events).encode()


@pytest.mark.parametrize(
    ("body", "api", "want"),
    [
        (sse('{"choices": [1]}', "[DONE]"), "completions", ("error", "sse_malformed")),
        (sse('{"choices": "x"}', "[DONE]"), "chat", ("error", "sse_malformed")),
        (sse("[1, 2]", "[DONE]"), "completions", ("error", "sse_malformed")),
        (sse('{"a": 1} {"b": 2}', "[DONE]"), "completions", ("error", "sse_malformed")),
        (b"data: \xff\xfe\n\n", "completions", ("error", "sse_malformed")),
        (
            sse('{"object": "error", "message": "old vLLM style", "code": 400}'),
            "completions",
            ("error", "stream_error"),
        ),
        (
            sse('  {"choices": [{"text": "a", "finish_reason": "length"}]}  ', "[DONE]"),
            "completions",
            ("ok", None),
        ),
        (
            sse(
                '{"choices": [{"delta": {"tool_calls": [{"index": 0}]}, "finish_reason": "tool_calls"}]}',
                "[DONE]",
                eol="\r\n",
            ),
            "chat",
            ("ok", None),
        ),
        (sse('{"choices": [{"text": "a"}]}'), "completions", ("error", "truncated")),
        (b"", "completions", ("error", "truncated")),
    ],
)
async def test_odd_streams(body: bytes, api: str, want: tuple[str, str | None]) -> None:
    async with RawServer(body) as url:
        o = await one(url, api=api)
    assert (o.status, o.error_class) == want, o.error_message
    if want[0] == "ok":
        assert len(o.chunk_t) == 1 and o.first_visible_s == o.chunk_t[0]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1]",
        b'{"choices": [1]}',
        b'{"choices": [{"text": "a"}], "usage": {"completion_tokens": "many"}}',
    ],
)
async def test_malformed_non_streamed_bodies(body: bytes) -> None:
    async with RawServer(body, "application/json") as url:
        o = await one(url, stream=False)
    assert (o.status, o.error_class) == ("error", "malformed"), o.error_message
    assert len(o.chunk_t) == len(o.chunk_tokens) == len(o.chunk_reasoning)


async def test_timeout_messages_name_the_limit() -> None:
    async with StreamServer(stall_after=1) as srv:
        o = await one(srv.url, stall_timeout_s=0.2)
    assert o.error_message == "no data for 0.2 s (stall timeout)"


async def test_html_answer_is_named() -> None:
    async with RawServer(b"<html>proxy login</html>", "text/html") as url:
        o = await one(url)
    assert (o.status, o.error_class) == ("error", "truncated")
    assert "text/html" in o.error_message


async def test_stream_held_open_after_done_is_still_ok() -> None:
    body = sse('{"choices": [{"text": "a", "finish_reason": "length"}]}', "[DONE]")
    async with RawServer(body, hold_s=3.0) as url:
        o = await one(url, timeout_s=10)
    assert o.status == "ok" and len(o.chunk_t) == 1
    assert o.end_s - o.last_token_s < 2.5  # [DONE] ended it; the open socket was let go


async def test_json_answer_to_a_stream_request() -> None:
    body = b'{"choices": [{"text": " a b", "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    async with RawServer(body, "application/json") as url:
        o = await one(url)
    assert o.status == "ok" and o.output_tokens_server == 2 and len(o.chunk_t) == 1


async def test_keepalives_and_crlf_from_the_stream_server() -> None:
    async with StreamServer(keepalive=True, crlf=True, itl_s=0.002) as srv:
        o = await one(srv.url, req(n_out=5))
        (rec,) = srv.records
    assert o.status == "ok" and len(o.chunk_t) == len(rec.write_t) == 5


async def test_long_sse_line() -> None:
    text = "w " * 1_500_000  # one 3 MB event, beyond aiohttp's default 64 KiB buffer
    event = json.dumps({"choices": [{"text": text, "finish_reason": "length"}]})
    async with RawServer(sse(event, "[DONE]")) as url:
        o = await one(url, keep_text=True)
    assert o.status == "ok" and len(o.chunk_t) == 1 and o.text == text


async def test_random_garbage_streams_never_raise() -> None:
    import random

    rng = random.Random(7)
    pieces = [
        b"data: ",
        b'{"choices": [{"text": "a"}]}',
        b'{"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]}',
        b'{"usage": {"completion_tokens": 3}}',
        b'{"error": {"message": "x"}}',
        b"[DONE]",
        b"\n",
        b"\r\n",
        b"\r",
        b": ping",
        b"{",
        b"}",
        b"\xff",
        b"null",
        b'"choices"',
    ]
    server = RawServer(b"")
    url = await server.__aenter__()
    try:
        async with OpenAIBackend(url, api="chat") as b:
            for i in range(120):
                server.body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
                o = await b.send(req(i), clock)
                assert o.status in ("ok", "error"), (server.body, o)
                assert len(o.chunk_t) == len(o.chunk_tokens) == len(o.chunk_reasoning)
                assert o.end_s is not None and (o.status == "ok") == (o.error_class is None)
                assert o.error_class != "internal", (server.body, o.error_message)
    finally:
        await server.__aexit__()


async def test_non_streamed_answer_is_not_cut_by_the_stall_timeout() -> None:
    async with StreamServer(ttft_s=0.3) as srv:
        o = await one(srv.url, req(n_out=2), stream=False, stall_timeout_s=0.1)
        s = await one(srv.url, req(n_out=2), stream=True, stall_timeout_s=0.1)
    assert o.status == "ok" and o.first_token_s - o.sent_s >= 0.3
    assert (s.status, s.error_class) == ("timeout", "stall")


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_empty_text_chunks_still_carry_tokens(api: str) -> None:
    # vLLM streams a chunk with "" text for a token that has no text yet; it is a
    # token chunk (E2EL must not end early), but not visible content
    async with StreamServer(empty_every=3, itl_s=0.002) as srv:
        o = await one(srv.url, req(n_out=6), api=api, keep_text=True)
        (rec,) = srv.records
    assert o.status == "ok"
    assert len(o.chunk_t) == len(rec.write_t) == 6
    assert o.last_token_s == o.chunk_t[-1] >= rec.write_t[-1]
    assert o.text == " tok" * 4


async def test_openai_closing_empty_delta_is_not_a_chunk() -> None:
    body = sse(
        '{"choices": [{"delta": {"role": "assistant", "content": ""}}]}',
        '{"choices": [{"delta": {"content": "hi"}}]}',
        '{"choices": [{"delta": {}, "finish_reason": "stop"}]}',
        '{"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}',
        "[DONE]",
    )
    async with RawServer(body) as url:
        o = await one(url, api="chat")
    assert o.status == "ok" and len(o.chunk_t) == 1 and o.output_tokens_server == 1


async def test_sent_s_is_when_the_body_was_written_not_when_handed_to_aiohttp() -> None:
    # A counting clock: the hand-off to aiohttp reads 0, so a later reading proves that
    # sent_s was taken again when the body reached the socket.
    def counting_clock():
        ticks = iter(range(1_000_000))
        return lambda: float(next(ticks))

    async with StreamServer(ttft_s=0.0, itl_s=0.0) as srv, OpenAIBackend(srv.url) as b:
        o = await b.send(req(), counting_clock())
    assert o.status == "ok"
    assert 0.0 < o.sent_s < o.first_token_s
    # nothing written (connection refused): sent_s stays the hand-off time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with OpenAIBackend(f"http://127.0.0.1:{port}", model="m", discover_model=False) as b:
        o = await b.send(req(), counting_clock())
    assert o.status == "error" and o.error_class == "connect"
    assert o.sent_s == 0.0


def _text_event(n_bytes: int) -> bytes:
    """One completions event whose JSON is ``n_bytes`` long."""
    head, tail = b'{"choices": [{"text": "', b'", "finish_reason": "length"}]}'
    return head + b"x" * (n_bytes - len(head) - len(tail)) + tail


@pytest.mark.parametrize(
    ("body", "want"),
    [
        # one event just over the limit: a hostile server's 64 MiB chunks cost 843 MB and counted ok
        (b"data: " + _text_event(MAX_SSE_EVENT_BYTES + 1) + b"\n\ndata: [DONE]\n\n", ("error", "sse_malformed")),
        # the same bytes as many data: lines of one event (joined with newlines by the rules)
        (b"".join(b"data: " + b"y" * (1 << 20) + b"\n" for _ in range(MAX_SSE_EVENT_BYTES >> 20)) + b"data: z\n\n",
         ("error", "sse_malformed")),
        # a line that never ends
        (b"data: " + b"x" * (MAX_SSE_EVENT_BYTES + 1), ("error", "sse_malformed")),
        # an event just under the limit is a (long) answer like any other
        (b"data: " + _text_event(MAX_SSE_EVENT_BYTES - 64) + b"\n\ndata: [DONE]\n\n", ("ok", None)),
    ],
    ids=["event-over", "data-lines-over", "unended-line", "event-under"],
)
async def test_sse_events_are_capped(body: bytes, want: tuple[str, str | None]) -> None:
    async with RawServer(body) as url:
        o = await one(url)
    assert (o.status, o.error_class) == want, o.error_message
    if want[0] == "error":
        assert f"{MAX_SSE_EVENT_BYTES:,} bytes" in o.error_message


# -- connections opened before the run -----------------------------------------------

ONE_TOKEN = {"choices": [{"text": "hi", "finish_reason": "length"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


async def _pool_app(models, completions):
    """A server with the two routes the connection tests watch; (runner, url)."""
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return await start_app(app)


def _server_ports(runner: web.AppRunner) -> set[int]:
    """Peer ports of the connections the server holds open now."""
    return {t.get_extra_info("peername")[1] for t in runner.server._connections.values()}  # type: ignore[union-attr]


class _Reserve:
    """What each transport's pool shows a test: idle connections, connections opened, top-up tasks."""

    def __init__(self, b: OpenAIBackend) -> None:
        self.pool, self.reserve = b._pool, b._reserve
        assert (self.pool is not None) == (b.transport == "wire")
        assert self.pool is not None or (self.reserve is not None and self.reserve.usable)

    def idle(self) -> int:
        return len(self.pool.idle) if self.pool is not None else self.reserve.idle()

    def opened(self) -> int:
        return self.pool.opened if self.pool is not None else self.reserve.opened

    async def topped_up(self) -> None:
        tasks = (self.pool.reserve if self.pool is not None else self.reserve)._tasks
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_warm_pools_connections_that_the_sends_then_reuse() -> None:
    """``warm(n)`` opens n connections at start-up; n concurrent sends then connect no more
    (a send that has to connect pays it after its deadline, behind every open stream)."""
    ports: set[int] = set()
    gate = asyncio.Event()
    arrived = 0

    async def models(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # all n are open at once, so n connections are needed
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def completions(request: web.Request) -> web.Response:
        nonlocal arrived
        ports.add(request.transport.get_extra_info("peername")[1])
        arrived += 1
        if arrived == 6:
            gate.set()
        await gate.wait()  # the six are in flight together: none could reuse another's connection
        return web.json_response(ONE_TOKEN)

    runner, url = await _pool_app(models, completions)
    try:
        async with OpenAIBackend(url) as b:
            assert await b.warm(6) == 6
            warmed = _server_ports(runner)  # warm's six (and start()'s model lookup's, which aiohttp may reuse)
            outs = await asyncio.wait_for(asyncio.gather(*(b.send(req(i), clock) for i in range(6))), 10)
    finally:
        await runner.cleanup()
    assert [o.status for o in outs] == ["ok"] * 6
    assert len(ports) == 6 and ports <= warmed  # every send on a connection open before the sends


async def test_top_up_reopens_the_connections_sends_took_so_later_sends_do_not_connect() -> None:
    """After ``warm(n)``, sends held open take pooled connections; ``top_up`` opens as many new
    ones in the background, so the next n concurrent sends all find one: no send connects, and
    the server sees exactly the connections warm and top_up opened."""
    accepted: list[int] = []  # peer port of every completion request, in order
    hold = asyncio.Event()

    async def models(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # the n warm requests overlap, so n connections are opened
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def completions(request: web.Request) -> web.Response:
        accepted.append(request.transport.get_extra_info("peername")[1])
        if request.headers.get("traceparent"):  # the first wave stays in flight until released
            await hold.wait()
        return web.json_response(ONE_TOKEN)

    runner, url = await _pool_app(models, completions)
    try:
        async with OpenAIBackend(url) as b:
            reserve = _Reserve(b)
            assert await b.warm(4) == 4
            assert reserve.idle() == 4
            held_reqs = [req(i) for i in range(4)]
            for r in held_reqs:
                r.traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
            held = [asyncio.ensure_future(b.send(r, clock)) for r in held_reqs]
            while len(accepted) < 4:  # the four held sends
                await asyncio.sleep(0.01)
            assert reserve.idle() == 0  # the held sends took every warm connection
            opened, open_before = reserve.opened(), _server_ports(runner)
            b.top_up()
            b.top_up()  # a second call while the first is opening adds nothing
            await reserve.topped_up()
            assert reserve.idle() == 4 and reserve.opened() == opened + 4
            reserved = _server_ports(runner) - open_before
            outs = await asyncio.wait_for(asyncio.gather(*(b.send(req(10 + i), clock) for i in range(4))), 10)
            idle_after = reserve.idle()  # 4: they ran on the reserve's; 8 had they opened their own
            opened_after = reserve.opened()
            hold.set()
            outs += await asyncio.wait_for(asyncio.gather(*held), 10)
    finally:
        await runner.cleanup()
    assert [o.status for o in outs] == ["ok"] * 8
    assert idle_after == 4 and opened_after == opened + 4
    assert len(reserved) == 4 and set(accepted[4:]) == reserved  # the reserve's four, no others


@pytest.mark.parametrize("count", ["4294967296", "-3", "1e400", "18446744073709551616"])
async def test_an_impossible_per_chunk_token_count_fails_the_request_and_keeps_its_timings(count: str) -> None:
    """A per-chunk usage count past the 32-bit chunk arrays (or negative, or infinite) is a malformed
    stream: the request fails with its chunk times kept, where it used to raise OverflowError while
    the outcome was being saved."""
    ok = '{"choices": [{"text": "a"}], "usage": {"completion_tokens": 1}}'
    bad = '{"choices": [{"text": "b"}], "usage": {"completion_tokens": ' + count + "}}"
    async with RawServer(sse(ok, bad, "[DONE]")) as url:
        o = await one(url)
    assert (o.status, o.error_class) == ("error", "sse_malformed"), o
    assert "token count" in (o.error_message or "")
    assert len(o.chunk_t) == 2 and o.chunk_tokens[0] == 1


async def test_an_impossible_final_usage_is_ignored_and_the_chunks_counted() -> None:
    usage = '{"choices": [], "usage": {"completion_tokens": 2, "prompt_tokens": 99999999999}}'
    async with RawServer(sse('{"choices": [{"text": "a"}]}', '{"choices": [{"text": "b"}]}', usage, "[DONE]")) as url:
        o = await one(url)
    assert o.status == "ok", o
    assert o.output_tokens_server is None and o.input_tokens_server is None  # the object as a whole is unusable
    assert o.output_tokens_counted == 2
