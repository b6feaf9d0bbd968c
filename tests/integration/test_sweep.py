"""Sweeps and the max-goodput search on real stores: a queue model, the simulator, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from url_process import url_process

from burstbench.analysis.metrics import open_store
from burstbench.analysis.sweep import QueueDriver, parse_values, search_max_goodput, sweep_values
from burstbench.cli import main
from burstbench.errors import UsageError

SLO = {"ttft": 0.25}


def queue_attainment(rate: float, d: QueueDriver, slo_ttft: float) -> float:
    """The queue model's attainment computed here with numpy alone (no store, no SQL)."""
    rng = np.random.default_rng(d.seed)
    arr = np.cumsum(rng.exponential(1.0 / rate, d.requests))
    svc = rng.exponential(d.service_s, d.requests)
    free = np.zeros(d.servers)
    ok = 0
    for a, s in zip(arr, svc, strict=True):
        k = int(np.argmin(free))
        st = max(a, free[k])
        free[k] = st + s
        ok += (st + d.prefill_s - a) <= slo_ttft
    return ok / d.requests


def test_search_brackets_the_true_crossing(tmp_path: Path) -> None:
    out = tmp_path / "sweep.duckdb"
    d = QueueDriver(out=out, service_s=0.05, servers=4, requests=300, seed=3)
    res = search_max_goodput(d, out, SLO, target=0.9, start=4.0, tolerance=0.05, max_steps=14)
    assert res.converged and res.max_goodput_rate is not None
    lo, hi = res.bracket
    assert (hi - lo) / hi <= 0.05
    # Independent truth: the model's attainment on a fine grid, without the store.
    assert queue_attainment(lo, d, SLO["ttft"]) >= 0.9
    assert queue_attainment(hi, d, SLO["ttft"]) < 0.9
    # Doubling from 4 passes at least once before failing, then bisection.
    assert d.calls[:2] == [4.0, 8.0] and len(d.calls) == len(res.steps)
    lo_step = next(s for s in res.steps if s.value == lo)
    assert res.attainment_ci95 == lo_step.attainment_ci95
    assert res.attainment_ci95[0] <= res.attainment_at_max <= res.attainment_ci95[1]
    con = open_store(out)
    try:
        labels = sorted(r[0] for r in con.execute("SELECT label FROM runs").fetchall())
        assert len(labels) == len(res.steps) and all(lab.startswith("sweep:") for lab in labels)
    finally:
        con.close()


def test_search_halves_when_the_start_is_too_high_and_reports_impossible(tmp_path: Path) -> None:
    out = tmp_path / "s.duckdb"
    d = QueueDriver(out=out, requests=200)
    res = search_max_goodput(d, out, SLO, start=500.0, max_steps=14)
    assert d.calls[:3] == [500.0, 250.0, 125.0]
    assert res.max_goodput_rate is not None and res.max_goodput_rate < 80
    # prefill alone (20 ms) exceeds a 10 ms TTFT SLO: no rate passes
    out2 = tmp_path / "s2.duckdb"
    res2 = search_max_goodput(QueueDriver(out=out2, requests=50), out2, {"ttft": 0.01}, start=1.0, max_steps=5)
    assert res2.max_goodput_rate is None and res2.notes and not res2.converged


def test_rate_list_sweep_and_bad_flags(tmp_path: Path) -> None:
    out = tmp_path / "l.duckdb"
    d = QueueDriver(out=out, requests=200)
    res = sweep_values(d, out, [10.0, 40.0, 120.0], slo=SLO, target=0.9)
    assert [s.value for s in res.steps] == [10.0, 40.0, 120.0]
    att = [s.slo_attainment for s in res.steps]
    assert att[0] >= att[1] >= att[2] and att[2] < 0.9
    assert res.max_goodput_rate == max(s.value for s in res.steps if s.slo_attainment >= 0.9)
    with pytest.raises(UsageError, match="needs --slo"):
        search_max_goodput(d, out, {})
    with pytest.raises(UsageError, match="--target"):
        search_max_goodput(d, out, SLO, target=1.5)
    with pytest.raises(UsageError, match="'x' is not a number"):
        parse_values("1,x")
    with pytest.raises(UsageError, match="whole number"):
        parse_values("1.5", integer=True, flag="--concurrencies")


def test_a_step_whose_server_finishes_slower_than_offered_does_not_count(tmp_path: Path) -> None:
    # 629 requests at 256 req/s arrive within ~2.5 s; the queue serves 80 req/s, so they
    # finish over ~8 s. With a loose SLO every request is "good": attainment 1.0, but the
    # step never held 256 req/s and cannot be the max goodput rate.
    out = tmp_path / "short.duckdb"
    d = QueueDriver(out=out, service_s=0.05, servers=4, requests=629)
    res = sweep_values(d, out, [20.0, 256.0], slo={"ttft": 60.0}, target=0.9)
    ok, burst = res.steps
    assert ok.slo_attainment == burst.slo_attainment == 1.0
    assert ok.short is None and ok.passed
    assert ok.finished_rate == pytest.approx(ok.offered_rate, rel=0.1)
    assert burst.passed is False and burst.finished_rate < 0.5 * burst.offered_rate
    assert "does not count" in burst.short and "--duration" in burst.short
    assert res.max_goodput_rate == 20.0
    assert any(n.startswith("step sweep:256: ") for n in res.notes)
    # The search cannot climb past what the queue serves: 4 / 0.05 s = 80 req/s on average,
    # so a step counts up to 80 / MIN_ACHIEVED = 89 req/s, give or take the ~5% sampling
    # noise of 629 exponential service times and Poisson gaps (this seed's answer: 92).
    # Before, every step passed and the search doubled to 8 * 2**11 req/s.
    out2 = tmp_path / "search.duckdb"
    res2 = search_max_goodput(QueueDriver(out=out2, requests=629), out2, {"ttft": 60.0}, start=8.0, max_steps=12)
    assert res2.converged and res2.max_goodput_rate is not None
    assert 70.0 < res2.max_goodput_rate < 100.0
    assert any(s.short for s in res2.steps) and all(not s.passed for s in res2.steps if s.short)


def test_duration_repeats_a_short_trace_until_each_step_holds_its_rate(
        tmp_path: Path, burstgpt_v1: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["sweep", "--rates", "6", "--slo", "ttft=30s", "--simulate", "--model", "llama-3-8b",
            "--hardware", "a100-80g", "--trace", str(burstgpt_v1), "--json"]
    assert main([*base, "-o", str(tmp_path / "a.duckdb")]) == 0
    short = json.loads(capsys.readouterr().out)
    assert short["steps"][0]["short"] and short["max_goodput_rate"] is None
    assert main([*base, "--duration", "600", "-o", str(tmp_path / "b.duckdb")]) == 0
    held = json.loads(capsys.readouterr().out)
    step = held["steps"][0]
    assert step["short"] is None and step["passed"] and held["max_goodput_rate"] == 6.0
    assert step["requests"] > 5 * short["steps"][0]["requests"]
    con = open_store(tmp_path / "b.duckdb")
    try:
        last = con.execute("SELECT max(scheduled_s) FROM requests").fetchone()[0]
    finally:
        con.close()
    assert 590.0 < last < 600.0


def test_cli_search_on_the_simulator(tmp_path: Path, burstgpt_v1: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sim.duckdb"
    rc = main(["sweep", "--search", "goodput", "--slo", "ttft=500ms,tpot=50ms", "--simulate", "--model", "llama-3-8b",
               "--hardware", "a100-80g", "--trace", str(burstgpt_v1), "-o", str(out), "--start", "2",
               "--max-steps", "6", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mode"] == "search" and 1 <= len(res["steps"]) <= 6
    passing = [s["value"] for s in res["steps"] if s["passed"]]
    failing = [s["value"] for s in res["steps"] if s["passed"] is False]
    assert res["max_goodput_rate"] == max(passing)
    assert not failing or min(failing) > res["max_goodput_rate"]
    # every step is a run in the same file, and analyze sees it
    rc = main(["analyze", str(out), "--run", res["steps"][0]["run_id"], "--slo", "ttft=500ms,tpot=50ms", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["goodput"]["slo_attainment"] == pytest.approx(res["steps"][0]["slo_attainment"])


def test_cli_flag_errors(tmp_path: Path, burstgpt_v1: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["sweep", "--trace", str(burstgpt_v1), "-o", str(tmp_path / "x.duckdb")]
    assert main([*base, "--rates", "1", "--search", "goodput", "--simulate"]) == 2
    assert "exactly one of --rates" in capsys.readouterr().err
    assert main([*base, "--rates", "1"]) == 2
    assert "--url URL or --simulate" in capsys.readouterr().err
    assert main([*base, "--rates", "1", "--simulate", "--model", "llama-3-8b"]) == 2
    assert "needs --model and --hardware" in capsys.readouterr().err
    assert main([*base, "--concurrencies", "2", "--simulate", "--model", "m", "--hardware", "h"]) == 2
    assert not (tmp_path / "x.duckdb").exists()


def test_live_sweep_against_a_real_streaming_server(tmp_path: Path) -> None:
    """``burstbench sweep --url`` as a user runs it: a subprocess, a real server, real rows."""
    import subprocess
    import sys

    import duckdb
    import polars as pl

    from burstbench.traces.schema import Trace, conform, write_trace

    n = 40  # at 40 req/s a step lasts ~1 s: a loaded host's latency jitter cannot make it look short
    df = pl.DataFrame({"arrival_s": [i * 0.5 for i in range(n)], "input_tokens": [16] * n,
                       "output_tokens": [4] * n})
    trace = write_trace(Trace(conform(df), {"source": "test"}), tmp_path / "t.parquet")
    out = tmp_path / "live.duckdb"
    with url_process("burstbench.testing.stream_server", "--port", "0", "--ttft", "0.01", "--itl", "0.005") as (url, _):
        proc = subprocess.run([sys.executable, "-m", "burstbench", "sweep", "--rates", "20,40", "--url", url,
                               "--trace", str(trace), "-o", str(out), "--slo", "ttft=2s", "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        proc = subprocess.run([sys.executable, "-m", "burstbench", "sweep", "--concurrencies", "3", "--url", url,
                               "--trace", str(trace), "-o", str(out), "--requests", "6", "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        conc = json.loads(proc.stdout)
    assert [s["value"] for s in res["steps"]] == [20.0, 40.0]
    assert all(s["completed"] == n and s["slo_attainment"] == 1.0 for s in res["steps"])
    assert res["max_goodput_rate"] == 40.0
    con = duckdb.connect(str(out), read_only=True)
    try:
        spans = dict(con.execute(
            "SELECT u.label, max(r.scheduled_s) - min(r.scheduled_s) FROM requests r JOIN runs u USING (run_id)"
            " GROUP BY u.label").fetchall())
    finally:
        con.close()
    # The trace was rescaled to each rate: (n - 1) / span == rate.
    assert spans["sweep:20"] == pytest.approx((n - 1) / 20, rel=1e-6)
    assert spans["sweep:40"] == pytest.approx((n - 1) / 40, rel=1e-6)
    assert conc["mode"] == "concurrencies" and conc["steps"][0]["label"] == "sweep-concurrency:3"
    assert conc["steps"][0]["completed"] == 6


def test_live_sweep_steps_do_not_hit_the_prefix_cache_of_the_step_before(tmp_path: Path) -> None:
    """Each live step sends prompts of its own: against a server with a prefix cache (vLLM's
    is on by default), a step that resent the last step's texts measured the cache."""
    import subprocess
    import sys

    import duckdb
    import polars as pl

    from burstbench.traces.schema import Trace, conform, write_trace

    n = 10
    df = pl.DataFrame({"arrival_s": [i * 0.5 for i in range(n)], "input_tokens": [64] * n, "output_tokens": [2] * n})
    trace = write_trace(Trace(conform(df), {"source": "test"}), tmp_path / "t.parquet")
    out = tmp_path / "live.duckdb"
    def sweep(url: str, *flags: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "burstbench", "sweep", "--url", url, "--trace", str(trace),
                               "-o", str(out), "--json", *flags], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    with url_process("burstbench.testing.stream_server", "--port", "0", "--prefix-block", "8") as (url, _):
        sweep(url, "--rates", "40,40,40")  # seeds 0, 1, 2
        sweep(url, "--rates", "40", "--seed", "3")  # a second sweep, seeds the first did not use
        sweep(url, "--rates", "40")  # a second sweep from seed 0 again: the first step's prompts
    con = duckdb.connect(str(out), read_only=True)
    try:
        cached = con.execute("SELECT count(*), sum(cached_tokens), sum(input_tokens_server) FROM requests r "
                             "JOIN runs u USING (run_id) GROUP BY u.started_at ORDER BY u.started_at").fetchall()
    finally:
        con.close()
    # every request was answered and counted; none of the first four steps found a cached block
    assert [c[0] for c in cached] == [n] * 5 and all(c[2] >= n * 64 for c in cached)
    assert [c[1] for c in cached[:4]] == [0] * 4, cached
    assert cached[4][1] == cached[4][2]  # the repeat with the same seed was all cache: why --seed exists
