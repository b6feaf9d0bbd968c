"""A small HTTP/1.1 client whose answers are read in the socket's callback, not in a task.

Why: with hundreds of streams in one event loop, a send due now waits for the loop
iteration that is running to end, and that iteration reads every socket that is ready.
Through aiohttp each chunk costs a protocol callback, a parser feed, a future and a
task step of the request's reader (py-spy, B at 77 req/s with ~200 streams: send lag
p99 20 ms, of which 14 ms from the deadline to the task's wake-up and 9 ms from there
to the write). Here a ``Connection`` (an ``asyncio.Protocol``) unframes the body in
``data_received`` and hands it, with its arrival time, straight to the request's
``Exchange``, which parses the SSE there: no task runs per chunk, so an iteration is
only the reads' own work, and a send writes its prepared bytes in the step that wakes
it (a connection taken from the pool is used at once, with no await). Side by side
with aiohttp (``benchmarks/bench_peers.py``, 3 interleaved repeats, one truth server):
send lag p99 at 77 req/s 14.1 -> 5.4 ms, at 154 req/s 76 -> 26 ms; a burst's output
tokens per client CPU-second 133k -> 184k (``vllm bench serve``: 88k). What remains of
the lag is CPU: the worker waited 1.4-1.7 s on the run queue in a 12.9 s run at 154
req/s (``/proc/thread-self/schedstat``), sharing 2 cores with the server.

What it speaks: requests with a ``Content-Length`` body; answers framed by
``Content-Length``, ``chunked`` or the connection's close; keep-alive unless the
server says ``Connection: close`` or answers HTTP/1.0; ``gzip``/``deflate`` bodies
although ``identity`` is asked for; TLS through asyncio. No proxies, no redirects,
no pipelining. Every size that comes from the server is bounded (``MAX_HEAD_BYTES``,
``MAX_LINE_BYTES``), and the consumer bounds the body.

Failures are ``WireError`` with a ``kind`` the backend maps to its error classes:
``connect``, ``connect_timeout``, ``disconnect`` (closed or reset before the answer
ended), ``protocol`` (not HTTP/1.x).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Callable

from burstbench.backends.pool import Reserve

__all__ = ["Connection", "Exchange", "Pool", "WireError"]

MAX_HEAD_BYTES = 1 << 20  # status line and headers (aiohttp's limits here were 1 MiB too)
MAX_LINE_BYTES = 8192  # a chunk-size line or a trailer line
_HEAD, _LENGTH, _SIZE, _DATA, _DATA_END, _TRAILER, _CLOSE, _IDLE = range(8)


class WireError(Exception):
    """A request that failed on the wire; ``kind`` names how."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Exchange:
    """One request's side of a connection. Subclasses read the answer.

    The connection calls ``head`` once (a 1xx interim answer is skipped), ``data`` for
    each read's body bytes with the run-clock time it arrived, then ``end`` or ``lost``.
    ``data`` returns True when the exchange is finished early and wants no more: the
    rest of the answer is then read and dropped for up to a second so the connection
    can be reused, or, when ``reuse`` is False, the connection is closed at once."""

    clock: Callable[[], float]
    reuse = True

    def head(self, status: int, reason: str, headers: dict[str, str]) -> None:
        """The status line and headers (names lower-cased, repeats joined with ", ")."""

    def data(self, body: bytes, t: float) -> bool:
        """Body bytes that arrived at ``t``; True when no more are wanted."""
        return False

    def end(self, t: float) -> None:
        """The answer is complete."""

    def lost(self, err: WireError) -> None:
        """The connection failed before the answer was complete."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses the answer to the request written on it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.state = _IDLE
        self.buf = b""
        self.left = 0  # bytes left of a Content-Length body or of a chunk
        self.keep = False  # may be reused when the answer ends
        self.idle_since = 0.0
        self.last_rx = 0.0  # the last read's time on its exchange's clock, for the stall watch
        self.closed = False
        self.inflate: zlib._Decompress | None = None
        self.skip = False  # draining an answer whose reader stopped wanting it

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if self.state == _CLOSE and not self.skip:  # a body that ends with the connection
            self.state = _IDLE
            self._deliver(ex, b"", ex.clock(), True)
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        ex.lost(WireError("disconnect", f"ServerDisconnectedError: {why} before the answer ended"))

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        t = self.last_rx = ex.clock()
        try:
            self._parse(ex, data, t)
        except WireError as e:
            self.exchange = None
            self.close()
            ex.lost(e)

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the end means

    # -- requests ---------------------------------------------------------------------
    def send(self, data: bytes, exchange: Exchange) -> None:
        """Write a whole request; its answer goes to ``exchange``."""
        self.exchange = exchange
        self.state = _HEAD
        self.buf = b""
        self.skip = False
        self.inflate = None
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """The request's reader gave up (timeout, cancel): the connection is not reusable."""
        self.exchange = None
        self.close()

    # -- the parser -------------------------------------------------------------------
    def _parse(self, ex: Exchange, data: bytes, t: float) -> None:
        if self.state == _HEAD:
            buf = self.buf + data if self.buf else data
            while True:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise WireError("protocol", f"response head longer than {MAX_HEAD_BYTES:,} bytes")
                    self.buf = buf
                    return
                if i > MAX_HEAD_BYTES:
                    raise WireError("protocol", f"response head longer than {MAX_HEAD_BYTES:,} bytes")
                interim = self._head(ex, buf[:i])
                buf = buf[i + 4 :]
                if not interim:
                    break
            self.buf = b""
            data = buf
            if self.state == _IDLE:  # no body (204, 304, Content-Length: 0)
                self._deliver(ex, b"", t, True)
                return
        state = self.state
        if state == _LENGTH:
            if len(data) >= self.left:
                body, self.left = data[: self.left], 0
                self.state = _IDLE
                self._deliver(ex, body, t, True)
            else:
                self.left -= len(data)
                self._deliver(ex, data, t, False)
        elif state == _CLOSE:
            self._deliver(ex, data, t, False)
        elif state != _IDLE:
            body, ended = self._chunks(data)
            if ended:
                self.state = _IDLE
            if body or ended:
                self._deliver(ex, body, t, ended)

    def _head(self, ex: Exchange, head: bytes) -> bool:
        """Parse a response head and set the body's framing; True for a 1xx interim answer."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise WireError("protocol", f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return True
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise WireError("protocol", f"malformed header line: {line[:100]!r}")
            k, v = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self.keep = parts[0] == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.inflate = zlib.decompressobj(47)  # zlib or gzip wrapper, told apart by the header
        elif encoding not in ("identity", ""):
            raise WireError("protocol", f"the answer is encoded with {encoding!r} though identity was asked for")
        length = headers.get("content-length")
        if status in (204, 304):
            self.state = _IDLE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.state, self.left = _SIZE, 0
        elif length is not None:
            if not length.strip().isdigit():
                raise WireError("protocol", f"bad Content-Length: {length[:40]!r}")
            self.left = int(length)
            self.state = _LENGTH if self.left else _IDLE
        else:
            self.state = _CLOSE
            self.keep = False
        ex.head(status, parts[2].decode("latin-1") if len(parts) > 2 else "", headers)
        return False

    def _chunks(self, data: bytes) -> tuple[bytes, bool]:
        """Unframe a chunked body: (the data bytes in ``data``, whether the body ended)."""
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        parts: list[bytes] = []
        state = self.state
        while pos < n:
            if state == _DATA:
                piece = buf[pos : pos + self.left]
                parts.append(piece)
                pos += len(piece)
                self.left -= len(piece)
                if not self.left:
                    state = _DATA_END
            elif state == _DATA_END:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise WireError("protocol", "chunk not followed by CRLF")
                pos += 2
                state = _SIZE
            else:  # _SIZE or _TRAILER: a line
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    if n - pos > MAX_LINE_BYTES:
                        raise WireError("protocol", f"chunk-size or trailer line longer than {MAX_LINE_BYTES} bytes")
                    break
                line = buf[pos:j]
                pos = j + 2
                if state == _TRAILER:
                    if not line:  # the blank line after the trailers: the body ended
                        self.buf = buf[pos:]
                        self.state = _IDLE
                        return b"".join(parts), True
                    continue
                try:
                    size = int(line, 16)  # (surrounding spaces are allowed; extensions are not)
                except ValueError:
                    size = _chunk_size(line)
                if size < 0:
                    raise WireError("protocol", f"bad chunk size {line[:40]!r}")
                if not size:
                    state = _TRAILER
                    continue
                end = pos + size
                if buf[end : end + 2] == b"\r\n":  # the whole chunk is here: one step
                    parts.append(buf[pos:end])
                    pos = end + 2
                    continue
                self.left = size
                state = _DATA
        self.buf = buf[pos:]
        self.state = state
        return b"".join(parts), False

    def _deliver(self, ex: Exchange, body: bytes, t: float, ended: bool) -> None:
        if self.inflate is not None and body:
            try:
                body = self.inflate.decompress(body, self.pool.max_inflate)
            except zlib.error as e:
                raise WireError("protocol", f"the compressed answer cannot be decoded ({e})") from None
            if self.inflate.unconsumed_tail:
                raise WireError("protocol", f"one read inflates past {self.pool.max_inflate:,} bytes")
        stop = not self.skip and (body or not ended) and ex.data(body, t)
        if stop and not ex.reuse:
            self.abandon()
            return
        if not ended:
            if stop:  # the reader is finished: read on to reuse the connection
                self.skip = True
                self.pool.drain(self)
            return
        self.exchange = None
        if self.keep and not self.closed:
            self.pool.give_back(self)
        else:
            self.close()
        if not (self.skip or stop):
            ex.end(t)
        self.skip = False


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line that carries extensions (``1a;name=value``)."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise WireError("protocol", f"bad chunk size {line[:40]!r}") from None


class _Drained(Exchange):
    """The rest of an answer its reader no longer wants (what follows [DONE])."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock


class Pool:
    """Keep-alive connections to one origin, and a reserve of idle ones kept ahead of sends."""

    def __init__(self, host: str, port: int, *, tls: bool, connect_timeout_s: float | None,
                 keepalive_s: float = 4.0, max_inflate: int = 8 << 20) -> None:
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s  # less than uvicorn's 5 s: rarely write into a closing connection
        self.max_inflate = max_inflate
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.opened = 0  # connections made (for tests and the curious)
        self.reserve = _Reserve(self)  # idle connections kept ahead of the sends

    def take_idle(self) -> Connection | None:
        idle = self.idle
        too_old = time.monotonic() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < too_old:
                conn.close()
                continue
            self.busy.add(conn)
            return conn
        return None

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except TimeoutError:
            raise WireError("connect_timeout", f"no connection within {self.connect_timeout_s} s") from None
        except OSError as e:
            raise WireError("connect", f"Cannot connect to host {self.host}:{self.port} [{e.strerror or e}]") from None
        self.busy.add(conn)
        return conn

    def give_back(self, conn: Connection) -> None:
        self.busy.discard(conn)
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def drain(self, conn: Connection, limit_s: float = 1.0) -> None:
        """Read the rest of an answer for up to ``limit_s``, then reuse the connection or close it."""
        conn.exchange = _Drained(time.monotonic)
        asyncio.get_running_loop().call_later(limit_s, _close_if_still, conn, conn.exchange)

    async def warm(self, n: int) -> int:
        """Open ``n`` connections now and keep that many idle from now on; returns how many opened."""
        opened = sum(await asyncio.gather(*(self.reserve.open_one() for _ in range(n))))
        self.reserve.target = n
        return opened

    def top_up(self) -> None:
        """Start opening connections until ``warm``'s n are idle again; returns at once."""
        self.reserve.top_up()

    async def close(self) -> None:
        await self.reserve.close()
        for conn in [*self.idle, *self.busy]:
            conn.close()
        self.idle.clear()
        self.busy.clear()


class _Reserve(Reserve):
    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool

    def idle(self) -> int:
        return len(self.pool.idle)

    async def open_one(self) -> bool:
        try:
            conn = await self.pool.connect()
        except WireError:
            return False
        self.pool.give_back(conn)
        return True


def _close_if_still(conn: Connection, exchange: Exchange) -> None:
    if conn.exchange is exchange:
        conn.abandon()
