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
subtracted to turn them into the overhead scale, the per-sequence cost and the per-token
cost. It is only a start, and calibrate takes only its additive costs (the scales search
well from the preset; from this start a GPU run's fit ended in a worse optimum):
queueing, chunking and the scheduler's limits are what the simulation gets right.

The additive terms live here whole: their start (``choose_start``) and whether they are
kept at all (``fit_with_or_without_additive``, a likelihood-ratio test against the fit
without them), so ``calibrate`` stays about the search itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The additive terms (per sequence, per token) are searched *linearly*, in units of the base
# step overhead (per sequence) and a tenth of it (per token), from 0 (none: a GPU preset's)
# to their HI. Not in log space like the scales: an additive term whose truth may be 0 has
# no scale, and a log step from near 0 changes nothing the quantiles can see (the fit never
# left 13 us when the engine spent 10 ms per sequence).
SEQ = 3  # the per-sequence cost's index in theta
TOK = 4  # the per-token cost's index in theta
ADDITIVE = (SEQ, TOK)
SEQ_HI = 1000.0  # steps of the base overhead per sequence (1.3 s on the preset's 1.3 ms)
TOK_HI = 1000.0  # tenths of the base overhead per token (130 ms on the preset's 1.3 ms)
SEQ_MARGIN = 0.02  # the start's distance from 0 (2.6 us per sequence on the preset overhead)
TOK_UNIT = 0.1  # the per-token unit, in base step overheads
EVIDENCE = 3.84  # chi-square(1 dof) at 95%: what one more parameter must buy (a likelihood-ratio test)
EVIDENCE_PAIR = 5.99  # chi-square(2 dof) at 95%: what the two additive terms must buy together


def seq_ref(base_hw: Any) -> float:
    """The unit of the searched per-sequence cost: the base profile's step overhead."""
    from burstbench.backends.hardware.presets import STEP_OVERHEAD_S

    return float(base_hw.step_overhead_s or STEP_OVERHEAD_S)


def units(base_hw: Any) -> tuple[float, float]:
    """Seconds per unit of the per-sequence and the per-token coordinates."""
    ref = seq_ref(base_hw)
    return ref, ref * TOK_UNIT


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


def start_from_steps(terms: dict[str, float], cost: Any, base_hw: Any) -> np.ndarray:
    """The fit's start (log scales of bandwidth, FLOP/s and overhead; per-sequence and
    per-token seconds in their ``units``) from ``linear_terms``. ``cost`` is the base
    profile's cost model (no overrides). A prompt token's cost beyond the roofline's at
    the profile's own FLOP/s is the per-token start."""
    fixed = base_hw.step_overhead_s + cost.model.num_layers * base_hw.layer_overhead_s
    one = cost.step_time_sums(decode_seqs=1, decode_context_sum=256)
    two = cost.step_time_sums(decode_seqs=2, decode_context_sum=512)
    roof_step = max(one - (two - one) - fixed, 0.0)  # the roofline's per-step part beyond overheads
    roof_seq = max(two - one, 0.0)
    big, small = cost.step_time([(1024, 0)], []), cost.step_time([(512, 0)], [])
    roof_token = max((big - small) / 512, 1e-12)
    tiny = 1e-9
    overhead = max(terms["step_s"] - roof_step, tiny) / max(fixed, tiny)
    seq_unit, tok_unit = units(base_hw)
    return np.array([0.0, 0.0, np.log(overhead), max(terms["seq_s"] - roof_seq, 0.0) / seq_unit,
                     max(terms["prefill_token_s"] - roof_token, 0.0) / tok_unit])


def fit_with_or_without_additive(fitter: Any, sched: Any, max_evals: int) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Fit the three scales with no additive terms, then all five from there; keep the
    per-sequence and per-token costs only when they buy more than ``EVIDENCE_PAIR`` residual
    variances (the likelihood-ratio test that ``twin.limits.pick`` applies to the
    scheduler limits).

    Why not always five: on an engine that has no such costs (a GPU, the reference server)
    they trade with the bandwidth and FLOP/s scales and the profiled frontend along a
    flat, rough valley, and the search stopped there at a few % rms with held-out errors
    of 15% where three coordinates reach the optimum; a term that only bends to one run's
    noise is a defect, and this test keeps it out. They are tested together: both are a
    CPU engine's work outside the arithmetic, and each alone was tried first (per
    sequence, issue 12): a 4-layer model's prefill then had to come from a FLOP/s scale
    whose efficiency curve made every decode token cost 9 prefill tokens."""
    add = list(ADDITIVE)
    fitter.free[:] = True
    fitter.free[add] = False
    theta3, res3 = fitter.fit(sched, max_evals)
    loss3 = 2 * res3.cost
    fitter.free[:] = True
    # two starts, the better fit kept: the regression's guesses (a prompt token's cost beyond
    # the preset's roofline goes to the token term), and the same with no token cost (the
    # fit without the terms may already have put that cost into the FLOP/s scale, rightly:
    # from the regression's start alone an engine whose prefill was FLOP/s-bound ended with
    # a token cost it does not have and E2EL 13% off)
    best: tuple[float, Any, Any] | None = None
    for tok in dict.fromkeys((max(fitter.tok_guess, SEQ_MARGIN), SEQ_MARGIN)):
        x0 = theta3.copy()
        x0[SEQ] = max(fitter.seq_guess, SEQ_MARGIN)
        x0[TOK] = tok
        theta, res = fitter.fit(sched, max_evals, x0=x0)
        if best is None or 2 * res.cost < best[0]:
            best = (2 * res.cost, theta, res)
    assert best is not None
    loss5, theta5, res5 = best
    margin = EVIDENCE_PAIR * loss3 / max(int(fitter.valid.sum()) - len(fitter.free), 1)
    if loss3 - loss5 > margin:
        # fair terms: the fit with the terms had a second budget, so the fit without them
        # gets one too (from where it stopped) before the test; otherwise the terms "win"
        # by the extra search alone (a GPU run without one kept it, its bandwidth 0.90 for 0.55)
        fitter.free[add] = False
        theta3b, res3b = fitter.fit(sched, max_evals, x0=theta3)
        if 2 * res3b.cost < loss3:
            theta3, res3, loss3 = theta3b, res3b, 2 * res3b.cost
            margin = EVIDENCE_PAIR * loss3 / max(int(fitter.valid.sum()) - len(fitter.free), 1)
    kept = loss3 - loss5 > margin
    fitter.free[:] = True
    fitter.free[add] = kept
    info = {"loss_without": loss3, "loss_with": loss5, "margin": margin, "kept": bool(kept),
            "terms": ["seq_overhead_s", "token_overhead_s"]}
    return (theta5, res5, info) if kept else (theta3, res3, info)


def choose_start(fitter: Any, runs: Sequence[Any], sched: Any) -> dict[str, Any]:
    """The per-sequence cost's start from the per-step regression (``linear_terms``), and
    how the regression's point and the preset fit (two simulations, for the record)."""
    from burstbench.twin.spec import build_cost

    out: dict[str, Any] = {"used": "preset"}
    if fitter.replicas != 1:  # a batch per instance is not known from the client's view
        return out
    cost = build_cost(fitter.model, fitter.base_hw, fitter.tp, {})
    terms = linear_terms(runs)  # O(n^2) in a run's requests: once
    if terms is None:
        return out
    guess = start_from_steps(terms, cost, fitter.base_hw)
    if fitter.measured_frontend is None:  # before any simulation: it keys no cache
        fitter.frontend_hint = terms["frontend_s"]
    g, p = fitter.inside(guess), fitter.inside(fitter.start)
    lg, lp = fitter.loss(g, sched), fitter.loss(p, sched)
    out.update({"linear_terms": terms, "loss_preset": lp, "loss_steps": lg})
    # only the additive costs are taken from the regression, as the start of the fit with
    # them: the three scales start at the preset, since a regression start that fitted
    # a GPU run 100x better than the preset still led the search to a worse optimum
    # (bandwidth 0.93 for 0.55) than the preset did
    fitter.seq_guess, fitter.tok_guess = float(g[SEQ]), float(g[TOK])
    out["used"] = "preset; per-sequence and per-token costs from the per-step regression"
    return out
