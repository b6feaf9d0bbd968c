"""The scheduler limits a calibration may fit (``calibrate --fit-limits``).

When the endpoint's ``max_num_seqs`` / ``max_num_batched_tokens`` are not known, each
is a discrete choice: the candidates are the values the runs allow (for
``max_num_seqs``, from the peak number of requests seen decoding at once, which it
cannot be below; for the token budget, vLLM's usual powers of two), each is scored by
the loss after a short re-fit of the engine coefficients at that value, and a value
other than the given one is kept only when a likelihood-ratio test says it earns its
parameter. Apart from ``calibrate`` so that module stays about the continuous fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from burstbench.twin.stepfit import EVIDENCE
from burstbench.twin.vsim import Sched


def _max_overlap(start: np.ndarray, end: np.ndarray) -> int:
    """Most intervals [start, end] open at once (an interval that ends as another starts
    does not overlap it)."""
    times = np.concatenate([start, end])
    delta = np.concatenate([np.ones(len(start), dtype=np.int64), -np.ones(len(end), dtype=np.int64)])
    order = np.lexsort((delta, times))  # at equal times, ends (-1) before starts
    return int(np.cumsum(delta[order]).max())


SEQS_SPAN = 8  # candidates max_num_seqs = peak .. peak + SEQS_SPAN (requests still in prefill)
TOKEN_BUDGETS = (512, 1024, 2048, 4096, 8192, 16384, 32768)  # vLLM's usual max_num_batched_tokens
LIMIT_POLISH_EVALS = 40  # simulations of a finalist's re-fit of the coefficients
LIMIT_SCREEN_EVALS = 20  # ... and of every candidate's first look
LIMIT_FINALISTS = 3
LIMITS = ("max_num_seqs", "max_num_batched_tokens")


def limit_candidates(name: str, runs: Sequence[Any], sched: Sched) -> tuple[list[int], dict[str, Any]]:
    """Values of one scheduler limit to try, and what the runs say about it."""
    given = int(getattr(sched, name))
    if name == "max_num_seqs":
        # Requests between their first and last token at once ran in one iteration, so the
        # limit is at least their peak count; when it binds, the count reaches it less the
        # few requests still in (chunked) prefill. Each interval is trimmed by 1 ms so
        # timestamps of one iteration split by jitter never overlap (undercounting is safe).
        peak = 1
        for run in runs:
            arrival, lat = run.work.arrival, run.measured
            ok = np.isfinite(lat.ttft) & np.isfinite(lat.e2el) & (lat.e2el - lat.ttft > 2e-3)
            if ok.any():
                peak = max(peak, _max_overlap(arrival[ok] + lat.ttft[ok] + 1e-3, arrival[ok] + lat.e2el[ok] - 1e-3))
        cands = sorted({*range(peak, peak + SEQS_SPAN + 1), *([given] if given > peak + SEQS_SPAN else [])})
        return cands, {"lower_bound": peak}
    longest = max((int(run.work.input_tokens.max()) for run in runs if len(run.work)), default=0)
    cands = sorted({*[v for v in TOKEN_BUDGETS if v >= sched.max_num_seqs], given})
    return cands, {"longest_prompt": longest}


def pick(losses: dict[int, float], given: int, n_resid: int, n_params: int) -> tuple[int, float]:
    """The value to keep and the loss margin within which values fit alike.

    A limit is one more parameter: another value replaces the given one only when it
    lowers the loss by more than ``EVIDENCE`` residual variances (a likelihood-ratio
    test), so a limit the run never reached, which fits as well at any larger value,
    stays as given, and noise between near-perfect fits picks nothing."""
    best = min(losses, key=lambda v: (losses[v], v))
    margin = EVIDENCE * losses[best] / max(n_resid - n_params - 1, 1) + 1e-12
    if losses.get(given, math.inf) - losses[best] <= margin:
        return given, margin
    return best, margin


def budget(plan: dict[str, tuple[list[int], dict[str, Any]]]) -> int:
    """Simulations a scan of ``plan`` may take at most (for the progress bar)."""
    per_scan = [LIMIT_SCREEN_EVALS * len(c) + (LIMIT_POLISH_EVALS - LIMIT_SCREEN_EVALS) * (LIMIT_FINALISTS + 2)
                for c, _ in plan.values()]
    return sum(per_scan) * (2 if len(plan) > 1 else 1)


def scan(fitter: Any, theta: np.ndarray, sched: Sched,
         plan: dict[str, tuple[list[int], dict[str, Any]]]) -> tuple[np.ndarray, Sched, dict[str, Any]]:
    """Choose each limit of ``plan`` (name: candidates, facts) in turn; returns the engine
    point and scheduler at the chosen limits and, per limit, what was chosen and why."""
    limit_fit: dict[str, Any] = {}
    pending, scans = list(plan), 0
    while pending and scans < 2 * len(plan):  # max_num_seqs first: the token budget must cover it
        name = pending.pop(0)
        scans += 1
        cands, facts = plan[name]
        if name == "max_num_batched_tokens":
            cands = [v for v in cands if v >= sched.max_num_seqs] or [sched.max_num_batched_tokens]
        current = int(getattr(sched, name))
        # screen every candidate with a short re-fit, then finish the best few and the current
        tried = {v: fitter.polish(theta, replace(sched, **{name: v}), LIMIT_SCREEN_EVALS) for v in cands}
        losses = {v: fitter.loss(t, replace(sched, **{name: v})) for v, t in tried.items()}
        # (the largest candidate too: it stands for 'no limit' in the binding test below)
        for v in {*sorted(cands, key=losses.__getitem__)[:LIMIT_FINALISTS], current, max(cands)} & set(cands):
            sv = replace(sched, **{name: v})
            tried[v] = fitter.polish(tried[v], sv, LIMIT_POLISH_EVALS - LIMIT_SCREEN_EVALS)
            losses[v] = fitter.loss(tried[v], sv)
        chosen, margin = pick(losses, current, int(fitter.valid.sum()), len(fitter.free))
        theta, sched = tried[chosen], replace(sched, **{name: chosen})
        if chosen != current:  # the limits interact: look at the others again at this value
            pending += [other for other in plan if other != name and other not in pending]
        alike = [v for v in cands if losses[v] - losses[chosen] <= margin]
        limit_fit[name] = {"value": chosen, **facts,
                           # binding: the largest candidate (in effect no limit) fits worse
                           "binding": max(cands) not in alike,
                           # the smallest value that fits as well as the chosen one
                           "fits_from": min(alike),
                           "loss": {str(v): losses[v] for v in cands}}
    return theta, sched, limit_fit
