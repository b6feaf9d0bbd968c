"""A start for the twin's fit from per-step evidence: a linear regression on the measured run.

Why: the simulator-based fit moves each coefficient in log space, which is scale-free
for the efficiencies and the step overhead but not for a term that starts near zero: a
per-sequence cost of 13 µs, moved 10%, changes nothing the quantiles can see, so the
search never learns that the real engine spends 10 ms per sequence per step (issue 12).
The run itself says roughly what every additive term is, without a simulation:

- a request's decode time (E2EL − TTFT) is the sum of the ``n − 1`` steps it waited for,
  each costing ``a + b·batch`` plus the prefill tokens other requests pushed into those
  steps at ``c`` each: ``D = (n−1)·a + (n−1)·B̄·b + P·c``, with ``B̄`` its mean batch
  (requests decoding alongside it, from the measured intervals) and ``P`` the prompt
  tokens of requests whose first token came while it decoded;
- a request's TTFT, when no other request got its first token in between (no queue of
  prefills ahead of it), is ``frontend + a + B̄·b + prompt·c``.

Non-negative least squares on relative errors gives ``a, b, c``; the roofline's own share
of each (weight reads per step, per-sequence sampling bytes, FLOPs per prompt token) is
subtracted to turn them into the overhead scale, the per-sequence overhead and the FLOP/s
scale the fit searches. It is only a start, and calibrate takes only its per-sequence cost
(the scales search well from the preset; from this start a GPU run's fit ended in a worse
optimum): queueing, chunking and the scheduler's limits are what the simulation gets right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _rows(run: Any) -> tuple[list[list[float]], list[float]]:
    """Design rows ``[a, b, c, frontend]`` and targets (seconds) of one run's scored requests."""
    lat, work = run.measured, run.work
    ok = np.isfinite(lat.ttft) & np.isfinite(lat.e2el)
    if run.scored is not None:
        ok &= run.scored
    t0 = work.arrival + lat.ttft  # first token
    t1 = work.arrival + lat.e2el  # last token
    dec = ok & (work.output_tokens > 1) & (t1 > t0)
    s, e = np.where(dec, t0, 0.0), np.where(dec, t1, 0.0)
    # time each pair of requests spent decoding together
    overlap = np.clip(np.minimum(e[:, None], e[None, :]) - np.maximum(s[:, None], s[None, :]), 0.0, None)
    dur = np.where(dec, e - s, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        batch = np.nansum(overlap, axis=1) / dur  # includes itself (overlap with itself = dur)
    first = np.where(ok, t0, np.inf)
    rows, ys = [], []
    for i in np.flatnonzero(dec):
        k = float(work.output_tokens[i] - 1)
        inside = (first > s[i]) & (first <= e[i])
        rows.append([k, k * batch[i], float(work.input_tokens[inside].sum()), 0.0])
        ys.append(float(dur[i]))
    for i in np.flatnonzero(ok):
        sent = work.arrival[i]
        others = (first > sent) & (first < t0[i])
        if others.any() or not lat.ttft[i] > 0:
            continue
        active = dec & (s <= t0[i]) & (e >= t0[i])  # decoding when its prefill ran
        rows.append([1.0, float(active.sum() + 1), float(work.input_tokens[i]), 1.0])
        ys.append(float(lat.ttft[i]))
    return rows, ys


def linear_terms(runs: Sequence[Any]) -> dict[str, float] | None:
    """``step_s`` (a), ``seq_s`` (b), ``prefill_token_s`` (c), ``frontend_s`` from the runs,
    or None when they hold too few requests to say."""
    from scipy.optimize import nnls

    rows: list[list[float]] = []
    ys: list[float] = []
    for run in runs:
        r, y = _rows(run)
        rows += r
        ys += y
    if len(ys) < 8:
        return None
    x, y = np.array(rows), np.array(ys)
    w = 1.0 / np.maximum(y, 1e-6)  # relative errors: a 20 ms and a 2 s latency count alike
    coef, _ = nnls(x * w[:, None], y * w)
    return {"step_s": float(coef[0]), "seq_s": float(coef[1]), "prefill_token_s": float(coef[2]),
            "frontend_s": float(coef[3])}


def start_from_steps(runs: Sequence[Any], cost: Any, base_hw: Any, seq_unit: float) -> np.ndarray | None:
    """The fit's start (log scales of bandwidth, FLOP/s and overhead; per-sequence seconds
    over ``seq_unit``) from
    ``linear_terms``, or None. ``cost`` is the base profile's cost model (no overrides)."""
    terms = linear_terms(runs)
    if terms is None:
        return None
    fixed = base_hw.step_overhead_s + cost.model.num_layers * base_hw.layer_overhead_s
    one = cost.step_time_sums(decode_seqs=1, decode_context_sum=256)
    two = cost.step_time_sums(decode_seqs=2, decode_context_sum=512)
    roof_step = max(one - (two - one) - fixed, 0.0)  # the roofline's per-step part beyond overheads
    roof_seq = max(two - one, 0.0)
    big, small = cost.step_time([(1024, 0)], []), cost.step_time([(512, 0)], [])
    roof_token = max((big - small) / 512, 1e-12)
    tiny = 1e-9
    overhead = max(terms["step_s"] - roof_step, tiny) / max(fixed, tiny)
    flops = roof_token / terms["prefill_token_s"] if terms["prefill_token_s"] > 0 else 1.0
    # the per-sequence coordinate is linear, in units of ``seq_unit`` (see calibrate.SEQ)
    return np.array([0.0, np.log(flops), np.log(overhead), max(terms["seq_s"] - roof_seq, 0.0) / seq_unit])
