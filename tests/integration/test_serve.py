"""The reference server on 127.0.0.1: real aiohttp server, real client, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel
from burstbench.backends.reference.faults import FaultConfig
from burstbench.backends.reference.models import load_model
from burstbench.backends.reference.server import ReferenceServer, start_in_thread

MODEL = "llama-3.1-8b"
HW = "h100-sxm"


async def read_sse(resp: aiohttp.ClientResponse) -> tuple[list[tuple[float, str]], float]:
    """(arrival time, data payload) of every SSE event, and the request's start time."""
    events = []
    buf = b""
    async for chunk in resp.content.iter_any():
        now = time.perf_counter()
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if line.startswith(b"data: "):
                    events.append((now, line[6:].decode()))
    return events, 0.0


async def wait_until(pred, timeout: float = 10.0) -> None:
    """Poll an async predicate until true (bounded); fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached within timeout")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = await (await session.get(url + "/metrics")).text()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


async def test_stream_follows_the_model_schedule():
    scale = 2.0
    prompt_words, n_out = 200, 40
    cm = CostModel(load_model(MODEL), load_hardware(HW))
    expected = [cm.step_time([(prompt_words, 0)], [])]
    for i in range(n_out - 1):
        expected.append(expected[-1] + cm.step_time([], [prompt_words + i]))
    expected = [x / scale for x in expected]
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=scale) as srv, aiohttp.ClientSession() as s:
        body = {"model": MODEL, "prompt": "word " * prompt_words, "max_tokens": n_out, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        async with s.post(srv.url + "/v1/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events, _ = await read_sse(r)
        stats = await (await s.get(srv.url + "/stats")).json()
    assert events[-1][1] == "[DONE]"
    payloads = [json.loads(p) for _, p in events[:-1]]
    token_events = [(t - t0, p) for (t, _), p in zip(events, payloads, strict=False) if p["choices"] and p["choices"][0]["text"]]
    # one event per iteration; a handler that wakes late merges what is ready (as vLLM's
    # output collector does), so count words, not events
    counts = [len(p["choices"][0]["text"].split()) for _, p in token_events]
    assert sum(counts) == n_out and min(counts) >= 1
    assert len(token_events) >= n_out * 0.8
    usage = payloads[-1]["usage"]
    assert usage["completion_tokens"] == n_out and usage["prompt_tokens"] == prompt_words
    # finish_reason rides on the last token's event (as in vLLM), not on an empty extra one
    assert token_events[-1][1]["choices"][0]["finish_reason"] == "length"
    assert all(p["choices"][0]["finish_reason"] is None for _, p in token_events[:-1])
    assert len(payloads) == len(token_events) + 1  # + the usage chunk
    # never early (absolute deadlines), and not much late on a shared machine
    done = 0
    for (t, _), c in zip(token_events, counts, strict=True):
        done += c
        assert t >= expected[done - 1] - 0.002
        assert t <= expected[done - 1] + 0.1  # released on schedule, not bunched at the end
    assert token_events[-1][0] <= expected[-1] * 1.5 + 0.05
    assert stats["lateness_s"]["n"] == len(token_events)


async def test_queue_full_is_503_with_retry_after():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=1.0, max_num_seqs=1, max_waiting=1, retry_after_s=3) as srv, aiohttp.ClientSession() as s:
        body = {"prompt": "a b c", "max_tokens": 400, "ignore_eos": True, "stream": True}
        r1 = await s.post(srv.url + "/v1/completions", json=body)
        await r1.content.readline()  # first event: request 1 is running
        r2 = await s.post(srv.url + "/v1/completions", json=body)  # headers back: queued
        assert r2.status == 200
        r3 = await s.post(srv.url + "/v1/completions", json=body)
        assert r3.status == 503
        assert r3.headers["Retry-After"] == "3"
        err = (await r3.json())["error"]
        assert set(err) == {"message", "type", "param", "code"}
        r1.close()
        r2.close()
        # the dropped clients' requests are aborted in the engine
        await wait_until(lambda: _idle(s, srv.url))


async def _idle(s, url):
    return await metric(s, url, "vllm:num_requests_running") == 0 and await metric(s, url, "vllm:num_requests_waiting") == 0


async def test_api_key_required_and_checked():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=50, api_key="sekret-123") as srv, aiohttp.ClientSession() as s:
        body = {"prompt": "hello", "max_tokens": 2}
        r = await s.post(srv.url + "/v1/completions", json=body)
        assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        r = await s.post(srv.url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
        r = await s.get(srv.url + "/v1/models")
        assert r.status == 401
        r = await s.post(srv.url + "/v1/completions", json=body, headers={"Authorization": "Bearer sekret-123"})
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] >= 1
        assert (await s.get(srv.url + "/health")).status == 200  # health stays open, as in vLLM


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        ("/v1/completions", b"{not json", 400, None, None),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
        ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", None),
        ("/v1/completions", {"prompt": "x " * 10, "max_tokens": 131070}, 400, "max_tokens", "context_length_exceeded"),
        ("/v1/completions", {"prompt": "", "max_tokens": 3}, 400, "prompt", None),
        ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 3}, 400, "prompt", None),
        ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n", None),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model", "model_not_found"),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, None, None),
    ],
)
async def test_validation_errors_are_openai_style(path, body, status, param, code):
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=50) as srv, aiohttp.ClientSession() as s:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await s.post(srv.url + path, data=data, headers={"Content-Type": "application/json"})
        assert r.status == status
        err = (await r.json())["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        if param is not None:
            assert err["param"] == param
        if code is not None:
            assert err["code"] == code


async def test_request_too_large_is_413():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=50, max_request_bytes=1000) as srv, aiohttp.ClientSession() as s:
        r = await s.post(srv.url + "/v1/completions", json={"prompt": "x " * 2000, "max_tokens": 1})
        assert r.status == 413
        assert "error" in await r.json()


async def test_metrics_parse_and_count_tokens():
    from prometheus_client.parser import text_string_to_metric_families

    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=50) as srv, aiohttp.ClientSession() as s:
        for n in (3, 7):
            r = await s.post(srv.url + "/v1/completions", json={"prompt": "one two three four", "max_tokens": n, "ignore_eos": True})
            assert r.status == 200
        text = await (await s.get(srv.url + "/metrics")).text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:time_to_first_token_seconds"):
        assert name in fams, name
    gen = sum(s.value for s in fams["vllm:generation_tokens"].samples if s.name == "vllm:generation_tokens_total")
    prompt = sum(s.value for s in fams["vllm:prompt_tokens"].samples if s.name == "vllm:prompt_tokens_total")
    assert gen == 10 and prompt == 8
    ttft = fams["vllm:time_to_first_token_seconds"]
    count = [s.value for s in ttft.samples if s.name.endswith("_count")]
    buckets = [s.value for s in ttft.samples if s.name.endswith("_bucket")]
    assert count == [2] and buckets == sorted(buckets) and buckets[-1] == 2


async def test_chat_stream_reasoning_then_content_and_prefix_cache():
    async with ReferenceServer(model="deepseek-r1-distill-qwen-7b", hardware=HW, time_scale=50) as srv, aiohttp.ClientSession() as s:
        msgs = [{"role": "user", "content": " ".join(f"w{i}" for i in range(100))}]
        usages = []
        for _ in range(2):
            body = {"messages": msgs, "max_tokens": 50, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            async with s.post(srv.url + "/v1/chat/completions", json=body) as r:
                events, _ = await read_sse(r)
            payloads = [json.loads(p) for _, p in events if p != "[DONE]"]
            deltas = [p["choices"][0]["delta"] for p in payloads if p["choices"]]
            assert deltas[0].get("role") == "assistant"
            kinds = [("r" if "reasoning_content" in d else "c") for d in deltas[1:] if d.get("reasoning_content") or d.get("content")]
            assert kinds == sorted(kinds, key=lambda k: k == "c")  # all reasoning first
            reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
            content = "".join(d.get("content") or "" for d in deltas)
            usage = payloads[-1]["usage"]
            assert len(reasoning.split()) == usage["completion_tokens_details"]["reasoning_tokens"] == 37
            assert len(reasoning.split()) + len(content.split()) == usage["completion_tokens"] == 50
            usages.append(usage)
    assert usages[0]["prompt_tokens_details"]["cached_tokens"] == 0
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] == 96  # 6 full blocks of 16 words


async def test_output_length_is_drawn_deterministically_without_ignore_eos():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=100) as srv, aiohttp.ClientSession() as s:
        lens = []
        for _ in range(2):
            r = await s.post(srv.url + "/v1/completions", json={"prompt": "tell me a story", "max_tokens": 2000, "seed": 5})
            out = await r.json()
            assert len(out["choices"][0]["text"].split()) == out["usage"]["completion_tokens"]
            lens.append((out["usage"]["completion_tokens"], out["choices"][0]["finish_reason"]))
        assert lens[0] == lens[1] and lens[0][1] == "stop"


async def test_faults_error_codes_are_seeded():
    async def statuses(seed):
        faults = FaultConfig(error_rate=0.5, error_codes=(429, 500), seed=seed)
        async with ReferenceServer(model=MODEL, hardware=HW, time_scale=200, faults=faults) as srv, aiohttp.ClientSession() as s:
            out = []
            for _ in range(16):
                r = await s.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
                if r.status == 429:
                    assert r.headers["Retry-After"] == "1"
                out.append(r.status)
            return out

    a, b = await statuses(7), await statuses(7)
    assert a == b and {200, 429, 500} <= set(a) | {200} and 200 in a and (429 in a or 500 in a)


async def test_faults_in_stream():
    async def run(faults):
        async with ReferenceServer(model=MODEL, hardware=HW, time_scale=100, faults=faults) as srv, aiohttp.ClientSession() as s:
            body = {"prompt": "x y", "max_tokens": 20, "ignore_eos": True, "stream": True}
            async with s.post(srv.url + "/v1/completions", json=body) as r:
                try:
                    events, _ = await read_sse(r)
                    return [p for _, p in events], None
                except aiohttp.ClientPayloadError as exc:
                    return None, exc

    events, err = await run(FaultConfig(disconnect_rate=1.0, seed=1))
    assert err is not None or (events and events[-1] != "[DONE]")
    events, err = await run(FaultConfig(malformed_rate=1.0, seed=1))
    assert err is None and events[-1] == "[DONE]"
    bad = []
    for p in events[:-1]:
        try:
            json.loads(p)
        except json.JSONDecodeError:
            bad.append(p)
    assert len(bad) == 1
    events, err = await run(FaultConfig(stream_error_rate=1.0, seed=1))
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"


async def test_slow_first_byte_and_stall_delay_the_stream():
    faults = FaultConfig(slow_first_byte_rate=1.0, slow_first_byte_s=0.3, seed=0)
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=100, faults=faults) as srv, aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        r = await s.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3, "ignore_eos": True, "stream": True})
        assert time.perf_counter() - t0 >= 0.3
        await read_sse(r)
    faults = FaultConfig(stall_rate=1.0, stall_s=0.3, seed=0)
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=100, faults=faults) as srv, aiohttp.ClientSession() as s:
        r = await s.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 20, "ignore_eos": True, "stream": True})
        events, _ = await read_sse(r)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(events)]
        assert max(gaps) >= 0.29


async def test_replicas_share_load():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=2, replicas=2, router="round_robin") as srv, aiohttp.ClientSession() as s:
        body = {"prompt": "a b c", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        rs = [await s.post(srv.url + "/v1/completions", json=body) for _ in range(2)]
        await asyncio.gather(*(r.content.readline() for r in rs))
        text = await (await s.get(srv.url + "/metrics")).text()
        running = [line for line in text.splitlines() if line.startswith("vllm:num_requests_running")]
        assert running == [
            'vllm:num_requests_running{model_name="llama-3.1-8b",engine="0"} 1',
            'vllm:num_requests_running{model_name="llama-3.1-8b",engine="1"} 1',
        ]
        for r in rs:
            r.close()
        await wait_until(lambda: _idle(s, srv.url))


def test_start_in_thread_serves_sync_clients():
    handle = start_in_thread(model=MODEL, hardware=HW, time_scale=100)
    try:
        assert handle.url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(
            handle.url + "/v1/completions",
            data=json.dumps({"prompt": "a b", "max_tokens": 4, "ignore_eos": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.loads(resp.read())
        assert out["usage"]["completion_tokens"] == 4 and len(out["choices"][0]["text"].split()) == 4
        with urllib.request.urlopen(handle.url + "/v1/models", timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == MODEL
    finally:
        handle.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(handle.url + "/health", timeout=2)


def test_serve_cli_binds_loopback_and_answers():
    env = dict(os.environ, BURSTBENCH_API_KEY="k1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "burstbench", "serve", "--port", "0", "--time-scale", "100", "--replicas", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # one JSON line once listening
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            assert resp.status == 200
        req = urllib.request.Request(url + "/v1/models")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 401  # the key came from the environment
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "(tp=1, replicas=2," in err and "API key required" in err and "k1" not in err


def test_serve_cli_bad_flags_fail_cleanly():
    out = subprocess.run(
        [sys.executable, "-m", "burstbench", "serve", "--model", "no-such-model", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "unknown model" in out.stderr and "Traceback" not in out.stderr


async def test_stop_with_open_streams_ends_them():
    srv = ReferenceServer(model=MODEL, hardware=HW, time_scale=1)
    await srv.start()
    async with aiohttp.ClientSession() as s:
        r = await s.post(srv.url + "/v1/completions", json={"prompt": "a b", "max_tokens": 100000, "ignore_eos": True, "stream": True})
        await r.content.readline()
        await asyncio.wait_for(srv.stop(), timeout=10)  # hangs (and fails) if streams block shutdown
        rest = b""
        with contextlib.suppress(aiohttp.ClientError):
            rest = await asyncio.wait_for(r.content.read(), timeout=10)
        assert b"[DONE]" not in rest  # the stream was cut, not completed


async def test_multi_turn_chat_hits_the_cached_answer():
    async with ReferenceServer(model=MODEL, hardware=HW, time_scale=50) as srv, aiohttp.ClientSession() as s:
        user1 = " ".join(f"q{i}" for i in range(40))
        r1 = await (await s.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": user1}], "max_tokens": 40, "ignore_eos": True})).json()
        answer = r1["choices"][0]["message"]["content"]
        msgs = [{"role": "user", "content": user1}, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then what"}]
        r2 = await (await s.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 5, "ignore_eos": True})).json()
        # turn 1 put 40 prompt + 39 answer tokens in the KV cache (the last sampled token is
        # never fed back): 4 full blocks of 16, the 4th filled by decoding, all reusable
        assert r1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert r2["usage"]["prompt_tokens"] == 83
        assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] == 64


def test_sigterm_stops_serve_cleanly_with_exit_0(tmp_path):
    """A supervisor's SIGTERM ends `burstbench serve` like Ctrl-C: port closed, exit 0, 'stopped'."""
    import signal

    from url_process import url_process

    with url_process("burstbench", "serve", "--port", "0", capture_stderr=True) as (url, proc):
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read()
    assert rc == 0, (rc, err)  # was 143: killed by the signal before the server stopped
    assert "stopped" in err and "Traceback" not in err
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)
