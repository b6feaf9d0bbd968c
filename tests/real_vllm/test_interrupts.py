"""Ctrl-C and ``kill -9`` in the middle of a run against the real vLLM keep what was measured.

The server's side of the truth is vLLM's own ``vllm:request_success_total``: every
request vLLM finished for this run must be a row, ``ok`` unless the client gave
up on it in the same instant (after Ctrl-C, which commits at the end), or at least those it finished well before a ``kill -9``
(the recorder commits every half second; a killed process commits nothing more).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from burstbench.testing.vllm_cpu import scrape_metrics as scrape


def _trace(path: Path, n: int, gap_ms: int = 250) -> Path:
    # 100-token prompts and 24-token answers ``gap_ms`` apart, at most 4 in flight (the rest wait
    # in the client), so the server, however loaded the machine, keeps finishing requests instead
    # of slowing all of them down together; gap 0: a burst, so 4 are in flight until the end
    path.write_text("".join(json.dumps({"timestamp": gap_ms * i, "input_length": 100, "output_length": 24})
                            + "\n" for i in range(n)))
    return path


def _start(url: str, trace: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace),
                             "-o", str(out), "--quiet", "--max-concurrency", "4", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _successes(url: str, base: float) -> float:
    return scrape(url)["vllm:request_success_total"] - base


def _rows(out: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(out), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _wait_for(cond, what: str, proc: subprocess.Popen, limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert proc.poll() is None, f"run ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"not {what} within {limit_s} s"
        time.sleep(0.1)


def test_ctrl_c_mid_run_keeps_every_finished_request(vllm_server, tmp_path):
    out = tmp_path / "r.duckdb"
    base = scrape(vllm_server.url)["vllm:request_success_total"]
    # a burst behind a cap of 4: four requests are in flight whenever Ctrl-C comes, and with no
    # grace they are cancelled, whatever the machine's speed
    proc = _start(vllm_server.url, _trace(tmp_path / "t.jsonl", 300, gap_ms=0), out, "--grace", "0")
    try:
        _wait_for(lambda: _successes(vllm_server.url, base) >= 5, "5 requests finished", proc)
        finished_before = _successes(vllm_server.url, base)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    done_by_vllm = _successes(vllm_server.url, base)
    status, reason = _rows(out, "SELECT status, end_reason FROM runs")[0]
    assert status == "aborted" and "SIGINT" in reason
    by_status = dict(_rows(out, "SELECT status, count(*) FROM requests GROUP BY 1"))
    ok, cancelled = by_status.get("ok", 0), by_status.get("cancelled", 0)
    assert cancelled >= 1  # in flight at Ctrl-C, with no grace
    # every request vLLM finished is an ok row; one it finished as the client gave up may be cancelled
    assert finished_before <= ok <= done_by_vllm <= ok + cancelled
    assert set(by_status) <= {"ok", "cancelled"} and sum(by_status.values()) < 300
    (chunks, counted) = _rows(out, "SELECT (SELECT count(*) FROM chunks), sum(chunk_count) FROM requests")[0]
    assert chunks == counted > 0


def test_kill_9_mid_run_keeps_what_was_committed(vllm_server, tmp_path):
    out = tmp_path / "r.duckdb"
    base = scrape(vllm_server.url)["vllm:request_success_total"]
    proc = _start(vllm_server.url, _trace(tmp_path / "t.jsonl", 300), out)
    try:
        _wait_for(lambda: _successes(vllm_server.url, base) >= 8, "8 requests finished", proc)
        finished_then = _successes(vllm_server.url, base)
        t_mark = time.monotonic()
        # the recorder commits at least every 0.5 s: give it two rounds past the mark
        _wait_for(lambda: time.monotonic() - t_mark >= 1.5, "1.5 s passed", proc)
        proc.kill()  # SIGKILL: no handler, no final commit
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    ok = _rows(out, "SELECT count(*) FROM requests WHERE status = 'ok'")[0][0]
    assert ok >= finished_then >= 8
    assert _rows(out, "SELECT status FROM runs")[0][0] == "running"  # how it ended is unknown, honestly
