"""Fit the engine's step jitter from a measured run's chunk gaps (``backends.reference.jitter``).

What is measured: after the deterministic fit, the twin replays each fit run and has,
for every request, the gap before each of its tokens; the run has the gap before each of
its chunks (one token per chunk: vLLM streams one token per chunk at these loads). Where
the counts agree the two are paired token by token, and the jitter is the distribution
of ``measured gap - twin gap``, shifted to mean 0 so the coefficients keep the mean
they were fitted to (TPOT, E2EL) and only the spread is added.

Which pairs: only gaps during which no other request was between its send and its
first token, in the run *and* in the twin. A prefill lands in one step of the real
engine and maybe the next of the twin: such a pair compares a prefill step with a
decode step and says nothing about jitter (in a 4-layer vLLM run at 4 users they were
the 1% of pairs over +-400 ms). Excluding them on both sides keeps the selection
symmetric, so it does not lean toward the real engine's prefills.

What it cannot tell apart: a stall of the engine from a client that read two chunks at
once (gap 0 after a long one). Both are in what a client measures, and both go in.

Why it is not on by default (``calibrate --jitter``): against vLLM's CPU build
(``benchmarks/bench_fidelity.py``, MAPE at p50 and p90 over the held-out runs, each shape
recorded and fitted in one session, the same fits with and without it) it cut the ITL
error by 42-52% in five twins of six (14% in the sixth): 4 layers 55/40/38% -> 48/23/22% (twins fitted on the runs / the probe /
both), 8 layers 29/42/33% -> 14/22/17%. What it did to TTFT depended on the shape: 8
layers 16/5/9% -> 10/11/10%, 4 layers 45/28/22% -> 48/28/28%. A zero-mean jitter per step
lengthens queues (variance does), and in a closed loop of 8 users, whose TTFT median sits
where its distribution is steepest, that moved the median most (4 layers, an earlier
session's runs: +17% -> +76%, where two identical runs were 33% apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from burstbench.backends.reference.jitter import table_mean
from burstbench.twin.measured import MeasuredRun
from burstbench.twin.vsim import Latencies

# probabilities of the table: fine at both tails, where the stalls are (4% of a lone CPU
# decode stream's gaps held half of its time), coarse in the body
PROBS = (0.001, 0.005, 0.01, 0.02, 0.05, *np.round(np.arange(0.1, 0.91, 0.1), 2), 0.95, 0.98, 0.99, 0.995, 0.999)
MIN_PAIRS = 200  # fewer clean pairs than this: no jitter (its tails would be a handful of gaps)


def _gap_spans(sent: np.ndarray, ttft: np.ndarray, gaps: np.ndarray, of: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each gap's start and end time, and the order that groups the gaps by request.

    ``gaps`` are in token order within each request (``of`` its request); a request's
    tokens start at its first token, ``sent + ttft``."""
    order = np.argsort(of, kind="stable")
    g, o = gaps[order], of[order]
    ends = np.cumsum(g)
    first_of_group = np.r_[True, o[1:] != o[:-1]]
    base = np.maximum.accumulate(np.where(first_of_group, np.arange(len(g)), 0))
    before = ends[base] - g[base]  # the cumulative sum before each request's first gap
    end = (sent + ttft)[o] + ends - before
    return end - g, end, order


def _clean(start: np.ndarray, end: np.ndarray, sent: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Gaps that no request's [send, first token] interval overlaps (a request's own
    interval ends where its first gap starts, so it never counts: 1 ns of slack for the
    rounding of the cumulative sums)."""
    ok = np.isfinite(sent) & np.isfinite(first)
    s, f = np.sort(sent[ok]), np.sort(first[ok])
    overlapping = np.searchsorted(s, end, side="left") - np.searchsorted(f, start + 1e-9, side="right")
    return overlapping <= 0


def paired_excess(run: MeasuredRun, twin: Latencies) -> np.ndarray:
    """``measured - twin`` of every clean gap pair of one run (seconds)."""
    m = run.measured
    if m.itl is None or m.itl_of is None or twin.itl is None or twin.itl_of is None:
        return np.empty(0)
    t_sent = twin.arrival if twin.arrival is not None else run.work.arrival
    m_start, m_end, m_order = _gap_spans(run.work.arrival, m.ttft, m.itl, m.itl_of)
    t_start, t_end, t_order = _gap_spans(t_sent, twin.ttft, twin.itl, twin.itl_of)
    m_ok = _clean(m_start, m_end, run.work.arrival, run.work.arrival + m.ttft)
    t_ok = _clean(t_start, t_end, t_sent, t_sent + twin.ttft)
    m_of, t_of = m.itl_of[m_order], twin.itl_of[t_order]
    n = len(run.work)
    m_count = np.bincount(m_of, minlength=n)
    t_count = np.bincount(t_of, minlength=n)
    same = (m_count == t_count) & (m_count > 0)  # the run kept every chunk of these requests
    m_keep, t_keep = same[m_of], same[t_of]  # both sides then hold the same gaps in the same order
    ok = m_ok[m_keep] & t_ok[t_keep]
    return (m.itl[m_order][m_keep] - twin.itl[t_order][t_keep])[ok]


def fit_step_jitter(runs: Sequence[MeasuredRun], twins: Sequence[Latencies], *, resamples: int = 200,
                    seed: int = 0) -> tuple[tuple[tuple[float, float], ...], dict[str, Any]]:
    """The jitter table (``PROBS`` and seconds) and what it rests on; an empty table and
    the reason when the runs have too few clean pairs (no chunks recorded, say).

    The summary's ``std_s`` carries a bootstrap 95% interval over the pairs."""
    ex = np.concatenate([paired_excess(r, t) for r, t in zip(runs, twins, strict=True)] or [np.empty(0)])
    ex = ex[np.isfinite(ex)]
    if ex.size < MIN_PAIRS:
        return (), {"pairs": int(ex.size), "why_none": f"fewer than {MIN_PAIRS} clean pairs of chunk gaps "
                    "(record the runs with their chunks, more requests, or a lower load)"}
    p = np.array(PROBS)
    q = np.quantile(ex, p)
    shift = table_mean(p, q)  # the bias the deterministic fit left in these gaps: removed
    q = q - shift
    rng = np.random.default_rng(seed)
    stds = [float(np.std(rng.choice(ex, ex.size))) for _ in range(resamples)]
    summary = {
        "pairs": int(ex.size), "mean_removed_s": float(shift), "std_s": float(np.std(ex)),
        "std_ci95_s": [float(np.quantile(stds, 0.025)), float(np.quantile(stds, 0.975))],
        "p50_s": float(np.interp(0.5, p, q)), "p99_s": float(np.interp(0.99, p, q)),
        "method": "quantiles of measured - twin chunk gaps paired token by token, gaps free of any prefill "
                  "in the run and the twin, shifted to mean 0",
    }
    return tuple((float(a), float(b)) for a, b in zip(p, q, strict=True)), summary
