"""Step jitter: a random time added to each engine iteration, drawn from a fitted table.

Why an engine model needs it: a real engine's iterations are not alike even when their
batches are. vLLM's CPU build on a 2-core host (4-layer model, one stream decoding alone)
took a median 6.4 ms between tokens, but 4% of the gaps were over 50 ms and held half of
the decode time (mean 14.3 ms): its OpenMP threads share the cores with the API server
and the client, and a step waits for a preempted thread. A deterministic cost model can
match the mean (TPOT) or the median gap (ITL), never both; with a zero-mean jitter per
step it keeps the mean its coefficients fit and gets the spread of the gaps.

The table is an inverse CDF: ``(probability, seconds)`` pairs with increasing
probability; a draw is a uniform probability mapped through it (linear between points,
the end values beyond them). ``twin.jitter`` fits it; the engine adds a draw to every
iteration that ran. A draw that would end an iteration before it began ends it at once
and leaves the rest owed by the next iterations, so the jitter keeps its mean of 0 on
short steps too (a client that read two chunks at once measured a gap of 0 and a long
one before it: the same total).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from burstbench.errors import UsageError

MAX_ABS_S = 60.0  # a table entry beyond a minute is not a jitter: refused when read
_BATCH = 4096  # draws made at once (one numpy call), handed out one by one


def check_table(table: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """The table as a tuple of ``(p, s)`` float pairs, or ``UsageError`` saying what is wrong."""
    try:
        rows = tuple((float(p), float(s)) for p, s in table)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"step_jitter must be a list of [probability, seconds] pairs ({exc})") from None
    if len(rows) < 2:
        raise UsageError("step_jitter needs at least two [probability, seconds] pairs")
    p = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows])
    if not (np.isfinite(p).all() and np.isfinite(s).all()):
        raise UsageError("step_jitter has a value that is not a finite number")
    if (p < 0).any() or (p > 1).any() or (np.diff(p) <= 0).any():
        raise UsageError("step_jitter's probabilities must increase within [0, 1]")
    if (np.diff(s) < 0).any():
        raise UsageError("step_jitter's seconds must not decrease with the probability (an inverse CDF)")
    if (np.abs(s) > MAX_ABS_S).any():
        raise UsageError(f"step_jitter has an entry beyond {MAX_ABS_S:g} s")
    return rows


class StepJitter:
    """Seeded draws from a jitter table, and the debt a step could not take.

    Calling it with a step's duration returns the duration with its draw (and any debt)
    added, never below 0; what is left below 0 is owed by the next call."""

    def __init__(self, table: Sequence[Sequence[float]], seed: int = 0) -> None:
        rows = check_table(table)
        self._p = np.array([r[0] for r in rows])
        self._s = np.array([r[1] for r in rows])
        self._rng = np.random.default_rng(seed)
        self._buf: list[float] = []
        self.debt = 0.0

    def draw(self) -> float:
        """The next draw (seconds)."""
        if not self._buf:
            self._buf = np.interp(self._rng.random(_BATCH), self._p, self._s).tolist()
        return self._buf.pop()

    def __call__(self, duration: float) -> float:
        x = duration + self.draw() + self.debt
        if x >= 0:
            self.debt = 0.0
            return x
        self.debt = x
        return 0.0

    def mean(self) -> float:
        """The mean of a draw (the table's integral; 0 for a fitted one)."""
        return table_mean(self._p, self._s)


def table_mean(p: np.ndarray, s: np.ndarray) -> float:
    """Mean of a draw through the inverse CDF ``(p, s)``: the end values hold below p[0] and above p[-1]."""
    inner = float(np.sum(np.diff(p) * (s[1:] + s[:-1]) / 2))
    return inner + float(p[0] * s[0] + (1 - p[-1]) * s[-1])
