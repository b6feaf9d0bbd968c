"""A twin started far from a run's optimum reaches it (issue 12: "the fit does not move").

The ground truth is the reference engine of the small CPU model the real-vLLM tests serve,
on a measured CPU profile, with a hidden configuration far from the preset start: per-step
and per-layer overheads 20x the preset and FLOP/s 0.3x the profile. The measured profile's
FLOP/s and bandwidth curves top out at 1.0, so the preset start sits on the upper bound of
both efficiency scales; before the fix the fit stopped there ("ftol satisfied") with the
FLOP/s scale at 1.0 and the overhead at its own bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.simulator import simulate
from burstbench.traces.schema import Trace, conform
from burstbench.twin.calibrate import calibrate
from burstbench.twin.spec import apply_overrides

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL, HW = str(DATA / "tiny-llama-4l-config.json"), str(DATA / "cpu-x86_64-2t-profile.json")
FLOPS, OVERHEAD = 0.3, 20.0


def _trace(n: int, rate: float, seed: int) -> Trace:
    """Poisson arrivals; prompts of 40/300/900 and answers of 16/64/160 tokens (the issue's mix)."""
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    return Trace(conform(pl.DataFrame({
        "arrival_s": arr - arr[0],
        "input_tokens": np.array([40, 300, 900])[rng.integers(0, 3, n)],
        "output_tokens": np.array([16, 64, 160])[rng.integers(0, 3, n)],
    })))


@pytest.fixture(scope="module")
def far_runs(tmp_path_factory):
    base = load_hardware(HW)
    assert max(y for _, y in base.flops_efficiency.points) == 1.0  # the start is on the bound
    hidden = apply_overrides(base, {"flops_efficiency_scale": FLOPS,
                                    "step_overhead_s": OVERHEAD * base.step_overhead_s,
                                    "layer_overhead_s": OVERHEAD * base.layer_overhead_s})
    out = tmp_path_factory.mktemp("far") / "runs.duckdb"
    ids = [simulate(_trace(80, rate, seed), model=MODEL, hardware=hidden, out=out, label=label,
                    enable_prefix_caching=False, record_chunks=False).run_id
           for label, rate, seed in (("low", 0.6, 1), ("high", 1.4, 2), ("between", 1.0, 3))]
    return out, ids


def test_a_twin_started_far_away_reaches_the_optimum(far_runs):
    out, (low, high, between) = far_runs
    cal = calibrate(out, [low, high], model=MODEL, hardware=HW, holdout=between)
    unc = cal.spec.uncertainty
    assert unc["flops_efficiency_scale"]["value"] == pytest.approx(FLOPS, rel=0.05)
    assert unc["overhead_scale"]["value"] == pytest.approx(OVERHEAD, rel=0.05)
    # no frontend in the truth: what the fit leaves there is a few % of the TTFT it trades with
    ttft_p50_s = cal.spec.errors["fit"]["percentiles"]["ttft_ms"]["p50"]["measured"] / 1000
    assert unc["frontend_latency_s"]["value"] < 0.03 * ttft_p50_s
    assert unc["seq_overhead_s"]["value"] == 0.0  # none in the truth, none kept
    for metric, qs in cal.spec.errors["holdout"]["percentiles"].items():
        assert abs(qs["p50"]["rel_err"]) <= 0.05, (metric, qs)
        assert abs(qs["p90"]["rel_err"]) <= 0.05, (metric, qs)


def test_a_per_sequence_cost_is_recovered(tmp_path):
    """An engine whose step grows with its batch (a CPU engine's per-sequence work) is fitted
    by the per-sequence term, not by a wrong step overhead traded against FLOP/s."""
    base = load_hardware(HW)
    seq = 8 * base.step_overhead_s  # 10.4 ms per sequence per step, ~the real CPU engine's scale
    hidden = apply_overrides(base, {"flops_efficiency_scale": FLOPS, "seq_overhead_s": seq,
                                    "step_overhead_s": 5 * base.step_overhead_s,
                                    "layer_overhead_s": 5 * base.layer_overhead_s})
    out = tmp_path / "runs.duckdb"
    ids = [simulate(_trace(80, rate, seed), model=MODEL, hardware=hidden, out=out, label=label,
                    enable_prefix_caching=False, record_chunks=False).run_id
           for label, rate, seed in (("low", 0.3, 1), ("high", 0.8, 2), ("between", 0.5, 3))]
    cal = calibrate(out, ids[:2], model=MODEL, hardware=HW, holdout=ids[2])
    unc = cal.spec.uncertainty
    assert cal.spec.provenance["seq_overhead_test"]["kept"]
    # recovered to ~15% (it trades with the bandwidth scale and the frontend along a rough
    # valley the search does not fully descend: see the report of issue 12)
    assert unc["seq_overhead_s"]["value"] == pytest.approx(seq, rel=0.25)
    assert unc["overhead_scale"]["value"] == pytest.approx(5, rel=0.25)
    assert cal.spec.overrides["seq_overhead_s"] == unc["seq_overhead_s"]["value"]
    p = cal.spec.errors["holdout"]["percentiles"]
    assert abs(p["tpot_ms"]["p50"]["rel_err"]) <= 0.05 and abs(p["e2el_ms"]["p50"]["rel_err"]) <= 0.05, p
    assert abs(p["ttft_ms"]["p50"]["rel_err"]) <= 0.15, p


def test_no_per_sequence_term_where_the_engine_has_none(far_runs):
    """The far-start engine has no per-sequence cost: the term must not be kept (it would
    only bend to noise), and the twin file says so."""
    out, (low, high, _) = far_runs
    cal = calibrate(out, [low, high], model=MODEL, hardware=HW, max_evals=60)
    test = cal.spec.provenance["seq_overhead_test"]
    assert not test["kept"] and test["loss_without"] - test["loss_with"] <= test["margin"]
    assert cal.spec.overrides["seq_overhead_s"] == 0.0


def test_a_per_token_cost_is_recovered(tmp_path):
    """An engine that spends most of a prompt token outside the GEMM roofline (vLLM's CPU
    build: 0.5 ms per token of a 4-layer model the profile computes in 0.03 ms) is fitted
    with the additive terms, and what the runs can tell is recovered: the cost of a prompt
    token and of a sequence in a decode batch, and the held-out run.

    Not each coefficient on its own: a prompt token's cost is the token term plus the
    roofline's at the FLOP/s scale, and the scale's efficiency curve (low for 1-token
    GEMMs) also charges each decode, like the per-sequence term. Fitted: token 0.20 ms,
    FLOP/s scale 0.29, per sequence 0.42 ms for the truth's 0.30 ms, 1.0 and 1.0 ms, with
    both slopes within 10% at the batches the runs had (1-4). Not beyond them: at 16 the
    decode slope was 32% under, as the scale's curve bends where the truth is straight;
    the probe's decode batches (``calibrate --probe``) are what shows a larger batch. On
    the idle machine's profile, as the real engine's case is."""
    from burstbench.twin.spec import build_cost

    hw = str(DATA / "cpu-x86_64-2t-idle-profile.json")
    base = load_hardware(hw)
    truth = {"token_overhead_s": 3e-4, "seq_overhead_s": 1e-3,
             "step_overhead_s": 5 * base.step_overhead_s, "layer_overhead_s": 5 * base.layer_overhead_s}
    out = tmp_path / "runs.duckdb"
    ids = [simulate(_trace(80, rate, seed), model=MODEL, hardware=apply_overrides(base, truth), out=out,
                    label=label, enable_prefix_caching=False, record_chunks=False).run_id
           for label, rate, seed in (("low", 0.3, 1), ("high", 0.9, 2), ("between", 0.6, 3))]
    cal = calibrate(out, ids[:2], model=MODEL, hardware=hw, holdout=ids[2])
    assert cal.spec.provenance["seq_overhead_test"]["kept"]
    tok = cal.spec.uncertainty["token_overhead_s"]
    assert tok["value"] > 0 and tok["ci95"][0] <= tok["value"] <= tok["ci95"][1]
    assert cal.spec.overrides["token_overhead_s"] == tok["value"]

    def slopes(overrides: dict[str, float]) -> tuple[float, float]:
        c = build_cost(MODEL, hw, 1, overrides)
        prompt_token = (c.step_time([(1024, 0)], []) - c.step_time([(512, 0)], [])) / 512
        decode_seq = (c.step_time([], [300] * 4) - c.step_time([], [300])) / 3  # the batches these runs had
        return prompt_token, decode_seq

    assert slopes(cal.spec.overrides) == pytest.approx(slopes(truth), rel=0.10)
    for metric, qs in cal.spec.errors["holdout"]["percentiles"].items():
        assert abs(qs["p50"]["rel_err"]) <= 0.05, (metric, qs)
