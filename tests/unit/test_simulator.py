"""simulate(): real traces in, a results store out that ResultsStore(read_only=True) reads."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from burstbench.backends.reference.simulator import simulate
from burstbench.errors import InputError
from burstbench.store import ResultsStore
from burstbench.traces.schema import Trace, conform, load_trace


@pytest.fixture(scope="module")
def azure(azure_conv):
    return load_trace(azure_conv)


@pytest.fixture(scope="module")
def azure_head(azure):
    return Trace(azure.df.head(1500), dict(azure.meta))


class HiddenSums:
    """The real cost model without ``step_time_sums``: forces the engine's plain path."""

    def __init__(self, inner):
        self._inner = inner

    def step_time(self, prefill, decode):
        return self._inner.step_time(prefill, decode)

    def kv_cache_blocks(self, **kw):
        return self._inner.kv_cache_blocks(**kw)


def _rows(path, run_id, sql):
    with ResultsStore(path, read_only=True) as st:
        return st.con.execute(sql, [run_id]).fetchall()


def test_store_counts_match_the_trace(azure_head, tmp_path):
    out = tmp_path / "sim.duckdb"
    res = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", out=out, label="t1")
    n = len(azure_head)
    assert res.requests == n == res.completed
    with ResultsStore(out, read_only=True) as st:
        runs = st.con.execute("SELECT backend, clock, status, scenario, label FROM runs").fetchall()
        assert len(runs) == 1
        backend, clock, status, scenario, label = runs[0]
        assert (backend, clock, status, label) == ("simulate", "virtual", "done", "t1")
        sc = json.loads(scenario)
        assert sc["max_num_seqs"] == 256 and sc["block_size"] == 16 and sc["tp"] == 1
        req = st.con.execute(
            "SELECT count(*), sum(output_tokens_server), sum(chunk_count),"
            " count(*) FILTER (WHERE first_token_s < sent_s OR last_token_s < first_token_s)"
            " FROM requests"
        ).fetchone()
        assert req[0] == n
        assert req[1] == int(azure_head.df["output_tokens"].sum()) == req[2]
        assert req[3] == 0
        chunks = st.con.execute("SELECT count(*), sum(tokens) FROM chunks").fetchone()
        assert chunks[0] == chunks[1] == req[1]
        # per request: chunk count and times consistent with the request row
        bad = st.con.execute(
            "SELECT count(*) FROM (SELECT c.request_id, count(*) n, min(t_s) f, max(t_s) l"
            " FROM chunks c GROUP BY 1) x JOIN requests r USING (request_id)"
            " WHERE x.n <> r.output_tokens_server OR abs(x.f - r.first_token_s) > 1e-9"
            " OR abs(x.l - r.last_token_s) > 1e-9"
        ).fetchone()[0]
        assert bad == 0
        tel = dict(st.con.execute("SELECT name, count(*) FROM telemetry GROUP BY 1").fetchall())
        assert tel["vllm:num_requests_running"] > 10 and "vllm:kv_cache_usage_perc" in tel


def test_deterministic(azure_head, tmp_path):
    a = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "a.duckdb", seed=1)
    b = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "b.duckdb", seed=1)
    q = "SELECT request_id, first_token_s, last_token_s FROM requests WHERE run_id = ? ORDER BY 1"
    assert _rows(a.store, a.run_id, q) == _rows(b.store, b.run_id, q)
    assert a.iterations == b.iterations


def test_fast_decode_loop_matches_plain_steps(azure_head):
    from burstbench.backends.hardware.profile import load_hardware
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import load_model

    small = Trace(azure_head.df.head(400), {})
    cm = CostModel(load_model("llama-3.1-8b"), load_hardware("h100-sxm"))
    fast = simulate(small, model="llama-3.1-8b", hardware="h100-sxm")
    slow = simulate(small, model="llama-3.1-8b", hardware="h100-sxm", cost=HiddenSums(cm))
    assert fast.iterations == slow.iterations
    assert fast.duration_s == pytest.approx(slow.duration_s, rel=1e-9)


def test_kv_pressure_preempts_and_everyone_finishes(azure_head, tmp_path):
    res = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", num_blocks=400, out=tmp_path / "p.duckdb")
    assert res.preemptions > 0
    assert res.completed + res.invalid == res.requests
    # requests that cannot fit in 399 blocks at all are 400s, not silently dropped
    big = int(((azure_head.df["input_tokens"] + azure_head.df["output_tokens"]) > 399 * 16).sum())
    assert res.invalid == big
    status = dict(_rows(res.store, res.run_id, "SELECT http_status, count(*) FROM requests WHERE run_id = ? GROUP BY 1"))
    assert status.get(400, 0) == big


def test_bounded_queue_answers_503(azure_head, tmp_path):
    burst = azure_head.df.head(300).with_columns(pl.lit(0.0).alias("arrival_s"))
    res = simulate(Trace(burst, {}), model="llama-3.1-8b", hardware="h100-sxm", max_num_seqs=8, max_waiting=20, out=tmp_path / "q.duckdb")
    # all 300 arrive before the first iteration: 20 fit the queue, the rest are turned away
    assert res.rejected == 280
    rows = _rows(res.store, res.run_id, "SELECT status, http_status, error_class, count(*) FROM requests WHERE run_id = ? GROUP BY ALL")
    by = {(r[0], r[1]): r[3] for r in rows}
    assert by[("error", 503)] == res.rejected
    assert by[("ok", 200)] == res.completed == 300 - res.rejected


def test_prefix_hashes_give_hits_on_mooncake(mooncake):
    tr = load_trace(mooncake)
    head = Trace(tr.df.head(300), dict(tr.meta))
    with_cache = simulate(head, model="llama-3.1-8b", hardware="h100-sxm")
    without = simulate(head, model="llama-3.1-8b", hardware="h100-sxm", enable_prefix_caching=False)
    # 2% of prompt tokens are shared prefixes in this head. (Before the engine admitted only
    # what fits whole, as vLLM 0.32 does, it over-admitted long prompts, preempted 52 times
    # and re-hit the preempted requests' own blocks: a 16% "hit rate" made of thrashing.)
    assert with_cache.prefix_hit_rate > 0.01
    assert with_cache.preemptions == 0
    assert without.prefix_hit_rate == 0.0
    assert with_cache.duration_s < without.duration_s  # cached prefill is skipped


def test_replicas_and_router(azure_head, tmp_path):
    res = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", replicas=3, router="least_outstanding", out=tmp_path / "r.duckdb")
    per = dict(_rows(res.store, res.run_id, "SELECT worker_id, count(*) FROM requests WHERE run_id = ? GROUP BY 1"))
    assert set(per) == {0, 1, 2} and sum(per.values()) == len(azure_head)
    rr = simulate(azure_head, model="llama-3.1-8b", hardware="h100-sxm", replicas=3, router="round_robin", out=tmp_path / "r.duckdb")
    per_rr = dict(_rows(rr.store, rr.run_id, "SELECT worker_id, count(*) FROM requests WHERE run_id = ? GROUP BY 1"))
    assert sorted(per_rr.values()) == [500, 500, 500]


def test_reasoning_model_splits_visible_tokens(azure_head, tmp_path):
    res = simulate(Trace(azure_head.df.head(200), {}), model="deepseek-r1-distill-qwen-7b", hardware="h100-sxm", out=tmp_path / "x.duckdb")
    rows = _rows(
        res.store,
        res.run_id,
        "SELECT output_tokens_server, reasoning_tokens, first_visible_s >= first_token_s FROM requests WHERE run_id = ?",
    )
    for n, r, ordered in rows:
        assert ordered
        assert r == (min(int(0.74 * n), n - 1) if n > 1 else 0)


def test_unsorted_or_bad_trace_is_an_input_error():
    df = conform(pl.DataFrame({"arrival_s": [1.0, 0.5], "input_tokens": [10, 10], "output_tokens": [5, 5]}))
    bad = Trace(df.with_columns(pl.Series("arrival_s", [1.0, 0.5])), {})
    with pytest.raises(InputError, match="arrival_s"):
        simulate(bad, model="llama-3.1-8b", hardware="h100-sxm")
    with pytest.raises(InputError):
        simulate("/nonexistent/trace.csv", model="llama-3.1-8b", hardware="h100-sxm")


def test_zero_output_rows_become_400s(tmp_path):
    df = conform(pl.DataFrame({"arrival_s": [0.0, 0.1], "input_tokens": [10, 10], "output_tokens": [5, 0]}))
    res = simulate(Trace(df, {}), model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "z.duckdb")
    assert res.completed == 1 and res.invalid == 1
    rows = _rows(res.store, res.run_id, "SELECT request_id, status, http_status, error_message FROM requests WHERE run_id = ? ORDER BY 1")
    assert rows[0][1:3] == ("ok", 200)
    assert rows[1][1:3] == ("error", 400) and "max_tokens" in rows[1][3]


def test_no_chunks_mode_keeps_request_times(azure_head, tmp_path):
    res = simulate(Trace(azure_head.df.head(100), {}), model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "n.duckdb", record_chunks=False)
    with ResultsStore(res.store, read_only=True) as st:
        assert st.con.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
        t = st.con.execute("SELECT min(last_token_s - first_token_s) FROM requests").fetchone()[0]
        assert t is not None and np.isfinite(t)


def test_tp2_is_faster_than_tp1_for_70b():
    tr = Trace(conform(pl.DataFrame({"arrival_s": [0.0] * 8, "input_tokens": [512] * 8, "output_tokens": [64] * 8})), {})
    t2 = simulate(tr, model="llama-3.1-70b", hardware="h100-sxm", tp=2).duration_s
    t4 = simulate(tr, model="llama-3.1-70b", hardware="h100-sxm", tp=4).duration_s
    assert t4 < t2


def test_simulated_batch_matches_the_cost_model_latency_estimate():
    """vLLM's benchmark_latency case (batch 8, 32 in, 128 out) run through the scheduler."""
    from burstbench.backends.hardware.profile import load_hardware
    from burstbench.backends.reference.costmodel import CostModel, estimate_batch_latency
    from burstbench.backends.reference.models import load_model

    for hw in ("a100-80g", "h100-sxm"):
        cm = CostModel(load_model("llama-3.1-8b"), load_hardware(hw))
        tr = Trace(conform(pl.DataFrame({"arrival_s": [0.0] * 8, "input_tokens": [32] * 8, "output_tokens": [128] * 8})), {})
        res = simulate(tr, model="llama-3.1-8b", hardware=hw)
        assert res.iterations == 128  # one prefill step (first token) + 127 decode steps
        assert res.duration_s == pytest.approx(estimate_batch_latency(cm, 8, 32, 128), rel=1e-9)


@pytest.mark.slow
def test_simulate_cli_end_to_end_on_the_shipped_azure_trace(azure_conv, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli.duckdb"
    proc = subprocess.run(
        [sys.executable, "-m", "burstbench", "simulate", str(azure_conv), "--model", "llama-3.1-8b",
         "--hardware", "h100-sxm", "-o", str(out), "--json", "--no-chunks"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] == summary["completed"] == 19366
    assert "simulated 19366 requests" in proc.stderr
    with ResultsStore(out, read_only=True) as st:
        assert st.con.execute("SELECT count(*) FROM requests WHERE status = 'ok'").fetchone()[0] == 19366
        assert st.run_ids() == [summary["run_id"]]


def test_simulate_cli_reports_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "burstbench", "simulate", str(bad), "-o", str(tmp_path / "x.duckdb")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and str(bad) in proc.stderr


def test_telemetry_steps_down_to_zero_in_idle_gaps(tmp_path):
    # two bursts of a few seconds, 100 s apart: the engine idles in between
    df = conform(pl.DataFrame({"arrival_s": [0.0] * 4 + [100.0] * 4, "input_tokens": [200] * 8, "output_tokens": [500] * 8}))
    res = simulate(Trace(df, {}), model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "i.duckdb")
    rows = _rows(
        res.store,
        res.run_id,
        "SELECT t_s, value FROM telemetry WHERE run_id = ? AND name = 'vllm:num_requests_running' ORDER BY t_s",
    )
    end1 = _rows(res.store, res.run_id, "SELECT max(end_s) FROM requests WHERE run_id = ? AND request_id < 4")[0][0]
    assert end1 < 50
    gap = [v for t, v in rows if end1 < t < 100.0]
    assert gap and all(v == 0 for v in gap)
    assert max(v for _, v in rows) == 4
