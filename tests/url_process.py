"""A server in its own process that prints one JSON line with its URL when listening.

``burstbench serve --port 0`` and ``python -m burstbench.testing.stream_server --port 0``
both do; tests start them through this one helper, which waits a bounded time for the
line and always stops the process (SIGINT, then kill).
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def url_process(*args: str, env: Mapping[str, str] | None = None, capture_stderr: bool = False,
                startup_s: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python -m ARGS...``; yield (url, process) once it printed its URL."""
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if capture_stderr else subprocess.DEVNULL,
                            text=True, env=dict(env) if env is not None else None)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=startup_s)
        line = proc.stdout.readline() if ready else ""
        if not line:
            err = proc.stderr.read() if capture_stderr and proc.poll() is not None else ""
            raise AssertionError(f"{' '.join(args[:2])} did not start within {startup_s} s {err}".strip())
        yield json.loads(line)["url"], proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
