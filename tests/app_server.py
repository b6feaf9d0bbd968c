"""Start an aiohttp ``web.Application`` on a free 127.0.0.1 port: tests that need a server
with one odd behaviour write the handler and call this instead of the five setup lines."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def start_app(app: web.Application, **runner_kw: Any) -> tuple[web.AppRunner, str]:
    """(runner, base URL); the caller ends it with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
