"""Scheduler series of two runs compared (``analysis.schedseries``), and the replay of a run.

Real DuckDB files written by the simulator; the CLI through its entry point. A run
replayed through the same engine at the same KV size must reproduce its own series
exactly (distance 0, same preemptions); at another KV size it must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from burstbench.analysis.schedseries import (
    SchedSeries,
    compare_runs_series,
    compare_series,
    distance,
    kv_config,
    read_series,
    run_as_trace,
)
from burstbench.backends.reference.simulator import simulate
from burstbench.errors import StoreError
from burstbench.testing.overload import burst_trace

LIMITS = ["--block-size", "128", "--max-num-seqs", "8", "--max-num-batched-tokens", "512"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sched") / "r.duckdb"
    res = simulate(burst_trace(12, prompt=(32, 100), output=(130, 200)), model="llama-3.1-8b", hardware="h100-sxm",
                   block_size=128, max_num_seqs=8, max_num_batched_tokens=512, num_blocks=9, out=out, label="a",
                   record_chunks=False, telemetry_interval_s=0.05)
    assert res.preemptions > 0  # the workload does overload 8 usable blocks
    return out


def test_replay_of_a_run_at_its_kv_size_reproduces_its_series(store: Path) -> None:
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "9", *LIMITS,
             "-o", str(store), "--label", "same", "--no-chunks")
    assert p.returncode == 0, p.stderr
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "33", *LIMITS,
             "-o", str(store), "--label", "roomy", "--no-chunks")
    assert p.returncode == 0, p.stderr
    # a slower cost model, its step times scaled so the replay lasts as long as the run
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "9", *LIMITS, "--hardware", "l40s",
             "--match-duration", "-o", str(store), "--label", "matched", "--no-chunks")
    assert p.returncode == 0, p.stderr
    assert "step times x" in p.stderr
    con = duckdb.connect(str(store), read_only=True)
    try:
        ids = dict(con.execute("SELECT label, run_id FROM runs").fetchall())
        same = compare_runs_series(con, ids["a"], ids["same"])
        roomy = compare_runs_series(con, ids["a"], ids["roomy"])
        matched = compare_runs_series(con, ids["a"], ids["matched"])
    finally:
        con.close()
    assert matched["duration_s"]["simulated"] == pytest.approx(matched["duration_s"]["measured"], rel=0.02)
    assert matched["preemptions"]["simulated"] == matched["preemptions"]["measured"]
    assert same["preemptions"]["measured"] == same["preemptions"]["simulated"] > 0
    assert same["time_axis"]["running"] == same["time_axis"]["waiting"] == 0.0
    assert same["work_axis"]["running"] == 0.0
    # 32 usable blocks hold every request: no preemption, and the queue empties at once
    assert roomy["preemptions"]["simulated"] == 0
    assert roomy["time_axis"]["waiting"] > 0.5 and roomy["time_axis"]["running"] > 0.1

    p = _cli("analyze", str(store), "--run", "a", "--compare", "same", "--json", "--boot", "100")
    assert p.returncode == 0, p.stderr
    sched = json.loads(p.stdout)["scheduler"]
    assert sched["preemptions"]["rel_diff"] == 0.0 and sched["time_axis"]["running"] == 0.0


def test_run_as_trace_keeps_send_times_and_lengths(store: Path) -> None:
    con = duckdb.connect(str(store), read_only=True)
    try:
        rid = con.execute("SELECT run_id FROM runs WHERE label = 'a'").fetchone()[0]
        tr = run_as_trace(con, rid)
        sent = con.execute("SELECT sent_s, input_tokens, output_tokens_target FROM requests WHERE run_id = ?"
                           " ORDER BY sent_s, request_id", [rid]).fetchall()
        assert kv_config(con, rid) == {}  # a simulated run reports no vLLM cache_config_info
    finally:
        con.close()
    assert tr.df["input_tokens"].to_list() == [r[1] for r in sent]
    assert tr.df["output_tokens"].to_list() == [r[2] for r in sent]
    assert np.allclose(tr.df["arrival_s"].to_numpy(), [r[0] - sent[0][0] for r in sent])


def test_num_gpu_blocks_auto_needs_the_servers_cache_config(store: Path) -> None:
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "auto", "-o", str(store))
    assert p.returncode != 0
    assert "cache_config_info" in p.stderr and "--num-gpu-blocks N" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "1", "-o", str(store))
    assert p.returncode != 0 and "at least 2" in p.stderr


def test_distance_and_preemption_count_follow_their_definitions() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0])
    a = SchedSeries("a", t, np.array([2.0, 2.0, 2.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0]),
                    np.array([0.0, 1.0, 2.0, 4.0]), np.array([0.0, 10.0, 20.0, 30.0]))
    b = SchedSeries("b", t, np.array([2.0, 1.0, 2.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0]),
                    np.array([0.0, 0.0, 1.0, 5.0]), np.array([0.0, 10.0, 20.0, 30.0]))
    c = compare_series(a, b, grid=4)
    assert c["preemptions"] == {"measured": 4, "simulated": 5, "rel_diff": 0.25}
    assert c["time_axis"]["running"] == pytest.approx(1 / 6)  # one step of 1 against 2+2+2
    assert c["time_axis"]["waiting"] == 0.0
    assert distance(np.zeros(3), np.ones(3)) is None


def test_a_run_without_scheduler_gauges_is_named(tmp_path: Path) -> None:
    out = tmp_path / "r.duckdb"
    simulate(burst_trace(3), model="llama-3.1-8b", hardware="h100-sxm", out=out, label="x", record_chunks=False)
    con = duckdb.connect(str(out))
    try:
        rid = con.execute("SELECT run_id FROM runs").fetchone()[0]
        con.execute("DELETE FROM telemetry")
        assert read_series(con, rid) is None
        with pytest.raises(StoreError, match=rid):
            compare_runs_series(con, rid, rid)
    finally:
        con.close()


def test_replay_with_a_twins_cost(store: Path, tmp_path: Path) -> None:
    from burstbench.twin.spec import TwinSpec

    twin = TwinSpec(model="llama-3.1-8b", hardware="h100-sxm", overrides={"step_overhead_s": 0.05}).write(
        tmp_path / "twin.yaml")
    out = tmp_path / "t.duckdb"
    p = _cli("simulate", str(store), "--replay-run", "a", "--num-gpu-blocks", "9", *LIMITS, "--twin", str(twin),
             "-o", str(out), "--label", "twin", "--json", "--no-chunks")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["duration_s"] > 0.05 * res["iterations"]  # every step pays the twin's 50 ms overhead
    p = _cli("simulate", str(store), "--replay-run", "a", "--twin", str(twin), "--model", "llama-3.1-8b",
             "-o", str(out))
    assert p.returncode != 0 and "--model and --twin" in p.stderr
