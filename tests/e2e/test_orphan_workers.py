"""kill -9 of 'burstbench run --workers 2': its worker processes and multiprocessing's
resource tracker end on their own (they used to live forever, blocked on the control queue).

Real processes throughout: the stream server in its own process, the CLI in another,
its spawned workers; the test only watches pids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from url_process import url_process

from burstbench.cli import main

DEADLINE_S = 20.0


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def _cmd(p: psutil.Process) -> str:
    """A process's command line, or "" for one that ended (or became a zombie) meanwhile: the
    coordinator's short-lived children (the model lookup, a fork that already exited) can."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _wait(cond, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)


def _records(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
        data = json.loads(r.read())
    return int(data["seq"])  # requests the server has received


@pytest.mark.parametrize("when", ["before the start", "while sending"])
def test_workers_exit_when_the_coordinator_is_killed(tmp_path: Path, capsys, when: str) -> None:
    trace = tmp_path / "t.parquet"
    assert main(["trace", "synth", "--preset", "burstgpt", "--requests", "2000", "--rate", "20", "--seed", "3",
                 "-o", str(trace)]) == 0
    capsys.readouterr()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with url_process("burstbench.testing.stream_server", "--port", "0", "--itl", "0.01", env=env) as (url, _srv):
        coord = subprocess.Popen(
            [sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace), "--workers", "2",
             "--duration", "90", "--quiet", "--no-scrape", "-o", str(tmp_path / "r.duckdb")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            me = psutil.Process(coord.pid)

            def workers() -> list[psutil.Process]:
                return [c for c in me.children(recursive=True) if "--multiprocessing-fork" in _cmd(c)]

            _wait(lambda: len(workers()) == 2, "two worker processes", 60)
            if when == "while sending":
                _wait(lambda: _records(url) >= 5, "requests reaching the server", 60)
            children = me.children(recursive=True)  # the workers and the resource tracker
            assert any("resource_tracker" in _cmd(c) for c in children)
            children = [c.pid for c in children]
            coord.send_signal(signal.SIGKILL)
            coord.wait(10)
            _wait(lambda: _gone(children), f"exit of the orphaned processes {children}", DEADLINE_S)
        finally:
            if coord.poll() is None:
                coord.kill()
                coord.wait(10)
