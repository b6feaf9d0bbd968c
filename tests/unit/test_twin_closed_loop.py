"""The twin replays a closed-loop run as a closed loop (``vsim.closed_loop``).

A closed run's send times are the real engine's completion times; replayed as a schedule,
a twin a little off sends the next request into the wrong step (issue 12: +1140% TPOT p50
on vLLM's CPU build with long prompts and short answers). These check the loop itself
against what a closed loop is, with the reference engine's cost model as the engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from burstbench.twin.spec import build_cost
from burstbench.twin.vsim import Sched, Workload, closed_loop, colocated

DATA = Path(__file__).resolve().parents[1] / "data"
COST = build_cost(str(DATA / "tiny-llama-4l-config.json"), str(DATA / "cpu-x86_64-2t-profile.json"), 1,
                  {"step_overhead_s": 5e-3, "seq_overhead_s": 1e-3, "token_overhead_s": 2e-4})
SCHED = Sched(max_num_seqs=128, max_num_batched_tokens=2048, block_size=128)


def _work(n: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(np.zeros(n), np.array([40, 300, 1800])[rng.integers(0, 3, n)],
                    np.array([4, 16, 160])[rng.integers(0, 3, n)])


@pytest.mark.parametrize("users", [1, 2, 5])
def test_each_user_sends_when_an_answer_ends(users: int) -> None:
    """Request users + j goes out ``turnaround`` after the (j+1)-th end the clients saw
    (frontend included); the given send times of those requests are not used."""
    work, turn, fe = _work(40, users), 0.004, 0.02
    lat = closed_loop(work, users, turn, COST, SCHED, frontend_s=fe)
    assert lat.arrival is not None and lat.ok.all()
    ends = np.sort(lat.arrival + lat.e2el)
    np.testing.assert_allclose(lat.arrival[users:], ends[: 40 - users] + turn, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(lat.arrival[:users], work.arrival[:users])
    # the latencies are the engine's for exactly those sends
    again = colocated(Workload(lat.arrival, work.input_tokens, work.output_tokens), COST, SCHED, frontend_s=fe)
    np.testing.assert_allclose(again.e2el, lat.e2el, rtol=0, atol=1e-12)


def test_one_user_is_one_request_at_a_time() -> None:
    work = _work(12, 3)
    lat = closed_loop(work, 1, 0.0, COST, SCHED)
    alone = [colocated(Workload([0.0], work.input_tokens[i:i + 1], work.output_tokens[i:i + 1]), COST, SCHED).e2el[0]
             for i in range(12)]
    np.testing.assert_allclose(lat.e2el, alone, rtol=1e-9)  # never batched with another
    np.testing.assert_allclose(lat.arrival[1:], np.cumsum(alone)[:-1], rtol=1e-9)


def test_as_many_users_as_requests_is_the_schedule() -> None:
    work = _work(10, 4)
    lat = closed_loop(work, 10, 0.5, COST, SCHED)
    np.testing.assert_allclose(lat.e2el, colocated(work, COST, SCHED).e2el, rtol=0, atol=0)


def test_a_replay_of_another_engines_sends_is_not_a_closed_loop() -> None:
    """Send times recorded against a faster engine, replayed into this one, pile requests up;
    the closed loop of the same users does not (what broke the twin on vLLM)."""
    work = _work(40, 5)
    fast = build_cost(str(DATA / "tiny-llama-4l-config.json"), str(DATA / "cpu-x86_64-2t-profile.json"), 1,
                      {"step_overhead_s": 2.5e-3, "seq_overhead_s": 0.5e-3, "token_overhead_s": 1e-4})
    recorded = closed_loop(work, 2, 0.002, fast, SCHED).arrival
    replay = colocated(Workload(recorded, work.input_tokens, work.output_tokens), COST, SCHED)
    loop = closed_loop(Workload(recorded, work.input_tokens, work.output_tokens), 2, 0.002, COST, SCHED)
    assert np.nanmedian(replay.e2el) > 1.3 * np.median(loop.e2el)  # queued behind sends that came too early
    # only the first users' send times are taken: from the recorded sends or from all at 0, one answer
    cold = closed_loop(work, 2, 0.002, COST, SCHED)
    np.testing.assert_allclose(loop.arrival, cold.arrival, rtol=0, atol=1e-9)


def test_no_users_is_a_usage_error() -> None:
    from burstbench.errors import UsageError

    with pytest.raises(UsageError, match="at least one user"):
        closed_loop(_work(3, 0), 0, 0.0, COST, SCHED)
