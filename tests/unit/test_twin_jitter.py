"""The engine's step jitter (issue 12): a random time per iteration, drawn from a table the
twin fits from a run's chunk gaps.

The measured side here is the twin's own engine run *with* a known jitter, the twin the
same engine without it: the fit must give back the known table, and the draws must reach
every iteration, on the general step and on the decode fast path alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.jitter import StepJitter, table_mean
from burstbench.backends.reference.simulator import simulate
from burstbench.errors import SpecError, UsageError
from burstbench.traces.schema import load_trace
from burstbench.traces.synth import replay
from burstbench.twin.calibrate import calibrate
from burstbench.twin.jitter import MIN_PAIRS, PROBS, fit_step_jitter
from burstbench.twin.measured import MeasuredRun
from burstbench.twin.spec import TwinSpec, apply_overrides, build_cost, load_twin
from burstbench.twin.vsim import Sched, Workload, closed_loop, colocated

HW = apply_overrides(load_hardware("h100-sxm"), {"seq_overhead_s": 2e-4})
COST = build_cost("llama-3.1-8b", HW, 1, {})
# heavy-tailed like vLLM's CPU build: most steps a little shorter, 2% stalled by tens of ms
TRUE = tuple(zip((0.0, 0.5, 0.9, 0.98, 0.99, 1.0), (-0.002, -0.0015, 0.0, 0.004, 0.03, 0.08), strict=True))
_shift = table_mean(np.array([p for p, _ in TRUE]), np.array([s for _, s in TRUE]))
TRUE = tuple((p, s - _shift) for p, s in TRUE)  # mean 0, as a fitted table is


def _work(n: int = 120, seed: int = 3) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(np.sort(rng.uniform(0, 20, n)), rng.integers(50, 2000, n), rng.integers(20, 200, n))


@pytest.mark.parametrize("table, why", [
    ([[0.5, 0.0]], "at least two"),
    ([[0.0, 0.01], [1.0, 0.0]], "must not decrease"),
    ([[0.5, 0.0], [0.2, 0.01]], "probabilities must increase"),
    ([[0.0, 0.0], [1.0, float("nan")]], "finite"),
    ([[0.0, 0.0], [1.0, 120.0]], "beyond 60"),
    ([[0.0, "x"], [1.0, 0.0]], "pairs"),
])
def test_a_table_is_checked_before_it_is_used(table, why) -> None:
    with pytest.raises(UsageError, match=why):
        Sched(step_jitter=table)


def test_draws_follow_the_table_and_a_seed_repeats_them() -> None:
    j = StepJitter(TRUE, seed=4)
    x = np.array([j.draw() for _ in range(200_000)])
    assert abs(x.mean() - j.mean()) < 5e-5 and abs(j.mean()) < 1e-12
    p, s = np.array([r[0] for r in TRUE]), np.array([r[1] for r in TRUE])
    for q in (0.25, 0.5, 0.95, 0.985, 0.995):  # the share of draws below each point of the inverse CDF
        assert np.mean(x <= np.interp(q, p, s)) == pytest.approx(q, abs=0.002), q
    again = StepJitter(TRUE, seed=4)
    assert [again.draw() for _ in range(10)] == x[:10].tolist()
    # a twin file gives lists; the scheduler keeps tuples (the calibration hashes it)
    assert hash(Sched(step_jitter=[list(r) for r in TRUE])) == hash(Sched(step_jitter=TRUE))


@pytest.mark.parametrize("users", [None, 4])
def test_every_iteration_that_ran_gets_its_draw_on_both_paths(users) -> None:
    """A constant jitter of +1 ms: every gap is the deterministic one + 1 ms, on prefill
    steps (``step()``) and decode stretches (``run_decodes``) alike, open or closed loop.
    (All sent at once, so the same requests share the same steps with or without it.)"""
    w = _work()
    work = Workload(np.zeros(len(w)), w.input_tokens, w.output_tokens)
    run = (lambda s: colocated(work, COST, s, itl=True)) if users is None else \
        (lambda s: closed_loop(work, users, 0.0, COST, s, itl=True))
    det = run(Sched())
    plus = run(Sched(step_jitter=((0.0, 0.001), (1.0, 0.001))))
    if users is None:
        np.testing.assert_allclose(plus.itl, det.itl + 0.001, rtol=1e-9, atol=1e-12)
        assert (plus.ttft > det.ttft + 0.001 - 1e-12).all()  # its prefill steps got their draws too
    else:  # the twin's own sends move with its answers; every gap is still a step + 1 ms
        assert plus.itl.min() >= 0.001 + det.itl.min() * 0.999
        assert np.nanmedian(plus.ttft) > np.nanmedian(det.ttft)


def test_a_zero_mean_jitter_keeps_the_mean_and_spreads_the_gaps() -> None:
    work = _work()
    det = colocated(work, COST, Sched(), itl=True)
    jit = colocated(work, COST, Sched(step_jitter=TRUE), itl=True)
    assert np.mean(jit.itl) == pytest.approx(np.mean(det.itl), rel=0.02)
    assert np.median(jit.itl) < np.median(det.itl)  # most steps shorter ...
    assert np.quantile(jit.itl, 0.995) > np.quantile(det.itl, 0.995) + 0.02  # ... a few stalled
    other = colocated(work, COST, Sched(step_jitter=TRUE, jitter_seed=1), itl=True)
    assert not np.array_equal(other.itl, jit.itl)


def _as_measured(work: Workload, lat, label: str) -> MeasuredRun:
    return MeasuredRun(label, work, lat, 1.0, 0, len(work), label)


@pytest.mark.parametrize("users", [None, 3])
def test_the_fit_recovers_a_known_jitter(users) -> None:
    """A run of the engine with the known jitter against the same engine without it:
    the pairs free of prefills give the table back. Without that selection the long
    prefills (4,000-8,000 tokens) that land in different steps would swell its tail."""
    rng = np.random.default_rng(9)
    n = 200
    work = Workload(np.sort(rng.uniform(0, 40, n)), rng.integers(4000, 8000, n), rng.integers(20, 200, n))
    if users is None:
        measured = colocated(work, COST, Sched(step_jitter=TRUE), itl=True)
        twin = colocated(work, COST, Sched(), itl=True)
    else:
        measured = closed_loop(work, users, 0.01, COST, Sched(step_jitter=TRUE), itl=True)
        twin = closed_loop(work, users, 0.01, COST, Sched(), itl=True)
    run = _as_measured(Workload(measured.arrival if measured.arrival is not None else work.arrival,
                                work.input_tokens, work.output_tokens), measured, "known")
    if users is not None:
        run = dataclasses.replace(run, users=users, turnaround_s=0.01)
    table, summary = fit_step_jitter([run], [twin])
    assert summary["pairs"] > 5_000
    p, s = np.array([r[0] for r in table]), np.array([r[1] for r in table])
    tp, ts = np.array([r[0] for r in TRUE]), np.array([r[1] for r in TRUE])
    np.testing.assert_array_equal(p, PROBS)
    for q, v in zip(p, s, strict=True):
        if q < 0.02:  # the lowest pairs are those whose batches differ by a request (-2..-4 ms)
            assert v >= ts[0] - 0.003, q
        elif q <= 0.95:  # in seconds (such a pair is ~1 ms apart)
            assert v == pytest.approx(np.interp(q, tp, ts), abs=0.002), q
        else:  # in probability: the tail is steep (1% of probability spans 26 ms of it)
            assert np.interp(v, ts, tp) == pytest.approx(q, abs=0.01), q
    assert s[-1] <= ts[-1] + 0.003  # no prefill in the tail
    assert abs(table_mean(p, s)) < 1e-12
    assert summary["std_ci95_s"][0] <= summary["std_s"] <= summary["std_ci95_s"][1]


def test_too_few_gaps_give_no_jitter_and_say_why() -> None:
    work = _work(20)
    lat = colocated(work, COST, Sched())
    table, summary = fit_step_jitter([_as_measured(work, lat, "no-chunks")], [colocated(work, COST, Sched(), itl=True)])
    assert table == () and summary["pairs"] < MIN_PAIRS and "chunks" in summary["why_none"]


def test_a_twin_file_carries_its_jitter_and_a_bad_one_is_named(tmp_path) -> None:
    import yaml

    spec = TwinSpec(model="llama-3.1-8b", hardware="h100-sxm",
                    scheduler={"step_jitter": [list(r) for r in TRUE], "jitter_seed": 2})
    tw = load_twin(spec.write(tmp_path / "twin.yaml"))
    assert tw.sched().step_jitter == Sched(step_jitter=TRUE).step_jitter and tw.sched().jitter_seed == 2
    for bad, field in (({"step_jitter": [[0.5, 0.0]]}, "scheduler.step_jitter"),
                       ({"step_jitter": [[0.0, 0.02], [1.0, 0.01]]}, "scheduler.step_jitter"),
                       ({"jitter_seed": -1}, "scheduler.jitter_seed")):
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({"model": "llama-3.1-8b", "hardware": "h100-sxm", "scheduler": bad}))
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            load_twin(p)


def test_calibrate_fits_the_jitter_only_when_asked(azure_conv, tmp_path) -> None:
    """On a run the simulator recorded with its chunks: ``step_jitter=True`` gives the twin a
    table (and the file keeps it); the default leaves the twin deterministic and says why."""
    out = tmp_path / "r.duckdb"
    tr = replay(replay(load_trace(azure_conv), window=(0, 40)), rate=3.0)
    rid = simulate(tr, model="llama-3.1-8b", hardware=HW, out=out, label="run", enable_prefix_caching=False,
                   record_chunks=True).run_id
    cal = calibrate(out, rid, model="llama-3.1-8b", hardware="h100-sxm", max_requests=80, max_evals=10,
                    step_jitter=True)
    jit = cal.spec.provenance["step_jitter"]
    assert jit["pairs"] >= MIN_PAIRS and len(cal.spec.scheduler["step_jitter"]) == len(PROBS)
    assert load_twin(cal.spec.write(tmp_path / "twin.yaml")).sched().step_jitter == cal.spec.sched().step_jitter
    plain = calibrate(out, rid, model="llama-3.1-8b", hardware="h100-sxm", max_requests=80, max_evals=10)
    assert "step_jitter" not in plain.spec.scheduler and "--jitter" in plain.spec.provenance["step_jitter"]["why_none"]
