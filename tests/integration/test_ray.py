"""Distributed load on a real local Ray cluster (two nodes standing for two hosts).

The cluster is started once per module on 127.0.0.1 with usage reporting off and
its files under a temporary directory; the endpoint is a real StreamServer. A
Ray run must record exactly what a single-host run of the same schedule records,
and losing an actor must not stop the run or lose track of any request.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

import duckdb
import polars as pl
import pytest
from live_server import live_server

from burstbench.loadgen.runner import run_scenario
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace, conform

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    # a short private directory: Ray's unix sockets live under it (path length limit)
    tmp = tempfile.mkdtemp(prefix="bbray-")
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_TMPDIR")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_TMPDIR"] = tmp
    os.makedirs(os.path.join(tmp, "ray"))
    # Ray swaps a loopback bootstrap address for the host's "reachable" IP, which on a
    # sandboxed host may not be listening; keep every connection on 127.0.0.1.
    import ray._private.services as services

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "temp_dir": os.path.join(tmp, "ray"), "node_ip_address": "127.0.0.1"})
    c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    c.bb_tmp = tmp  # Ray's logs and session files: the credential test greps them
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        services.resolve_ip_for_localhost = resolve
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _trace(n: int, gap: float, out_tokens: int, sessions: int = 0) -> Trace:
    """``n`` requests ``gap`` apart; the first ``sessions`` x 3 rows form 3-turn conversations."""
    sid = [f"s{i % sessions}" if sessions and i < sessions * 3 else None for i in range(n)]
    turn = [i // sessions if sessions and i < sessions * 3 else None for i in range(n)]
    df = pl.DataFrame({"arrival_s": [i * gap for i in range(n)], "input_tokens": [16 + i % 7 for i in range(n)],
                       "output_tokens": [out_tokens] * n, "session_id": sid, "turn": turn,
                       "tenant": [f"t{i % 3}" for i in range(n)]})
    return Trace(conform(df), {"source": "test"})


def _rows(path, run_id) -> pl.DataFrame:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(
            "SELECT request_id, session_id, turn, tenant, scheduled_s, input_tokens, output_tokens_target,"
            " output_tokens_server, chunk_count, status, error_class, worker_id FROM requests WHERE run_id = ?"
            " ORDER BY request_id", [run_id])
        names = [d[0] for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row")
    finally:
        con.close()


def _run(path, run_id) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        status, reason, notes, duration = con.execute(
            "SELECT status, end_reason, notes, duration_s FROM runs WHERE run_id = ?", [run_id]).fetchone()
        tele = con.execute("SELECT name, worker_id, value FROM telemetry WHERE run_id = ? AND name IN"
                           " ('clock_offset_ms', 'clock_rtt_ms', 'start_skew_ms', 'schedule_lag_p99_ms',"
                           " 'process_rss_bytes')", [run_id]).fetchall()
        n_chunks = con.execute("SELECT count(*) FROM chunks WHERE run_id = ?", [run_id]).fetchone()[0]
    finally:
        con.close()
    return {"status": status, "reason": reason, "notes": json.loads(notes), "tele": tele, "chunks": n_chunks,
            "duration": duration}


def test_ray_run_records_what_a_single_host_run_records(cluster, tmp_path):
    from burstbench.loadgen.ray_driver import execute_ray

    trace = _trace(48, 0.02, 4, sessions=4)
    with live_server(ttft_s=0.01, itl_s=0.005) as srv:
        sc = Scenario(url=srv.url, mode="trace", scrape_metrics=False)
        single = run_scenario(trace, sc, tmp_path / "single.duckdb", progress=False)
        holder = []

        def check(transport):
            # the supervisor counts its workers by alive() before the actors exist
            assert transport.alive() == [True, True]
            holder.append(transport)

        res = execute_ray(trace, sc, tmp_path / "ray.duckdb", address=cluster.address, progress=False,
                          on_transport=check)
        server_saw = len(srv.records())
    a, b = _rows(tmp_path / "single.duckdb", single), _rows(tmp_path / "ray.duckdb", res.run_id)
    assert res.status == "done"
    # every scheduled request exactly once, no gaps, no duplicates
    assert b["request_id"].to_list() == list(range(48))
    assert server_saw == 96  # both runs, each request once
    same = ["request_id", "session_id", "turn", "tenant", "input_tokens", "output_tokens_target",
            "output_tokens_server", "chunk_count", "status"]
    assert a.select(same).equals(b.select(same))
    # open-loop send times are the schedule's; a session's later turn waits for the answer before it
    fixed = pl.col("session_id").is_null() | (pl.col("turn") == 0)
    assert a.filter(fixed)["scheduled_s"].to_list() == b.filter(fixed)["scheduled_s"].to_list()
    assert (b.filter(~fixed)["scheduled_s"] >= 0.02 * b.filter(~fixed)["request_id"]).all()
    assert set(b["status"]) == {"ok"}
    # two actors on the two nodes, sessions kept whole on one actor
    transport = holder[0]
    assert len(transport.slots) == 2
    assert len({s.clock.node for s in transport.slots}) == 2
    assert set(b["worker_id"]) == {0, 1}
    per_session = b.filter(pl.col("session_id").is_not_null()).group_by("session_id").agg(pl.col("worker_id").n_unique())
    assert per_session["worker_id"].max() == 1
    info = _run(tmp_path / "ray.duckdb", res.run_id)
    assert info["chunks"] == int(b["chunk_count"].sum()) == 48 * 4
    names = {(n, w) for n, w, _ in info["tele"]}
    assert {("clock_offset_ms", 0), ("clock_offset_ms", 1), ("clock_rtt_ms", 0), ("start_skew_ms", None)} <= names
    assert ("process_rss_bytes", 0) in names or ("process_rss_bytes", 1) in names
    # same host: offsets are tiny, and the note reports them with the skew
    offsets = [v for n, _, v in info["tele"] if n == "clock_offset_ms"]
    assert all(abs(v) < 50 for v in offsets)
    assert any(n.startswith("ray: 2 actor(s)") and "start skew" in n for n in info["notes"])
    # the report shows the clock/skew note and the per-worker lag series
    from burstbench.reports.build import build_report

    html = build_report(tmp_path / "ray.duckdb", tmp_path / "report.html").path.read_text()
    assert "start skew" in html and "clock_offset_ms" in html and "schedule_lag_p99_ms" in html


def test_losing_an_actor_mid_run_keeps_the_run_and_marks_its_requests(cluster, tmp_path):
    from burstbench.loadgen.ray_driver import execute_ray

    n = 120
    trace = _trace(n, 0.05, 20)  # 6 s of schedule (longer than the driver's 5 s join), answers of ~0.2 s
    holder = []
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while not holder or len(holder[0].slots) < 2 or len(holder[0].slots[1].seen) < 3:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        holder[0].kill(1)
        killed.set()

    with live_server(ttft_s=0.02, itl_s=0.01) as srv:
        sc = Scenario(url=srv.url, mode="trace", scrape_metrics=False)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        res = execute_ray(trace, sc, tmp_path / "lost.duckdb", address=cluster.address, progress=False,
                          on_transport=holder.append)
        t.join(5)
    seen = [len(sl.seen) for sl in holder[0].slots] if holder else None
    assert killed.is_set(), f"the actor was never killed: {res.status} {res.end_reason} seen={seen} {res.notes}"
    rows = _rows(tmp_path / "lost.duckdb", res.run_id)
    info = _run(tmp_path / "lost.duckdb", res.run_id)
    assert info["status"] == "done"
    assert "Ray workers lost: 1" in info["reason"]
    assert any("worker 1" in s and "lost" in s for s in info["notes"])
    from burstbench.reports.build import build_report

    html = build_report(tmp_path / "lost.duckdb", tmp_path / "report.html").path.read_text()
    assert "worker_lost" in html and "carried on" in html  # failures table and the run's note
    # nothing lost track of: every planned request once
    assert rows["request_id"].to_list() == list(range(n))
    w0, w1 = rows.filter(pl.col("worker_id") == 0), rows.filter(pl.col("worker_id") == 1)
    assert set(w0["status"]) == {"ok"}, "the surviving actor carried on"
    assert w0.height == n // 2 and info["duration"] > 5.9, "to the end of the schedule"
    lost = w1.filter(pl.col("error_class") == "worker_lost")
    assert lost.height > 0
    assert set(lost["status"]) <= {"error", "cancelled"}
    assert w1.filter(pl.col("error_class").is_null())["status"].to_list() == ["ok"] * (w1.height - lost.height)
    # lost requests were later in the schedule than every completed one of that worker
    done_w1 = w1.filter(pl.col("status") == "ok")
    assert done_w1["scheduled_s"].max() < lost["scheduled_s"].max()


def test_run_cli_with_ray_flag(cluster, tmp_path, capsys):
    """``burstbench run --ray ADDRESS`` records into the one results file and says so in --json."""
    from burstbench.cli import main
    from burstbench.traces.schema import write_trace

    path = write_trace(_trace(12, 0.01, 3), tmp_path / "t.parquet")
    out = tmp_path / "cli.duckdb"
    with live_server(ttft_s=0.005, itl_s=0.002) as srv:
        capsys.readouterr()
        rc = main(["run", "--url", srv.url, "--trace", str(path), "-o", str(out), "--ray", cluster.address,
                   "--quiet", "--json", "--no-scrape"])
        captured = capsys.readouterr()
    assert rc in (0, None), captured.err
    summary = json.loads(captured.out)
    assert summary["completed"] == 12 and summary["failed"] == 0
    con = duckdb.connect(str(out), read_only=True)
    try:
        (scen,) = con.execute("SELECT scenario FROM runs").fetchone()
        workers = {r[0] for r in con.execute("SELECT DISTINCT worker_id FROM requests").fetchall()}
    finally:
        con.close()
    assert json.loads(scen)["ray"]["actors"] == 2
    assert workers == {0, 1}


def test_unreachable_ray_address_is_a_one_line_error(tmp_path):
    """A HOST:PORT without a Ray head fails at once (Ray alone would retry for minutes)."""
    import socket
    import subprocess
    import sys

    from burstbench.traces.schema import write_trace

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_trace(_trace(2, 0.1, 2), tmp_path / "t.parquet")
    r = subprocess.run([sys.executable, "-m", "burstbench", "run", "--url", "http://127.0.0.1:9", "--trace",
                        str(path), "-o", str(tmp_path / "r.duckdb"), "--ray", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--ray 127.0.0.1:{port}" in lines[0] and "ray start --head" in lines[0], r.stderr
    assert not (tmp_path / "r.duckdb").exists()


def test_closed_loop_on_ray_numbers_requests_without_gaps(cluster, tmp_path):
    """Closed loop: users split over the actors, ids worker + workers*k, the global limit holds."""
    from burstbench.loadgen.ray_driver import execute_ray

    with live_server(ttft_s=0.002, itl_s=0.001) as srv:
        sc = Scenario(url=srv.url, mode="closed", concurrency=4, max_requests=30, scrape_metrics=False)
        res = execute_ray(_trace(10, 0.0, 2), sc, tmp_path / "closed.duckdb", address=cluster.address,
                          progress=False)
        served = len(srv.records())
    rows = _rows(tmp_path / "closed.duckdb", res.run_id)
    assert res.status == "done"
    assert rows["request_id"].to_list() == list(range(30)) and served == 30
    assert set(rows["status"]) == {"ok"}
    assert set(rows["worker_id"]) == {0, 1}
    assert all(rid % 2 == w for rid, w in zip(rows["request_id"], rows["worker_id"], strict=True))


def test_api_key_reaches_the_actors_but_no_file(cluster, tmp_path, monkeypatch):
    """The key, set only in the driver's environment (after the nodes started), is sent by every
    actor, and appears nowhere in the results file or in Ray's session files and logs."""
    from pathlib import Path

    from burstbench.loadgen.ray_driver import execute_ray

    key = "sk-rayKEY-5d2f81c0a9e7"
    monkeypatch.setenv("BB_RAY_TEST_KEY", key)
    with live_server(ttft_s=0.002, itl_s=0.001) as srv:
        sc = Scenario(url=srv.url, api_key_env="BB_RAY_TEST_KEY", scrape_metrics=False)
        res = execute_ray(_trace(8, 0.01, 2), sc, tmp_path / "k.duckdb", address=cluster.address, progress=False)
        auth = {r.authorization for r in srv.records()}
    assert res.status == "done"
    assert auth == {f"Bearer {key}"}, "every actor sent the key"
    files = [p for p in (*Path(cluster.bb_tmp).rglob("*"), *tmp_path.rglob("*")) if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in files) and any("logs" in p.parts for p in files)
    leaks = []
    for p in files:
        try:
            if key.encode() in p.read_bytes():
                leaks.append(str(p))
        except OSError:  # sockets and files Ray is rotating
            continue
    assert leaks == []
