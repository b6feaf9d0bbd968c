"""The reference scheduler under overload follows a real vLLM's own /metrics (issue 12).

A real ``vllm serve`` of the tiny model with a KV cache of 16 usable blocks (128 tokens
each; ``--num-gpu-blocks 17``, one is vLLM's null block) gets a burst of 12 long-answer
requests: every prompt fits at once, the answers do not, so vLLM preempts. The run is
recorded twice (same requests): the two real counts are the run-to-run noise, printed
beside the comparison. The first run is replayed through the reference engine at the
KV size the server reported (``simulate --replay-run --num-gpu-blocks auto``), with step
times scaled to the run's duration (``--match-duration``: the engine's speed is not what
is tested here), and its preemption count must be within 20% of vLLM's.

Its own server (not the session's: the KV size is a start-up setting), stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from burstbench.analysis.schedseries import compare_runs_series, read_series
from burstbench.testing.overload import burst_trace
from burstbench.testing.vllm_cpu import VllmServer, check_env, env_dir, model_dir, model_facts
from burstbench.traces.schema import write_trace

HW = Path(__file__).resolve().parents[1] / "data" / "cpu-x86_64-2t-profile.json"
LIMITS = {"num_gpu_blocks": 17, "max_model_len": 1024, "max_num_seqs": 16, "max_num_batched_tokens": 1024}


@pytest.fixture(scope="module")
def small_kv_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    why = check_env() or (None if model_facts() else f"no model at {model_dir()}")
    if why:
        pytest.skip(why)
    srv = VllmServer(env=env_dir(), model=model_dir(), log_path=tmp_path_factory.mktemp("vllm-kv") / "serve.log",
                     **LIMITS)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _bb(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.mark.timeout(900)  # ~1 min on a quiet machine after start-up; a loaded one is many times slower
def test_simulated_preemptions_follow_vllms_own_metrics(small_kv_server: VllmServer, tmp_path: Path) -> None:
    trace = write_trace(burst_trace(12, prompt=(32, 100), output=(130, 200)), tmp_path / "burst.parquet")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("scrape_interval_s: 0.5\nstall_timeout_s: 600\n")  # queued requests stay silent long
    out = tmp_path / "r.duckdb"
    for label in ("m1", "m2"):
        _bb("run", "--url", small_kv_server.url, "--trace", str(trace), "--scenario", str(scenario),
            "--tokenizer", str(model_dir()), "-o", str(out), "--label", label, "--quiet")
    _bb("simulate", str(out), "--replay-run", "m1", "--num-gpu-blocks", "auto", "--max-num-seqs", "16",
        "--max-num-batched-tokens", "1024", "--model", str(model_dir() / "config.json"), "--hardware", str(HW),
        "--match-duration", "-o", str(out), "--label", "m1-sim", "--no-chunks")

    con = duckdb.connect(str(out), read_only=True)
    try:
        ids = dict(con.execute("SELECT label, run_id FROM runs").fetchall())
        names = {r[0] for r in con.execute("SELECT DISTINCT name FROM telemetry WHERE run_id = ?", [ids["m1"]]).fetchall()}
        assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:num_preemptions_total"} <= names
        ok = con.execute("SELECT count(*) FROM requests WHERE run_id = ? AND status = 'ok'", [ids["m1"]]).fetchone()[0]
        noise = read_series(con, ids["m2"])
        cmp = compare_runs_series(con, ids["m1"], ids["m1-sim"])
        twice = compare_runs_series(con, ids["m1"], ids["m2"])
    finally:
        con.close()
    assert ok == 12
    assert noise is not None
    real, sim = cmp["preemptions"]["measured"], cmp["preemptions"]["simulated"]
    figures = {"preemptions": {"real_m1": real, "real_m2": noise.preempted, "simulated": sim},
               "distance_sim": {"time": cmp["time_axis"], "work": cmp["work_axis"]},
               "distance_real_m1_m2": {"time": twice["time_axis"], "work": twice["work_axis"]}}
    print(json.dumps(figures))  # -s shows the figures beside the run-to-run noise
    assert real > 0, f"vLLM did not preempt: the test's overload did not happen ({figures})"
    assert abs(sim - real) <= 0.2 * real, figures
