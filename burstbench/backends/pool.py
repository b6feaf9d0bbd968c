"""Idle connections kept ahead of the sends, opened off the send path (``Reserve``; the
wire transport's ``Pool`` and aiohttp's ``ConnectionReserve`` each say how to count and open one).

Why: an open-loop run holds about ``rate x answer time`` streams at once (B at 77 req/s
with 2.6 s answers: ~200), far more than ``warm`` can know to open before the start,
since answer times are the server's. Each send that finds the pool empty pays a TCP
connect after its deadline, several loop turns behind every open stream's reads:
measured on the truth server at 77 req/s, 131 of 770 requests opened their own
connection, and those had a send lag p50 / p99 of 2.8 / 77 ms against 0.5 / 4.9 ms
on a reused one; every lag over 30 ms was one of them. ``ConnectionReserve`` tops the
pool up to a target of idle connections whenever a send is being prepared (20 ms
before its deadline), one connection for each one the sends took, so the connects
happen between deadlines instead of at them. Side by side on the same truth server
(``benchmarks/bench_peers.py``'s B, runs alternating with and without the top-up): send
lag p99 at 77 req/s, median of 8 pairs, 17.1 -> 11.9 ms (lower in 5 of 8); at 154 req/s
(~400 streams, beyond warm's 256) 157 -> 92 ms (lower in 3 of 3).

It reaches into aiohttp's connector (``_conns``, ``_create_connection``, ``_release``):
aiohttp has no public way to open a pooled connection without a request. Where those
are missing (another aiohttp), ``ConnectionReserve.usable`` is False and nothing is
done: sends open their own connections as before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["ConnectionReserve", "Reserve"]

RETRY_AFTER_S = 1.0  # after a failed connect, no new attempt for this long (a down server is not hammered)


class Reserve:
    """Keeps ``target`` idle connections ahead of the sends, opened in the background.

    The bookkeeping both transports share; a subclass says how many are idle and how
    to open one (``open_one``: True when it opened and pooled a connection)."""

    def __init__(self) -> None:
        self.target = 0
        self.opened = 0  # connections this reserve opened (for tests and the curious)
        self.usable = True
        self._opening = 0
        self._quiet_until = 0.0
        self._tasks: set[asyncio.Task] = set()

    def idle(self) -> int:
        raise NotImplementedError

    async def open_one(self) -> bool:
        raise NotImplementedError

    def top_up(self) -> None:
        """Start opening connections until ``target`` are idle or being opened; returns at once."""
        if not self.usable or self.target <= 0:
            return
        short = self.target - self.idle() - self._opening
        if short <= 0 or time.monotonic() < self._quiet_until:
            return
        self._opening += short
        task = asyncio.get_running_loop().create_task(self._open(short))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, n: int) -> None:
        try:
            for _ in range(n):  # one at a time: each connect is a few loop turns, spread between sends
                try:
                    ok = await self.open_one()
                finally:
                    self._opening -= 1
                    n -= 1
                if not ok:
                    self._quiet_until = time.monotonic() + RETRY_AFTER_S
                    return
                self.opened += 1
        finally:
            self._opening -= n  # the ones not attempted after a failure or a cancel

    async def close(self) -> None:
        """Stop opening (the pool closes the connections already in it)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ConnectionReserve(Reserve):
    """Keeps ``target`` idle connections to one origin in an aiohttp session's pool."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout) -> None:
        super().__init__()
        self.connector: Any = session.connector
        self.timeout = timeout
        self._req: Any = None
        self._key: Any = None
        c = self.connector
        self.usable = all(hasattr(c, a) for a in ("_conns", "_create_connection", "_release"))
        if self.usable:
            try:
                self._req = aiohttp.ClientRequest("GET", URL(url), loop=asyncio.get_running_loop())
                self._key = self._req.connection_key
            except (TypeError, ValueError, AttributeError):  # another aiohttp's ClientRequest
                self.usable = False

    def idle(self) -> int:
        """Idle pooled connections to the origin (aiohttp drops the key when none are left)."""
        conns = self.connector._conns.get(self._key)
        return len(conns) if conns else 0

    async def open_one(self) -> bool:
        try:
            proto = await self.connector._create_connection(self._req, [], self.timeout)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        self.connector._release(self._key, proto)
        return True
