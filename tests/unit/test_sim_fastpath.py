"""The simulator's fast decode loop and column-wise writers give what the plain paths give.

The fast path (``EngineCore.run_decodes``: the block wheel, finishes inside the loop,
the fitted step-time line) must schedule exactly as ``step()`` does iteration by
iteration. The reference here is the same engine with the fast loop switched off, so
every iteration goes through ``step()``: request by request the same iterations
(admission, first and last token, every token segment), the same cached tokens and
preemptions, and token times equal up to the rounding of the fitted line. Real traces,
with KV pressure (preemption), prefix caching, two replicas and the priority policy, so
every branch of the fast loop runs; the engine's invariants are checked after each
stretch the fast loop runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel
from burstbench.backends.reference.engine import DONE, EngineCore
from burstbench.backends.reference.models import load_model
from burstbench.backends.reference.router import Router
from burstbench.backends.reference.simulator import _prefix_keys, run_pool, simulate
from burstbench.otlp import phase_attributes, phase_seconds
from burstbench.store import ResultsStore
from burstbench.traces.schema import Trace, load_trace


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_model("llama-3.1-8b"), load_hardware("h100-sxm"))


def _run(tr: Trace, cost, *, fast: bool, num_blocks: int, replicas: int = 1, router: str = "round_robin",
         policy: str = "fcfs", caching: bool = False):
    df = tr.df
    inp = df["input_tokens"].to_numpy()
    hashes = _prefix_keys(tr, 16, inp) if caching else None
    # priorities drawn once from a fixed seed: the priority policy then reorders for real
    prio = np.random.default_rng(7).integers(0, 3, df.height) if policy == "priority" else None
    engines = [EngineCore(cost, num_blocks, enable_prefix_caching=hashes is not None, policy=policy)
               for _ in range(replicas)]
    stretches = [0]  # iterations the fast loop ran
    for e in engines:
        if not fast:
            e.run_decodes = lambda t, until, times: t  # every iteration through step()
        else:
            loop = e.run_decodes

            def checked(t, until, times, loop=loop, e=e):
                n = len(times)
                t2 = loop(t, until, times)
                stretches[0] += len(times) - n
                e.check_invariants()
                return t2

            e.run_decodes = checked
    run = run_pool(engines, Router(router, replicas), df["arrival_s"].to_numpy(), inp,
                   df["output_tokens"].to_numpy(), hashes=hashes, priority=prio, telemetry_interval_s=1.0)
    return run, engines, stretches[0] / max(1, sum(len(t) for t in run.times))


def _records(run):
    return [None if s is None else (s.state, s.sched_it, s.first_it, s.last_it, tuple(s.segs), s.cached_tokens,
                                    s.preemptions) for s in run.seqs]


@pytest.mark.parametrize("case", ["pressure", "priority", "two_replicas", "prefix_cache"])
def test_fast_loop_schedules_exactly_as_plain_steps(case, cost, azure_conv, mooncake):
    if case == "prefix_cache":
        tr = load_trace(mooncake)
        tr = Trace(tr.df.head(600), dict(tr.meta))
        kw = dict(num_blocks=30000, caching=True)
    else:
        az = load_trace(azure_conv)
        tr = Trace(az.df.head(900), dict(az.meta))
        kw = {"pressure": dict(num_blocks=1200), "priority": dict(num_blocks=1200, policy="priority"),
              "two_replicas": dict(num_blocks=700, replicas=2, router="least_outstanding")}[case]
    fast, f_eng, share = _run(tr, cost, fast=True, **kw)
    slow, s_eng, _ = _run(tr, cost, fast=False, **kw)
    assert share > 0.2  # the fast loop ran a good part of the iterations
    assert _records(fast) == _records(slow)
    assert sum(len(t) for t in fast.times) == sum(len(t) for t in slow.times)
    for a, b in zip(fast.times, slow.times, strict=True):
        np.testing.assert_allclose(np.frombuffer(a), np.frombuffer(b), rtol=1e-12)
    assert [e.num_preemptions for e in f_eng] == [e.num_preemptions for e in s_eng]
    assert [e.generation_tokens for e in f_eng] == [e.generation_tokens for e in s_eng]
    assert [e.prefix_hits for e in f_eng] == [e.prefix_hits for e in s_eng]
    assert all(s is not None and s.state == DONE for s in fast.seqs)
    # the case exercises what it says: preemption everywhere, cache hits and evictions
    assert sum(e.num_preemptions for e in f_eng) > 0
    if case == "prefix_cache":
        assert sum(e.prefix_hits for e in f_eng) > 0 and sum(e.pool.evictions for e in f_eng) > 0
    if case == "two_replicas":
        assert min(len(t) for t in fast.times) > 0


def test_span_rows_are_what_the_per_request_attributes_give(azure_conv, tmp_path):
    """The column-wise span frame equals vLLM's attributes built request by request."""
    az = load_trace(azure_conv)
    tr = Trace(az.df.head(400), dict(az.meta))
    res = simulate(tr, model="llama-3.1-8b", hardware="h100-sxm", out=tmp_path / "s.duckdb", num_blocks=300,
                   replicas=2, router="least_outstanding")
    assert res.preemptions > 0
    with ResultsStore(res.store, read_only=True) as st:
        spans = st.con.execute(
            "SELECT s.request_id, s.arrival_s, s.queue_s, s.prefill_s, s.decode_s, s.inference_s, s.ttft_s,"
            " s.e2e_s, s.prompt_tokens, s.completion_tokens, s.attributes, r.first_token_s, r.last_token_s,"
            " r.input_tokens, r.output_tokens_server FROM server_spans s JOIN requests r USING (run_id, request_id)"
            " ORDER BY 1").fetchall()
    assert len(spans) == res.completed == 400
    for (rid, arrival, queue, prefill, decode, inference, ttft, e2e, p_tok, c_tok, attrs, first, last,
         inp, out) in spans:
        scheduled = arrival + queue
        want = phase_attributes(arrival=arrival, queued=arrival, scheduled=scheduled, first_token=first,
                                last_token=last, end=last, prompt_tokens=inp, completion_tokens=out)
        got = json.loads(attrs)
        assert attrs == json.dumps(got, sort_keys=True)  # the text json.dumps writes
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), rid
        ph = phase_seconds(got)
        assert (ph["queue_s"], ph["prefill_s"], ph["decode_s"], ph["inference_s"], ph["ttft_s"], ph["e2e_s"]) == (
            queue, prefill, decode, inference, ttft, e2e)
        assert (p_tok, c_tok) == (inp, out)
