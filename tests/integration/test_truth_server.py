"""benchmarks/truth_server.mjs, the ground truth of bench_peers.py (issue 15).

The peer benchmark trusts this server's log: when it read each request and wrote each
chunk, on the clock Python's ``perf_counter`` reads. These tests run the real script
under Node.js on 127.0.0.1, read real streams, and check the log against what the client
saw, so a broken server script fails CI instead of skewing a table.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "truth_server.mjs"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js (`node`) to run benchmarks/truth_server.mjs")

TTFT_MS, ITL_MS = 200.0, 40.0  # long enough that a missed deadline shows on a busy host


class Truth:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([NODE, str(SCRIPT), "--ttft", str(TTFT_MS), "--itl", str(ITL_MS),
                                      "--log", str(log)], stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        assert hello["pid"] == self.proc.pid
        self.port = int(hello["url"].rsplit(":", 1)[1])

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def stop(self) -> list[dict]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def truth(tmp_path: Path) -> Iterator[Truth]:
    t = Truth(tmp_path / "truth.jsonl")
    yield t
    if t.proc.poll() is None:
        t.proc.kill()
        t.proc.wait(30)


def stream(t: Truth, path: str, body: dict, headers: dict | None = None) -> tuple[list[dict | str], list[int]]:
    """POST and read the SSE stream event by event: (events, perf_counter_ns when each arrived)."""
    c = t.conn()
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("content-type") == "text/event-stream"
    events, seen = [], []
    while line := r.readline():  # de-chunked, one SSE line at a time
        line = line.strip()
        if line.startswith(b"data: "):
            seen.append(time.perf_counter_ns())
            data = line[6:].decode()
            events.append(data if data == "[DONE]" else json.loads(data))
    assert r.isclosed() or r.read() == b""
    c.close()
    return events, seen


def test_stream_shape_usage_and_write_log(truth: Truth) -> None:
    body = {"model": "truth", "prompt": "hello there", "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    events, seen = stream(truth, "/v1/completions", body, {"x-request-id": "vb-7"})
    assert events[-1] == "[DONE]"
    tokens, usage = events[:5], events[5]
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 4 + ["length"]
    assert all(e["object"] == "text_completion" and e["choices"][0]["text"] for e in tokens)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["prompt_tokens"] == 2 and len(events) == 7

    chat, _ = stream(truth, "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": "tag:b42 hi"}], "max_tokens": 3, "stream": True})
    assert [e["choices"][0]["delta"].get("role") for e in chat[:3]] == ["assistant", None, None]
    assert all(e["object"] == "chat.completion.chunk" for e in chat[:3])
    assert chat[3] == "[DONE]" and len(chat) == 4  # no usage chunk unless asked

    log = truth.stop()
    assert [(r["tag"], r["path"], r["tokens"], r["status"]) for r in log] == [
        ("vb-7", "/v1/completions", 5, "ok"), ("b42", "/v1/chat/completions", 3, "ok")]
    first = log[0]
    writes = first["writes_ns"]
    assert len(writes) == 5
    # every write on its absolute deadline or after it: read + TTFT + k * chunk gap
    for k, w in enumerate(writes):
        assert w >= first["recv_ns"] + (TTFT_MS + k * ITL_MS) * 1e6
    # one clock: each chunk was written before this process saw it, and seen not long after
    for w, s in zip(writes, seen[:5], strict=True):
        assert w < s < w + 5e9


def test_clock_is_this_process_monotonic_clock(truth: Truth) -> None:
    """/clock answers a reading taken between our two reads around the call, which holds
    only if the server's clock is the one perf_counter reads (CLOCK_MONOTONIC)."""
    c = truth.conn()
    for _ in range(5):
        a = time.perf_counter_ns()
        c.request("GET", "/clock")
        mono = int(json.loads(c.getresponse().read())["mono_ns"])
        b = time.perf_counter_ns()
        assert a <= mono <= b
    c.close()


def test_answers_what_the_clients_ask_and_refuses_the_rest(truth: Truth) -> None:
    c = truth.conn()
    c.request("GET", "/v1/models")
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read())["data"][0]["id"] == "truth"
    c.request("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 3}))
    r = c.getresponse()
    full = json.loads(r.read())
    assert r.status == 200 and full["choices"][0]["text"] == " the" * 3 and full["usage"]["completion_tokens"] == 3
    for body in ({"prompt": "x", "max_tokens": 0}, {"prompt": "x", "max_tokens": 10**9}, {"prompt": "x", "max_tokens": 1.5}):
        c.request("POST", "/v1/completions", json.dumps(body))
        r = c.getresponse()
        assert r.status == 400 and "max_tokens" in json.loads(r.read())["error"]["message"]
    c.request("POST", "/v1/completions", b"{not json")
    r = c.getresponse()
    assert r.status == 400 and r.read()
    c.request("GET", "/tokenize")
    r = c.getresponse()
    assert r.status == 404 and r.read()
    c.close()
    log = truth.stop()
    assert [(r["tokens"], len(r["writes_ns"]), r["tag"]) for r in log] == [(3, 1, "s1")]  # refused ones unlogged
