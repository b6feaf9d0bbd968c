"""Validation of the cost model against published vLLM measurements (issue 4).

vLLM's nightly ``benchmark_latency`` (v0.6; 32 input tokens, 128 output tokens, batch 8,
Llama-3.1-8B, TP1) reports end-to-end latencies of 1579 ms (A100-80GB), 998 ms (H100) and
834 ms (H200). The engine runs that case as one prefill step of 8×32 tokens and 127 decode
steps at batch 8 with growing context (``estimate_batch_latency``); it must land within 15 %
on each GPU with one set of efficiencies and overheads shared by all three.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from burstbench.backends.hardware import presets
from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel, estimate_batch_latency
from burstbench.backends.reference.models import load_model

PUBLISHED_MS = {"a100-80g": 1579.0, "h100-sxm": 998.0, "h200": 834.0}
# Llama-3-8B batch-1 decode lower bound from the issue: 16.06 GB of bf16 weights / bandwidth.
BOUND_MS = {"a100-80g": 7.9, "h100-sxm": 4.8}

L8 = load_model("llama-3.1-8b")


@pytest.mark.parametrize("hw", sorted(PUBLISHED_MS))
def test_benchmark_latency_within_15_percent(hw: str) -> None:
    cost = CostModel(L8, load_hardware(hw))
    ms = estimate_batch_latency(cost, batch=8, input_len=32, output_len=128) * 1e3
    assert ms == pytest.approx(PUBLISHED_MS[hw], rel=0.15), f"{hw}: {ms:.0f} ms"


def test_gpu_ordering_and_ratios_follow_bandwidth() -> None:
    """The ratios between GPUs come out of the datasheets, not per-GPU factors."""
    ms = {
        hw: estimate_batch_latency(CostModel(L8, load_hardware(hw)), 8, 32, 128) * 1e3
        for hw in PUBLISHED_MS
    }
    assert ms["a100-80g"] > ms["h100-sxm"] > ms["h200"]
    for a, b in [("a100-80g", "h100-sxm"), ("h100-sxm", "h200")]:
        measured = PUBLISHED_MS[a] / PUBLISHED_MS[b]
        assert ms[a] / ms[b] == pytest.approx(measured, rel=0.15)


def test_step_overhead_is_the_documented_joint_fit() -> None:
    """``STEP_OVERHEAD_S`` is the least-squares (log) fit over the three GPUs together,
    as presets.py documents, not hand-picked."""
    def sq_err(step_s: float) -> float:
        total = 0.0
        for hw, ref in PUBLISHED_MS.items():
            prof = dataclasses.replace(load_hardware(hw), step_overhead_s=step_s)
            ms = estimate_batch_latency(CostModel(L8, prof), 8, 32, 128) * 1e3
            total += math.log(ms / ref) ** 2
        return total

    grid = [i * 1e-4 for i in range(41)]  # 0 .. 4 ms in 0.1 ms steps
    best = min(grid, key=sq_err)
    assert best == pytest.approx(presets.STEP_OVERHEAD_S, abs=1.5e-4)
    # and the fit is not fragile: ±0.5 ms keeps every GPU within 15 %
    for step_s in (best - 5e-4, best + 5e-4):
        for hw, ref in PUBLISHED_MS.items():
            prof = dataclasses.replace(load_hardware(hw), step_overhead_s=step_s)
            ms = estimate_batch_latency(CostModel(L8, prof), 8, 32, 128) * 1e3
            assert ms == pytest.approx(ref, rel=0.15)


@pytest.mark.parametrize("hw", sorted(BOUND_MS))
def test_batch1_decode_against_the_bandwidth_bound(hw: str) -> None:
    """Predicted batch-1 decode step versus weights/bandwidth, and where the gap comes from.

    The bound reads all 16.06 GB (embedding included) at datasheet bandwidth. The model
    reads the 15.0 GB of non-embedding weights (the embedding is a lookup) at η_B = 75 %
    of the datasheet, plus per-layer kernel floors and the fixed CPU step overhead.
    """
    prof = load_hardware(hw)
    l3 = load_model("llama-3-8b")
    cost = CostModel(l3, prof)
    step_ms = cost.step_time([], [512]) * 1e3
    bound_ms = l3.weight_bytes / prof.mem_bandwidth * 1e3
    assert bound_ms == pytest.approx(BOUND_MS[hw], abs=0.06)
    assert step_ms > bound_ms
    # Gap decomposition (each part computed from the profile, independently of step_time):
    streamed = (l3.total_params - l3.vocab_size * l3.hidden_size) * 2
    weights_ms = streamed / (prof.mem_bandwidth * prof.bandwidth_efficiency(1)) * 1e3
    overhead_ms = (prof.step_overhead_s + l3.num_layers * prof.layer_overhead_s) * 1e3
    rest_ms = step_ms - weights_ms - overhead_ms  # KV reads, elementwise, sampler
    assert 0 < rest_ms < 0.05 * step_ms
    # The bound is 55-80 % of the step: the one public batch-1 figure found (a vLLM 0.23
    # sweep on A100-40GB) runs at 77 % of it; v0.6's larger CPU step overhead sits lower.
    assert 0.55 < bound_ms / step_ms < 0.8


def test_simulator_runs_the_case_as_the_estimate_says(tmp_path) -> None:
    """The scheduler in virtual time (``simulate``) runs benchmark_latency's batch as one
    prefill step and 127 decode steps, so its end-to-end latency equals the estimate."""
    import duckdb
    import polars as pl

    from burstbench.backends.reference.simulator import simulate
    from burstbench.traces.schema import Trace, conform

    trace = Trace(
        conform(pl.DataFrame({"arrival_s": [0.0] * 8, "input_tokens": [32] * 8, "output_tokens": [128] * 8})),
        {"source_format": "test"},
    )
    out = tmp_path / "sim.duckdb"
    simulate(trace, model="llama-3.1-8b", hardware="h100-sxm", out=out)
    with duckdb.connect(str(out), read_only=True) as con:
        n, e2el = con.execute("SELECT count(*), max(last_token_s - sent_s) FROM requests").fetchone()
    assert n == 8
    expected = estimate_batch_latency(CostModel(L8, load_hardware("h100-sxm")), 8, 32, 128)
    assert e2el == pytest.approx(expected, rel=1e-6)
