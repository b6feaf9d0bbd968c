"""The engine core's scheduling invariants, stepped one iteration at a time.

Most tests use ``LinearCost``, a real (if simple) cost object with the same
``step_time`` signature as the reference ``CostModel``; one test checks that the
engine's running-sums path and the plain ``step_time`` path agree on the real
cost model.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from burstbench.backends.reference.engine import DONE, REJECTED, RUNNING, WAITING, EngineCore, Seq
from burstbench.backends.reference.kvcache import chain_hashes
from burstbench.errors import UsageError


class LinearCost:
    """Test double: 1 ms per step plus 10 µs per token plus 10 ns per context token."""

    def step_time(self, prefill, decode):
        return 1e-3 + 1e-5 * (sum(n for n, _ in prefill) + len(decode)) + 1e-8 * sum(decode)


class HiddenSums:
    """Wraps a cost model and hides ``step_time_sums`` so the engine uses the list path."""

    def __init__(self, inner):
        self._inner = inner

    def step_time(self, prefill, decode):
        return self._inner.step_time(prefill, decode)


def run_to_completion(eng: EngineCore, seqs, *, arrivals=None, max_steps=200_000):
    """Step until done, checking invariants each step; returns tokens emitted per request."""
    emitted: Counter[int] = Counter()
    pending = list(seqs) if arrivals is None else []
    if arrivals is None:
        for s in pending:
            eng.add(s)
    plan = sorted(arrivals or [], key=lambda x: x[0])
    steps = 0
    while eng.has_work() or plan:
        while plan and plan[0][0] <= steps:
            eng.add(plan.pop(0)[1])
        decoding_before = {s for s in eng.running if s.decoding}
        out = eng.step(collect=True)
        steps += 1
        assert steps < max_steps, "engine did not finish"
        if out is None:
            continue
        eng.check_invariants()
        assert eng.last_batch_tokens <= eng.max_tokens
        assert len(eng.running) <= eng.max_num_seqs
        emitted.update(s.rid for s in out.emitted)
        # decodes first: every decode that was not preempted produced a token
        assert {s for s in out.emitted if s in decoding_before} == decoding_before - set(out.preempted)
        # a prefill chunk is only scheduled when every decode got its token
        if eng.last_chunks:
            assert eng.last_decodes == len(decoding_before - set(out.preempted))
    return emitted


def test_every_request_finishes_with_exactly_its_tokens():
    rng = random.Random(3)
    eng = EngineCore(LinearCost(), 400, max_num_seqs=8, max_num_batched_tokens=256)
    seqs = [Seq(rid=i, prompt_len=rng.randint(1, 600), max_out=rng.randint(1, 80)) for i in range(60)]
    arrivals = [(rng.randint(0, 300), s) for s in seqs]
    emitted = run_to_completion(eng, seqs, arrivals=arrivals)
    for s in seqs:
        assert s.state == DONE
        assert emitted[s.rid] == s.max_out
        assert sum(s.segs[1::2]) == s.max_out
    assert eng.pool.num_free() == eng.pool.num_usable  # everything returned
    assert eng.max_running_seen == 8  # the limit was reached, not exceeded
    assert eng.max_batch_tokens_seen == 256


def test_chunked_prefill_splits_long_prompts_by_the_budget():
    eng = EngineCore(LinearCost(), 2000, max_num_seqs=4, max_num_batched_tokens=512)
    s = Seq(rid=0, prompt_len=1300, max_out=3)
    eng.add(s)
    sizes = []
    while s.first_it < 0:
        eng.step()
        sizes.append(eng.last_chunks.get(s))
    assert sizes == [512, 512, 276]
    assert s.computed == 1300 and s.out == 1


def test_decodes_keep_their_token_while_a_long_prefill_is_chunked():
    eng = EngineCore(LinearCost(), 2000, max_num_seqs=4, max_num_batched_tokens=100)
    a = Seq(rid=0, prompt_len=10, max_out=50)
    eng.add(a)
    eng.step()  # a prefilled, first token
    b = Seq(rid=1, prompt_len=1000, max_out=2)
    eng.add(b)
    out = eng.step(collect=True)
    assert a in out.emitted and eng.last_chunks[b] == 99  # budget 100 minus a's decode


def test_preemption_under_pressure_newest_first_and_everyone_finishes():
    # 40 blocks * 16 = 640 token slots; 6 requests of 100 + 150 tokens cannot all fit.
    eng = EngineCore(LinearCost(), 41, max_num_seqs=6, max_num_batched_tokens=1024)
    seqs = [Seq(rid=i, prompt_len=100, max_out=150) for i in range(6)]
    for s in seqs:
        eng.add(s)
    first_victim = None
    while eng.has_work():
        newest = next(reversed(eng.running)) if eng.running else None
        out = eng.step(collect=True)
        eng.check_invariants()
        if out.preempted and first_victim is None:
            first_victim = out.preempted[0]
            assert first_victim is newest  # FCFS: the tail of the running list
            assert first_victim.state == WAITING and eng.waiting[0] is first_victim
    assert eng.num_preemptions > 0
    assert all(s.state == DONE and sum(s.segs[1::2]) == 150 for s in seqs)
    assert sum(s.preemptions for s in seqs) == eng.num_preemptions


def test_preempted_request_recomputes_prompt_and_outputs():
    eng = EngineCore(LinearCost(), 21, max_num_seqs=2, max_num_batched_tokens=512)  # 320 slots
    a = Seq(rid=0, prompt_len=150, max_out=100)
    b = Seq(rid=1, prompt_len=150, max_out=100)
    emitted = run_to_completion(eng, [a, b])
    assert b.preemptions >= 1 and a.preemptions == 0
    assert emitted[0] == 100 and emitted[1] == 100
    # prompt tokens counted include the recompute of b's prompt and earlier outputs
    assert eng.prompt_tokens > 300


def test_prefix_cache_hit_on_repeated_prefix_recomputes_last_token():
    eng = EngineCore(LinearCost(), 200, max_num_batched_tokens=4096)
    h = chain_hashes(range(10))  # 10 full blocks = 160 tokens
    a = Seq(rid=0, prompt_len=160, max_out=2, hashes=h)
    run_to_completion(eng, [a])
    b = Seq(rid=1, prompt_len=160, max_out=2, hashes=h)
    c = Seq(rid=2, prompt_len=170, max_out=2, hashes=h)
    run_to_completion(eng, [b])
    run_to_completion(eng, [c])
    assert a.cached_tokens == 0
    assert b.cached_tokens == 144  # all 160 cached, but the last block is recomputed
    assert c.cached_tokens == 160
    assert eng.prefix_hits == 304 and eng.prefix_queries == 160 + 160 + 170


def test_prefix_cache_evicts_least_recently_used_prefix():
    # 20 usable blocks; each request holds 8 blocks of prompt + 1 for its output.
    eng = EngineCore(LinearCost(), 21, max_num_batched_tokens=4096)
    hx, hy, hz = chain_hashes(range(8)), chain_hashes(range(100, 108)), chain_hashes(range(200, 208))
    run_to_completion(eng, [Seq(rid=0, prompt_len=128, max_out=2, hashes=hx)])
    run_to_completion(eng, [Seq(rid=1, prompt_len=128, max_out=2, hashes=hy)])
    run_to_completion(eng, [Seq(rid=2, prompt_len=128, max_out=2, hashes=hz)])  # evicts x first
    y2 = Seq(rid=3, prompt_len=128, max_out=2, hashes=hy)
    x2 = Seq(rid=4, prompt_len=128, max_out=2, hashes=hx)
    run_to_completion(eng, [y2])
    run_to_completion(eng, [x2])
    assert y2.cached_tokens == 112  # y survived
    assert x2.cached_tokens < 112  # x (least recently used) lost blocks


def test_priority_policy_admits_lower_value_first():
    eng = EngineCore(LinearCost(), 100, max_num_seqs=1, max_num_batched_tokens=64, policy="priority")
    late_urgent = Seq(rid=0, prompt_len=10, max_out=1, arrival=1.0, priority=0)
    early_lazy = Seq(rid=1, prompt_len=10, max_out=1, arrival=0.0, priority=5)
    eng.add(early_lazy)
    eng.add(late_urgent)
    eng.step()
    assert late_urgent.state == DONE and early_lazy.state == WAITING


def test_bounded_waiting_queue_rejects():
    eng = EngineCore(LinearCost(), 100, max_waiting=2)
    results = [eng.add(Seq(rid=i, prompt_len=5, max_out=1)) for i in range(3)]
    assert results == [True, True, False]
    assert eng.num_waiting == 2


def test_abort_frees_blocks():
    eng = EngineCore(LinearCost(), 100)
    s = Seq(rid=0, prompt_len=100, max_out=50)
    eng.add(s)
    for _ in range(5):
        eng.step()
    assert s.state == RUNNING and eng.pool.num_free() < eng.pool.num_usable
    eng.abort(s)
    assert eng.pool.num_free() == eng.pool.num_usable and not eng.has_work()
    eng.check_invariants()


def test_check_rejects_requests_that_never_fit():
    eng = EngineCore(LinearCost(), 11, max_context=100000)  # 160 token slots
    assert eng.max_context == 160
    assert eng.check(100, 60) is None
    assert "maximum context length" in eng.check(100, 61)
    assert eng.check(0, 5) is not None and eng.check(5, 0) is not None


def test_bad_configuration_is_a_usage_error():
    with pytest.raises(UsageError, match="max_num_batched_tokens"):
        EngineCore(LinearCost(), 100, max_num_seqs=512, max_num_batched_tokens=256)
    with pytest.raises(UsageError):
        EngineCore(LinearCost(), 100, policy="lifo")


def test_sums_path_matches_list_path_on_the_real_cost_model():
    from burstbench.backends.hardware.profile import load_hardware
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import load_model

    cm = CostModel(load_model("llama-3.1-8b"), load_hardware("h100-sxm"))

    def run(cost):
        eng = EngineCore(cost, 120, max_num_seqs=16, max_num_batched_tokens=512)
        rng = random.Random(7)
        for i in range(40):
            eng.add(Seq(rid=i, prompt_len=rng.randint(1, 700), max_out=rng.randint(1, 60)))
        dts = []
        while eng.has_work():
            dts.append(eng.step())
        return dts, eng.num_preemptions

    fast, p1 = run(cm)
    slow, p2 = run(HiddenSums(cm))
    assert p1 == p2 and p1 > 0
    assert fast == pytest.approx(slow, rel=1e-9)


def test_rejected_state_is_reported():
    eng = EngineCore(LinearCost(), 100, max_waiting=0)
    s = Seq(rid=0, prompt_len=5, max_out=1)
    assert not eng.add(s) and s.state == REJECTED


def test_invariants_hold_without_prefix_caching_under_pressure():
    rng = random.Random(11)
    eng = EngineCore(LinearCost(), 60, max_num_seqs=12, max_num_batched_tokens=128, enable_prefix_caching=False)
    seqs = [Seq(rid=i, prompt_len=rng.randint(1, 300), max_out=rng.randint(1, 200)) for i in range(40)]
    emitted = run_to_completion(eng, seqs, arrivals=[(rng.randint(0, 100), s) for s in seqs])
    assert eng.num_preemptions > 0
    assert all(emitted[s.rid] == s.max_out for s in seqs)
    assert eng.pool.num_free() == eng.pool.num_usable


def test_blocks_filled_by_decoding_are_cached_when_hashes_cover_the_output():
    eng = EngineCore(LinearCost(), 100, max_num_batched_tokens=4096)
    h = chain_hashes(range(8))  # 128 tokens: a 40-token prompt + 88 output tokens
    a = Seq(rid=0, prompt_len=40, max_out=88, hashes=h)
    run_to_completion(eng, [a])
    # a computed 40 + 87 tokens: 7 full blocks, 5 of them filled by decoding
    b = Seq(rid=1, prompt_len=128, max_out=1, hashes=h)
    run_to_completion(eng, [b])
    assert b.cached_tokens == 7 * 16


def _admits_chunk_only_when_whole_sequence_fits(reserve_full_isl: bool) -> EngineCore:
    """A (100-token prompt) prefills in 16-token chunks into 7 of 8 usable blocks, then
    decodes; B (100-token prompt) waits for room."""
    eng = EngineCore(LinearCost(), 9, block_size=16, max_num_seqs=4, max_num_batched_tokens=16,
                     enable_prefix_caching=False, reserve_full_isl=reserve_full_isl)
    a, b = Seq(rid=0, prompt_len=100, max_out=20), Seq(rid=1, prompt_len=100, max_out=4)
    emitted = run_to_completion(eng, [a, b])
    assert emitted == {0: 20, 1: 4}
    return eng


def test_admission_needs_room_for_the_whole_sequence_not_only_its_first_chunk():
    # vLLM 0.32 (scheduler_reserve_full_isl, on by default) admits B only when its whole
    # 100-token prompt fits (7 blocks); the older rule admitted B's first 15-token chunk
    # into the one free block while A decoded, and A then had to preempt B for its 8th block.
    new = _admits_chunk_only_when_whole_sequence_fits(True)
    old = _admits_chunk_only_when_whole_sequence_fits(False)
    assert new.num_preemptions == 0
    assert old.num_preemptions >= 1


def test_preemption_counter_reaches_vllms_metrics_when_the_request_emits_again():
    # vLLM counts a preemption (vllm:num_preemptions_total) from the request's PREEMPTED
    # event, which travels with its next output: after the recompute, not at the preemption.
    eng = EngineCore(LinearCost(), 21, max_num_seqs=2, max_num_batched_tokens=512)  # 320 slots
    a = Seq(rid=0, prompt_len=150, max_out=100)
    b = Seq(rid=1, prompt_len=150, max_out=100)
    eng.add(a)
    eng.add(b)
    lagged = False
    while eng.has_work():
        out = eng.step(collect=True)
        if out.preempted:
            assert eng.preemptions_reported < eng.num_preemptions  # b has not emitted since
            lagged = True
        if b in out.emitted and b.preemptions:
            assert eng.preemptions_reported == eng.num_preemptions
    assert lagged and eng.num_preemptions >= 1
    assert eng.preemptions_reported == eng.num_preemptions == b.preemptions


def test_metrics_count_prompts_and_prefix_lookups_at_first_scheduling_only():
    # vLLM 0.32: vllm:prompt_tokens_total and the prefix-cache queries/hits come from a
    # request's first scheduling; a preempted request's recompute and its lookup on resume
    # are not counted there (the lookup goes to separate "preempted" stats).
    eng = EngineCore(LinearCost(), 21, max_num_seqs=2, max_num_batched_tokens=512)  # 320 slots
    a = Seq(rid=0, prompt_len=150, max_out=100, hashes=chain_hashes(range(1000, 1015)))
    b = Seq(rid=1, prompt_len=150, max_out=100, hashes=chain_hashes(range(2000, 2015)))
    run_to_completion(eng, [a, b])
    assert b.preemptions >= 1
    assert eng.prompt_tokens > 300  # the work done includes the recompute
    assert eng.prompt_tokens_reported == 300
    assert eng.prefix_queries == 300
