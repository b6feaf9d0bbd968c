"""A disk that fills during 'burstbench run': sending stops, committed rows stay, the run row
says 'aborted' with the reason, the command exits non-zero.

The disk is real: a 2 MiB tmpfs mounted for the test (skipped where mounting is not
permitted) and unmounted after; the endpoint is the stream server in its own process.
Before, DuckDB's "No space left on device" escaped as a traceback and the run stayed
'running'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from url_process import url_process

from burstbench.cli import main

REQUESTS = 20_000


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_stops_the_run_and_keeps_what_was_committed(tmp_path: Path, small_disk: Path,
                                                                 capsys) -> None:
    trace = tmp_path / "t.parquet"
    assert main(["trace", "synth", "--preset", "burstgpt", "--requests", str(REQUESTS), "--rate", "100",
                 "--seed", "5", "-o", str(trace)]) == 0
    capsys.readouterr()
    out = small_disk / "r.duckdb"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with url_process("burstbench.testing.stream_server", "--port", "0", "--no-record", env=env) as (url, _srv):
        proc = subprocess.run(
            [sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace), "--duration", "150",
             "--quiet", "--no-scrape", "-o", str(out)],
            env=env, capture_output=True, text=True, timeout=240)
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
            sent = json.loads(r.read())["seq"]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert sent < REQUESTS  # it stopped sending
    con = duckdb.connect(str(out), read_only=True)
    try:
        status, reason, notes = con.execute("SELECT status, end_reason, notes FROM runs").fetchone()
        committed = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        con.close()
    assert status == "aborted"
    assert "results store stopped taking rows" in reason and "No space left on device" in reason, reason
    assert 0 < committed < sent
    assert "not written" in notes
