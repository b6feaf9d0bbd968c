"""A minimal headless-Chromium driver over the DevTools protocol (aiohttp websockets).

Why not selenium/playwright: Debian's ``chromium`` plus ~100 lines of CDP is all the
report tests need (open a file, collect console errors and network requests,
evaluate JS, take a screenshot), with no driver binaries to install.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0",
)


class Browser:
    """``async with Browser() as b: page = await b.open(path)``; one page per browser."""

    def __init__(self, *, width: int = 1400, height: int = 1000) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium not found on PATH")
        self.width, self.height = width, height
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._load = asyncio.Event()

    async def __aenter__(self) -> Browser:
        self._dir = tempfile.TemporaryDirectory(prefix="bb-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._dir.name}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers share the group, so exit can stop them all
        )
        port_file = Path(self._dir.name) / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or loop.time() > deadline:
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        self.http = aiohttp.ClientSession()
        for _ in range(100):
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("chromium has no page target")
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page", "Network"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride",
                        width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Chromium's helper processes outlive the browser for a moment and keep writing into
        # the profile, which made removing it fail now and then ("Directory not empty"):
        # stop the whole group and wait, bounded, until it is gone before removing the dir.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.02)
        self._dir.cleanup()

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut and not fut.done():
                    fut.set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self._load.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        data = await asyncio.wait_for(fut, 60)
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def open(self, path: Path, *, timeout: float = 60) -> None:
        self._load.clear()
        await self.send("Page.navigate", url=Path(path).resolve().as_uri())
        await asyncio.wait_for(self._load.wait(), timeout)

    async def eval(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 60) -> Any:
        """Evaluate until truthy (the page renders asynchronously); the last value on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.eval(expression)
            if value or loop.time() > deadline:
                return value
            await asyncio.sleep(0.1)

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    async def screenshot(self, path: Path) -> Path:
        height = int(await self.eval("document.documentElement.scrollHeight") or self.height)
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width,
                        height=min(height, 16000), deviceScaleFactor=1, mobile=False)
        res = await self.send("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(res["data"]))
        return Path(path)

    async def screenshot_parts(self, prefix: Path, *, part_height: int = 1200) -> list[Path]:
        """The full page as several PNGs of ``part_height`` pixels (readable when viewed)."""
        height = int(await self.eval("document.documentElement.scrollHeight") or self.height)
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width,
                        height=min(height, 16000), deviceScaleFactor=1, mobile=False)
        paths = []
        for i, y in enumerate(range(0, min(height, 16000), part_height)):
            clip = {"x": 0, "y": y, "width": self.width, "height": min(part_height, height - y), "scale": 1}
            res = await self.send("Page.captureScreenshot", format="png", clip=clip)
            p = Path(f"{prefix}-{i:02d}.png")
            p.write_bytes(base64.b64decode(res["data"]))
            paths.append(p)
        return paths


FIGURE_COUNT_JS = "document.querySelectorAll('.fig').length"
RENDERED_JS = (
    "Array.from(document.querySelectorAll('.fig')).filter(e => e.classList.contains('js-plotly-plot')"
    " && e.querySelector('svg.main-svg') && e.querySelectorAll('g.trace, image').length > 0).length"
)
