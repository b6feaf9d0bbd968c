"""The reference server as an OpenAI/vLLM endpoint, and against hostile input (issues 13, 14).

Real server on 127.0.0.1, real aiohttp client, real sockets; each case names the
field vLLM's OpenAI server names in its 400.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from burstbench.backends.reference.server import ReferenceServer, ServeConfig
from burstbench.errors import UsageError
from tests.integration.test_serve import metric, wait_until

MODEL = "llama-3.1-8b"
HW = "h100-sxm"


def server(**kw):
    kw.setdefault("time_scale", 200)
    return ReferenceServer(model=MODEL, hardware=HW, **kw)


async def post(s: aiohttp.ClientSession, url: str, body, path: str = "/v1/completions"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with s.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


async def sse(s: aiohttp.ClientSession, url: str, body, path: str = "/v1/completions") -> list[dict]:
    async with s.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    events = [e[6:] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# -- issue 14: hostile input is a 400 naming the field, never a 500 -----------------------


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/completions", b'{"prompt": "a b", "max_tokens": ' + b"9" * 5000 + b"}", "max_tokens"),
        ("/v1/completions", b'{"prompt": "a b", "seed": -' + b"9" * 5000 + b"}", "seed"),
        ("/v1/completions", b'{"prompt": "a b", "stream": true, "stream_options": "x"}', "stream_options"),
        ("/v1/completions", b'{"prompt": "a b", "stream": true, "stream_options": {"include_usage": "yes"}}', "stream_options.include_usage"),
        ("/v1/completions", b'{"prompt": "a b", "stream_options": {"include_usage": true}}', "stream_options"),
        ("/v1/completions", b'{"prompt": [true, false]}', "prompt"),
        ("/v1/completions", b'{"prompt": [1, 99999999999]}', "prompt"),
        ("/v1/completions", b'{"prompt": "a b", "ignore_eos": "no"}', "ignore_eos"),
        ("/v1/completions", b'{"prompt": "a b", "priority": "high"}', "priority"),
        ("/v1/completions", b'{"prompt": "a b", "priority": 3}', "priority"),  # fcfs: vLLM refuses it too
        ("/v1/completions", b'{"prompt": "a b", "stream": 1}', "stream"),
        ("/v1/completions", b'{"prompt": "a b", "temperature": -0.5}', "temperature"),
        ("/v1/completions", b'{"prompt": "a b", "temperature": NaN}', "temperature"),
        ("/v1/completions", b'{"prompt": "a b", "top_p": 0}', "top_p"),
        ("/v1/completions", b'{"prompt": "a b", "presence_penalty": 3}', "presence_penalty"),
        ("/v1/completions", b'{"prompt": "a b", "logprobs": 21}', "logprobs"),
        ("/v1/completions", b'{"prompt": "a b", "logprobs": true}', "logprobs"),
        ("/v1/completions", b'{"prompt": "a b", "n": 100000}', "n"),
        ("/v1/completions", b'{"prompt": "a b", "stop": [""]}', "stop"),
        ("/v1/completions", b'{"prompt": "a b", "stop": 5}', "stop"),
        ("/v1/completions", b'{"prompt": "a b", "echo": "true"}', "echo"),
        ("/v1/completions", b'{"prompt": "a b", "min_tokens": 9, "max_tokens": 3}', "min_tokens"),
        ("/v1/completions", b'{"prompt": "a b", "model": 5}', "model"),
        ("/v1/completions", b'{"prompt": "a b", "response_format": {"type": "json_object"}}', "response_format"),
        ("/v1/completions", b'{"prompt": "a b", "response_format": "json"}', "response_format"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', "top_logprobs"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}', "top_logprobs"),
        ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}, {"content": "no role"}]}', "messages[1].role"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}', "tool_choice"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}', "tool_choice"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1.5}', "max_completion_tokens"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(path, raw, param):
    async with server() as srv, aiohttp.ClientSession() as s:
        status, body = await post(s, srv.url, raw, path)
    assert status == 400, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert len(err["message"]) < 400  # a 5,000-digit number is not echoed back whole


async def test_deeply_nested_json_is_400_not_500():
    nested = b'{"prompt": "a b", "metadata": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    async with server() as srv, aiohttp.ClientSession() as s:
        status, body = await post(s, srv.url, nested)
        assert status == 400 and "nests" in body["error"]["message"]
        # brackets inside strings are text, not nesting
        status, body = await post(s, srv.url, {"prompt": "[" * 3000, "max_tokens": 2})
        assert status == 200 and body["usage"]["prompt_tokens"] == 1


def test_settings_refuse_nan_and_empty_keys():
    with pytest.raises(UsageError, match="--fault-retry-after"):
        from burstbench.backends.reference.faults import FaultConfig

        FaultConfig(retry_after_s=float("nan"))
    with pytest.raises(UsageError, match="--time-scale"):
        ServeConfig(time_scale=float("nan"))
    with pytest.raises(UsageError, match="--api-key"):
        ServeConfig(api_key="")
    with pytest.raises(UsageError, match="--api-key"):
        ServeConfig(api_key="  ")


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--fault-retry-after", "nan"], {}, "--fault-retry-after"),
        (["--api-key", ""], {}, "--api-key"),
        ([], {"BURSTBENCH_API_KEY": ""}, "BURSTBENCH_API_KEY"),
        (["--header-timeout", "0"], {}, "--header-timeout"),
        (["--body-timeout", "inf"], {}, "--body-timeout"),
        (["--max-request-bytes", "-1"], {}, "--max-request-bytes"),
    ],
)
def test_serve_cli_refuses_bad_settings_in_one_line(args, env, needle):
    out = subprocess.run(
        [sys.executable, "-m", "burstbench", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sk:
            sk.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_url_is_bracketed():
    async with ReferenceServer(model=MODEL, hardware=HW, host="::1") as srv, aiohttp.ClientSession() as s:
        assert srv.url == f"http://[::1]:{srv.port}"
        async with s.get(srv.url + "/health") as r:
            assert r.status == 200


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_serve_cli_prints_a_bracketed_ipv6_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "burstbench", "serve", "--host", "::1", "--port", "0", "--time-scale", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = json.loads(proc.stdout.readline())["url"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert url.startswith("http://[::1]:") and url in err


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def test_slow_headers_and_bodies_are_cut_and_the_server_still_serves():
    n = 50
    async with server(header_timeout_s=0.5, body_timeout_s=0.5) as srv, aiohttp.ClientSession() as s:
        conns = []
        for i in range(n):
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            if i % 2:  # slow headers: never finished
                w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:  # slow body: headers done, 10 of 100 bytes sent
                w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
            await w.drain()
            conns.append((i, r, w))
        got = await asyncio.gather(*(_closed_by_server(r, 10) for _, r, _ in conns))
        for (i, _, w), data in zip(conns, got, strict=True):
            if i % 2 == 0:
                assert data.startswith(b"HTTP/1.1 408"), data[:80]
                assert b"request_timeout" in data
            w.close()
        status, body = await post(s, srv.url, {"prompt": "a b", "max_tokens": 3, "ignore_eos": True})
        assert status == 200 and body["usage"]["completion_tokens"] == 3


async def test_connections_past_the_cap_get_503_and_close():
    async with server(max_connections=10) as srv, aiohttp.ClientSession() as s:
        conns = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(15)]
        refused = 0
        for r, _ in conns[10:]:
            data = await _closed_by_server(r, 10)
            assert data.startswith(b"HTTP/1.1 503") and b"too_many_connections" in data
            refused += 1
        assert refused == 5
        for _, w in conns:
            w.close()
            await w.wait_closed()
        # the cap counts open connections: once they are gone, requests are served again
        await wait_until(lambda: _fewer(srv, 10))
        status, _ = await post(s, srv.url, {"prompt": "a b", "max_tokens": 2})
        assert status == 200


async def _fewer(srv: ReferenceServer, n: int) -> bool:
    return srv.open_connections < n


# -- issue 13: what vLLM does with each field ----------------------------------------------


async def test_stop_strings_cut_the_text_and_the_engine_stops_there():
    async with server() as srv, aiohttp.ClientSession() as s:
        base = {"prompt": "tell me about the sea", "max_tokens": 60, "ignore_eos": True, "temperature": 0}
        _, full = await post(s, srv.url, base)
        text = full["choices"][0]["text"]
        words = text.split()
        stop = " ".join(words[10:12])
        cut = text.index(stop)
        _, out = await post(s, srv.url, {**base, "stop": ["never-there", stop]})
        c = out["choices"][0]
        assert c["text"] == text[:cut] and c["finish_reason"] == "stop" and c["stop_reason"] == stop
        # the engine generated through the token that completed the stop string, no further
        assert out["usage"]["completion_tokens"] == 12
        _, inc = await post(s, srv.url, {**base, "stop": stop, "include_stop_str_in_output": True})
        assert inc["choices"][0]["text"] == text[: cut + len(stop)]
        chunks = await sse(s, srv.url, {**base, "stop": stop, "stream": True, "stream_options": {"include_usage": True}})
        assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == text[:cut]
        assert chunks[-1]["usage"]["completion_tokens"] == 12
        fins = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
        assert len(fins) == 1 and fins[0]["finish_reason"] == "stop" and fins[0]["stop_reason"] == stop


async def test_n_choices_are_generated_and_accounted():
    async with server() as srv, aiohttp.ClientSession() as s:
        status, out = await post(s, srv.url, {"prompt": "a b c", "max_tokens": 7, "ignore_eos": True, "n": 3})
        assert status == 200
        texts = [c["text"] for c in out["choices"]]
        assert [c["index"] for c in out["choices"]] == [0, 1, 2] and len(set(texts)) == 3
        assert all(len(t.split()) == 7 for t in texts)
        assert out["usage"]["completion_tokens"] == 21 and out["usage"]["prompt_tokens"] == 3
        assert await metric(s, srv.url, "vllm:generation_tokens_total") == 21
        chunks = await sse(s, srv.url, {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5, "ignore_eos": True, "n": 2, "stream": True, "stream_options": {"include_usage": True}}, "/v1/chat/completions")
        per = {0: "", 1: ""}
        fin = {}
        for ch in chunks:
            for c in ch["choices"]:
                per[c["index"]] += c["delta"].get("content") or ""
                if c["finish_reason"]:
                    fin[c["index"]] = c["finish_reason"]
        assert all(len(t.split()) == 5 for t in per.values()) and per[0] != per[1]
        assert fin == {0: "length", 1: "length"} and chunks[-1]["usage"]["completion_tokens"] == 10
        assert await metric(s, srv.url, "vllm:generation_tokens_total") == 31


async def test_completion_logprobs_have_vllms_shape():
    async with server() as srv, aiohttp.ClientSession() as s:
        _, out = await post(s, srv.url, {"prompt": "a b", "max_tokens": 6, "ignore_eos": True, "logprobs": 2})
        c = out["choices"][0]
        lp = c["logprobs"]
        assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        assert "".join(lp["tokens"]) == c["text"] and len(lp["tokens"]) == 6
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
        assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"])
        for tok, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
            assert len(top) == 2 and top[tok] == v and max(top.values()) == v
        # echo: the prompt first, its first token without a logprob
        _, out = await post(s, srv.url, {"prompt": "a b", "max_tokens": 3, "ignore_eos": True, "logprobs": 1, "echo": True})
        c = out["choices"][0]
        assert c["text"].startswith("a b") and len(c["text"].split()) == 5
        assert c["logprobs"]["token_logprobs"][0] is None and c["logprobs"]["tokens"][:2] == ["a", " b"]
        assert out["usage"]["completion_tokens"] == 3
        chunks = await sse(s, srv.url, {"prompt": "a b", "max_tokens": 4, "ignore_eos": True, "logprobs": 0, "stream": True})
        toks = [t for ch in chunks for t in ch["choices"][0]["logprobs"]["tokens"]]
        assert "".join(toks) == "".join(ch["choices"][0]["text"] for ch in chunks) and len(toks) == 4


async def test_chat_logprobs_have_vllms_shape():
    async with server() as srv, aiohttp.ClientSession() as s:
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "ignore_eos": True, "logprobs": True, "top_logprobs": 3}
        _, out = await post(s, srv.url, body, "/v1/chat/completions")
        content = out["choices"][0]["logprobs"]["content"]
        assert len(content) == 4 and "".join(e["token"] for e in content) == out["choices"][0]["message"]["content"]
        for e in content:
            assert set(e) == {"token", "logprob", "bytes", "top_logprobs"} and e["bytes"] == list(e["token"].encode())
            assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["token"] == e["token"]
            assert all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"])
        _, plain = await post(s, srv.url, {**body, "logprobs": False, "top_logprobs": None}, "/v1/chat/completions")
        assert plain["choices"][0]["logprobs"] is None


async def test_seed_repeats_the_answer_and_temperature_zero_is_greedy():
    async with server() as srv, aiohttp.ClientSession() as s:
        base = {"prompt": "once upon a time", "max_tokens": 50}
        a = [(await post(s, srv.url, {**base, "seed": 42}))[1]["choices"][0]["text"] for _ in range(2)]
        b = (await post(s, srv.url, {**base, "seed": 43}))[1]["choices"][0]["text"]
        assert a[0] == a[1] and a[0] != b
        g = [(await post(s, srv.url, {**base, "temperature": 0, "max_tokens": 8, "ignore_eos": True}))[1]["choices"][0]["text"] for _ in range(2)]
        assert g[0] == g[1]
        r = [(await post(s, srv.url, {**base, "max_tokens": 8, "ignore_eos": True}))[1]["choices"][0]["text"] for _ in range(2)]
        assert r[0] != r[1]  # unseeded sampling differs per request
        # greedy choices are one answer n times (length too); sampled ones differ
        _, greedy = await post(s, srv.url, {**base, "max_tokens": 2000, "temperature": 0, "n": 3})
        assert len({c["text"] for c in greedy["choices"]}) == 1
        _, sampled = await post(s, srv.url, {**base, "seed": 7, "n": 3})
        assert len({c["text"] for c in sampled["choices"]}) == 3


async def test_continuous_usage_stats_put_usage_on_every_chunk():
    async with server() as srv, aiohttp.ClientSession() as s:
        chunks = await sse(s, srv.url, {"prompt": "a b c", "max_tokens": 6, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    counted = [ch["usage"]["completion_tokens"] for ch in chunks if ch["choices"]]
    assert counted == sorted(counted) and counted[-1] == 6 and all(ch["usage"]["prompt_tokens"] == 3 for ch in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


async def test_accepted_sampling_fields_and_tool_choice_none():
    async with server() as srv, aiohttp.ClientSession() as s:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "temperature": 1.3,
            "top_p": 0.9,
            "top_k": 40,
            "presence_penalty": 0.5,
            "response_format": {"type": "text"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "none",
            "seed": -5,
        }
        status, out = await post(s, srv.url, body, "/v1/chat/completions")
        assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"


async def test_models_version_tokenize_detokenize_and_unknown_routes():
    async with server() as srv, aiohttp.ClientSession() as s:
        async with s.get(srv.url + f"/v1/models/{MODEL}") as r:
            card = await r.json()
            assert r.status == 200 and card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] > 0
        async with s.get(srv.url + "/v1/models/nope") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        async with s.get(srv.url + "/version") as r:
            assert r.status == 200 and isinstance((await r.json())["version"], str)
        status, tok = await post(s, srv.url, {"prompt": "the of zebra"}, "/tokenize")
        assert status == 200 and tok["count"] == 3 and len(tok["tokens"]) == 3 and tok["max_model_len"] == card["max_model_len"]
        status, again = await post(s, srv.url, {"model": MODEL, "messages": [{"role": "user", "content": "the of zebra"}]}, "/tokenize")
        assert again["tokens"] == tok["tokens"]
        status, de = await post(s, srv.url, {"tokens": tok["tokens"][:2]}, "/detokenize")
        assert status == 200 and de["prompt"] == "the of"
        status, bad = await post(s, srv.url, {"tokens": [-1]}, "/detokenize")
        assert status == 400 and bad["error"]["param"] == "tokens"
        status, bad = await post(s, srv.url, b"[", "/tokenize")
        assert status == 400
        # a prompt of token ids: the ids count, and tokenize gives them back
        status, ids = await post(s, srv.url, {"prompt": [5, 6, 7]}, "/tokenize")
        assert ids["tokens"] == [5, 6, 7]
        async with s.get(srv.url + "/v1/nothing-here") as r:
            assert r.status == 404 and await r.json() == {"detail": "Not Found"}
        async with s.get(srv.url + "/v1/completions") as r:
            assert r.status == 405 and await r.json() == {"detail": "Method Not Allowed"}


def test_the_official_openai_client_talks_to_it():
    openai = pytest.importorskip("openai")
    from burstbench.backends.reference.server import start_in_thread

    with start_in_thread(model=MODEL, hardware=HW, time_scale=200, api_key="k") as h:
        client = openai.OpenAI(base_url=h.url + "/v1", api_key="k")
        assert [m.id for m in client.models.list()] == [MODEL]
        out = client.completions.create(model=MODEL, prompt="a b", max_tokens=4, n=2, logprobs=1, extra_body={"ignore_eos": True})
        assert len(out.choices) == 2 and out.usage.completion_tokens == 8
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True, extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).split().__len__() == 3
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="a", max_tokens=2, temperature=-1)


async def test_chat_echo_prepends_the_last_assistant_message():
    async with server() as srv, aiohttp.ClientSession() as s:
        msgs = [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "Sure, it is"}]
        body = {"messages": msgs, "max_tokens": 3, "ignore_eos": True, "echo": True}
        _, out = await post(s, srv.url, body, "/v1/chat/completions")
        content = out["choices"][0]["message"]["content"]
        assert content.startswith("Sure, it is") and len(content.split()) == 6
        chunks = await sse(s, srv.url, {**body, "stream": True}, "/v1/chat/completions")
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert streamed.startswith("Sure, it is") and len(streamed.split()) == 6
        # echo repeats only an assistant turn, as vLLM's
        _, plain = await post(s, srv.url, {**body, "messages": msgs[:1]}, "/v1/chat/completions")
        assert len(plain["choices"][0]["message"]["content"].split()) == 3


def test_default_connection_cap_stays_within_the_open_file_limit():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cfg = ServeConfig(max_concurrent=100_000)
    assert cfg.max_connections is not None and (soft <= 0 or cfg.max_connections <= soft - 64)
    assert ServeConfig(max_concurrent=10).max_connections == min(1034, soft - 64 if soft > 0 else 1034)
