"""A run against the live reference server, replayed at the KV size the server reported.

The server (real aiohttp on 127.0.0.1) runs the tiny CPU model with 8 usable KV blocks
of 128 tokens and exports vLLM's ``cache_config_info``; a burst of long answers makes
it preempt. ``simulate --replay-run --num-gpu-blocks auto`` must read the KV size from
the run's scraped metrics, and the replay (same engine, same cost model) must preempt
about as often and fill its queue about as the server did: what the real-vLLM test asks
of the reference scheduler, here with the reference engine on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from url_process import url_process

from burstbench.testing.overload import burst_trace
from burstbench.traces.schema import write_trace

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL, HW = str(DATA / "tiny-llama-4l-config.json"), str(DATA / "cpu-x86_64-2t-profile.json")
LIMITS = ["--max-num-seqs", "8", "--max-num-batched-tokens", "512"]


def _bb(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_replay_takes_the_servers_kv_size_and_follows_its_preemptions(tmp_path: Path) -> None:
    trace = write_trace(burst_trace(12, prompt=(32, 100), output=(130, 200)), tmp_path / "burst.parquet")
    scenario = tmp_path / "s.yaml"
    scenario.write_text("scrape_interval_s: 0.1\nstall_timeout_s: 300\n")
    out = tmp_path / "r.duckdb"
    with url_process("burstbench", "serve", "--model", MODEL, "--hardware", HW, "--port", "0", "--block-size", "128",
                     "--num-gpu-blocks", "9", *LIMITS) as (url, _):
        _bb("run", "--url", url, "--trace", str(trace), "--scenario", str(scenario), "-o", str(out),
            "--label", "real", "--quiet")
    p = _bb("simulate", str(out), "--replay-run", "real", "--num-gpu-blocks", "auto", *LIMITS, "--model", MODEL,
            "--hardware", HW, "-o", str(out), "--label", "sim", "--no-chunks")
    assert "9 KV blocks as the server reported" in p.stderr and "block size 128" in p.stderr
    sched = json.loads(_bb("analyze", str(out), "--run", "real", "--compare", "sim", "--json").stdout)["scheduler"]
    real, sim = sched["preemptions"]["measured"], sched["preemptions"]["simulated"]
    assert real > 0, sched
    assert abs(sim - real) <= 0.2 * real, sched
    assert sched["work_axis"]["running"] < 0.2 and sched["time_axis"]["running"] < 0.3, sched
