"""The wire client's HTTP/1.1 answer parser, fed the same bytes split at every point.

A socket read can end anywhere: inside the status line, a chunk-size line, a CRLF, or
a chunk's data. Each answer below is fed in two reads at every split point (and in
single bytes), and must give the same body, the same end and the same connection fate.
The connection's transport is a recorder of writes and closes; the parser is what runs.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib

import pytest

from burstbench.backends.wire import MAX_HEAD_BYTES, Connection, Exchange, Pool, WireError


class Recorder(Exchange):
    def __init__(self) -> None:
        self.clock = lambda: 1.0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.ended = False
        self.error: WireError | None = None

    def head(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    def data(self, body: bytes, t: float) -> bool:
        self.body += body
        return False

    def end(self, t: float) -> None:
        self.ended = True

    def lost(self, err: WireError) -> None:
        self.error = err


class Transport:
    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _feed(reads: list[bytes]) -> tuple[Recorder, Connection, Pool]:
    pool = Pool("127.0.0.1", 1, tls=False, connect_timeout_s=1.0)
    conn = Connection(pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    pool.busy.add(conn)
    ex = Recorder()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", ex)
    for r in reads:
        conn.data_received(r)
    return ex, conn, pool


def _splits(raw: bytes) -> list[list[bytes]]:
    return [[raw[:i], raw[i:]] for i in range(1, len(raw))] + [[bytes([b]) for b in raw]]


EVENT = b'data: {"a":1}\n\n'
CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n6;ext=1\r\nhello!\r\n0\r\nX-Trailer: t\r\n\r\n")
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello world"
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(("raw", "body"), [
    (CHUNKED, EVENT + b"hello!"),
    (LENGTH, b"hello world"),
    (INTERIM, b"ok"),
], ids=["chunked", "content-length", "100-continue"])
def test_every_split_gives_the_same_answer_and_the_connection_back(raw: bytes, body: bytes) -> None:
    for reads in _splits(raw):
        ex, conn, pool = _feed(reads)
        assert (ex.status, ex.body, ex.ended, ex.error) == (200, body, True, None), reads
        assert pool.idle == [conn] and not conn.closed and conn.exchange is None


def test_repeated_headers_are_joined() -> None:
    ex, _, _ = _feed([LENGTH])
    assert ex.headers["x-a"] == "1, 2" and ex.headers["content-length"] == "11"


def test_a_body_to_the_close_ends_with_the_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    for reads in _splits(raw):
        ex, conn, pool = _feed(reads)
        assert not ex.ended
        conn.connection_lost(None)
        assert (ex.body, ex.ended, ex.error) == (b"all of it", True, None)
        assert pool.idle == []  # never reused


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
])
def test_connection_close_and_http_1_0_are_not_reused(raw: bytes) -> None:
    ex, conn, pool = _feed([raw])
    assert ex.ended and ex.body == b"ok"
    assert pool.idle == [] and conn.closed


def test_a_cut_in_the_middle_of_a_chunk_is_a_disconnect() -> None:
    ex, conn, pool = _feed([CHUNKED[:-20]])
    conn.connection_lost(ConnectionResetError("reset by peer"))
    assert not ex.ended and ex.error is not None and ex.error.kind == "disconnect"
    assert "reset by peer" in str(ex.error)
    assert pool.idle == []


@pytest.mark.parametrize(("raw", "why"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX", "chunk not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", "encoded with 'br'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 9000, "longer than 8192 bytes"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * (MAX_HEAD_BYTES + 1), "response head longer than"),
], ids=["not-http", "header", "chunk-size", "chunk-crlf", "length", "brotli", "size-line", "head"])
def test_what_is_not_http_fails_the_request_and_closes_the_connection(raw: bytes, why: str) -> None:
    ex, conn, pool = _feed([raw])
    assert ex.error is not None and ex.error.kind == "protocol" and why in str(ex.error), ex.error
    assert conn.closed and pool.idle == [] and not ex.ended


@pytest.mark.parametrize("encode", [gzip.compress, zlib.compress], ids=["gzip", "deflate"])
def test_a_compressed_answer_is_inflated(encode) -> None:
    payload = b"data: {\"x\": 1}\n\n" * 50
    packed = encode(payload)
    name = b"gzip" if encode is gzip.compress else b"deflate"
    raw = (b"HTTP/1.1 200 OK\r\nContent-Encoding: " + name + b"\r\nContent-Length: %d\r\n\r\n" % len(packed)
           + packed)
    for reads in (_splits(raw)[::7]):
        ex, _, _ = _feed(reads)
        assert ex.body == payload and ex.ended


def test_a_compression_bomb_is_refused() -> None:
    packed = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KB
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
    ex, conn, _ = _feed([raw])
    assert ex.error is not None and "inflates past" in str(ex.error) and conn.closed


def test_bytes_on_an_idle_connection_close_it() -> None:
    _ex, conn, pool = _feed([LENGTH])
    assert pool.idle == [conn]
    conn.data_received(b"HTTP/1.1 200 OK\r\n")  # nobody asked
    assert conn.closed
    assert pool.take_idle() is None  # a closed connection is never handed out


async def test_idle_connections_past_the_keepalive_are_not_reused() -> None:
    _ex, conn, pool = _feed([LENGTH])
    pool.keepalive_s = 0.0
    conn.idle_since -= 1.0
    assert pool.take_idle() is None and conn.closed
    await asyncio.sleep(0)


async def test_https_through_the_wire(tmp_path, monkeypatch) -> None:
    """An https endpoint is read by the same parser over asyncio's TLS, the certificate checked
    against the trust store (here a self-signed one, named by SSL_CERT_FILE as a user would)."""
    import shutil
    import ssl
    import subprocess

    from aiohttp import web

    from burstbench.backends.base import Request
    from burstbench.backends.openai import OpenAIBackend

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))

    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("a", "b", "c"):
            await resp.write(b'data: {"choices": [{"text": "%s"}]}\n\n' % word.encode())
        await resp.write(b'data: {"choices": [{"text": "", "finish_reason": "length"}]}\n\ndata: [DONE]\n\n')
        return resp

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with OpenAIBackend(f"https://127.0.0.1:{port}", model="m", transport="wire",
                                 discover_model=False) as b:
            o = await b.send(Request(request_id=1, input_tokens=4, output_tokens=4), time.perf_counter)
        monkeypatch.delenv("SSL_CERT_FILE")  # an untrusted certificate is refused
        async with OpenAIBackend(f"https://127.0.0.1:{port}", model="m", transport="wire",
                                 discover_model=False) as b:
            bad = await b.send(Request(request_id=2, input_tokens=4, output_tokens=4), time.perf_counter)
    finally:
        await runner.cleanup()
    assert o.status == "ok" and len(o.chunk_t) == 4 and o.finish_reason == "length", o.error_message
    assert bad.status == "error" and bad.error_class == "connect" and "CERTIFICATE_VERIFY_FAILED" in bad.error_message
