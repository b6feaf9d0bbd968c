"""A burst of long-answer requests: the workload that makes a small KV cache preempt.

Why a burst: every request is queued within a fraction of a second, so what the
scheduler does next (whom it admits, whom it preempts when the cache is full)
depends on its rules and the KV size, hardly on how fast each step runs. That is
what comparing a real vLLM's preemptions with the reference engine's needs: the
scheduler under test, not the cost model. Long answers make each running
request grow by a block every ``block_size`` tokens, which is what forces
preemption once the admitted prompts have filled the cache.

Used by ``benchmarks/bench_preemption.py`` and the real-vLLM test, so both send
exactly the same requests.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from burstbench.traces.schema import Trace, conform


def burst_trace(requests: int = 24, *, seed: int = 0, prompt: tuple[int, int] = (64, 256),
                output: tuple[int, int] = (256, 512), spread_s: float = 0.2) -> Trace:
    """``requests`` arrivals uniform in ``[0, spread_s]``, prompt and output lengths uniform
    in the given inclusive ranges (seeded: the same arguments give the same trace)."""
    if requests < 1 or spread_s < 0 or not 1 <= prompt[0] <= prompt[1] or not 1 <= output[0] <= output[1]:
        raise ValueError("burst_trace needs requests >= 1, spread_s >= 0 and 1 <= low <= high ranges")
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0.0, spread_s, requests))
    arrival -= arrival[0]
    df = pl.DataFrame({
        "arrival_s": arrival,
        "input_tokens": rng.integers(prompt[0], prompt[1] + 1, requests),
        "output_tokens": rng.integers(output[0], output[1] + 1, requests),
    })
    return Trace(conform(df), {"source_format": "synthetic", "generator": "burst_trace", "seed": seed})
