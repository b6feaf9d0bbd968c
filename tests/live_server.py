"""A real StreamServer on 127.0.0.1 running in a background thread's event loop.

``run_scenario`` is synchronous and blocks its caller, so tests that drive it
need the server on another loop. ``LiveServer`` owns that loop; ``stop()`` and
``start()`` let a test restart the server on the same port mid-run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from burstbench.testing.stream_server import StreamServer


class LiveServer:
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-stream-server", daemon=True)
        self.thread.start()
        self.server: StreamServer | None = None
        self.port = 0
        self.history: list[Any] = []  # records of servers stopped before the current one

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        async def go() -> StreamServer:
            srv = StreamServer(port=self.port, **self.settings)
            await srv.start()
            return srv

        self.server = self._call(go())
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.history.extend(self.server.records)
            self._call(self.server.stop())
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list[Any]:
        return self.history + (list(self.server.records) if self.server is not None else [])

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        self.loop.close()


@contextmanager
def live_server(**settings: Any) -> Iterator[LiveServer]:
    srv = LiveServer(**settings)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()
