"""From a Trace and a Scenario to a Plan: which requests, when, and on which worker.

Open-loop times are computed here, once, as absolute offsets from the run's start
(seconds), so the runner only ever waits for a deadline and never accumulates
sleep error (the drift that makes other clients fall short of their target rate).
Closed-loop and session follow-up times depend on answers, so the plan carries the
request templates and the runner computes those times as it goes.

The plan is a Polars frame because it is partitioned by worker and pickled to
worker processes; rows become ``Request`` objects only when they are dispatched.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from burstbench.errors import InputError, UsageError
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace

PLAN_COLUMNS = ("request_id", "scheduled_s", "input_tokens", "output_tokens", "model",
                "session_id", "turn", "tenant", "prompt", "prefix_hashes")


@dataclass
class Plan:
    """Requests to send and the windows that classify them.

    ``df`` has PLAN_COLUMNS. In open-loop modes ``scheduled_s`` is the send time
    (for a session's later turns: the earliest send time; the runner also waits
    for the previous answer). In closed mode ``df`` is the pool of request
    templates and ``scheduled_s`` is unused.
    """

    df: pl.DataFrame
    mode: str
    end_s: float | None  # when sending stops (schedule end / duration); None = open-ended
    measure_start_s: float
    measure_end_s: float | None
    target_rate: float | None
    think_time_s: float = 0.0
    max_concurrency: int | None = None
    users: int = 0  # closed loop: users on this worker
    max_requests: int | None = None  # closed loop: global request limit
    worker_id: int = 0
    workers: int = 1
    notes: list[str] = field(default_factory=list)  # what the planner changed, for runs.notes

    @property
    def sessions(self) -> bool:
        return self.mode == "trace" and self.df["session_id"].null_count() < self.df.height

    def phase(self, scheduled_s: float) -> str:
        """'warmup', 'measure' or 'cooldown' for a request scheduled at this time."""
        if scheduled_s < self.measure_start_s:
            return "warmup"
        if self.measure_end_s is not None and scheduled_s >= self.measure_end_s:
            return "cooldown"
        return "measure"


def _rows(trace: Trace, n: int) -> pl.DataFrame:
    """The first ``n`` trace rows, cycling through the trace when it is shorter."""
    df = trace.df
    if n <= df.height:
        return df.head(n)
    idx = pl.Series("i", np.arange(n) % df.height)
    return df[idx]


def _templates(df: pl.DataFrame, scheduled: np.ndarray) -> pl.DataFrame:
    cols = [c for c in PLAN_COLUMNS if c not in ("request_id", "scheduled_s")]
    out = df.select(cols).with_columns(
        pl.Series("request_id", np.arange(df.height, dtype=np.int64)),
        pl.Series("scheduled_s", scheduled.astype(np.float64)),
    )
    return out.select(PLAN_COLUMNS)


def poisson_times(rate: float, *, seed: int, n: int | None = None, duration_s: float | None = None) -> np.ndarray:
    """Poisson arrival offsets at ``rate``/s, first at 0: ``n`` of them or all before ``duration_s``."""
    rng = np.random.default_rng(seed)
    if n is not None:
        gaps = rng.exponential(1.0 / rate, n)
        times = np.cumsum(gaps) - gaps[0]
        if duration_s is not None:
            times = times[times < duration_s]
        return times
    assert duration_s is not None
    chunks = []
    total, last = 0, 0.0
    while last < duration_s:
        m = max(64, int(rate * duration_s * 0.1) + 64)
        gaps = rng.exponential(1.0 / rate, m)
        if not chunks:
            gaps[0] = 0.0
        times = last + np.cumsum(gaps)
        chunks.append(times)
        total += m
        last = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]


def exact_rate(times: np.ndarray, rate: float) -> tuple[np.ndarray, float]:
    """``times`` (first at 0) scaled so their rate, (n - 1) / span, is exactly ``rate``.

    Returns the scaled times and the draw's own rate. Why: a seeded Poisson draw's
    rate is off the asked one by ~1/sqrt(n) (seed 0 at 500/s for 10 s: 1.2% under),
    so two tools, or two seeds, would load the server differently; ``vllm bench
    serve`` rescales its draw the same way. The gaps keep their shape (one factor)."""
    if times.size < 2 or times[-1] <= 0:
        return times, rate
    drawn = (times.size - 1) / float(times[-1])
    return times * (drawn / rate), drawn


def rate_schedule(sc: Scenario, n: int | None) -> tuple[np.ndarray, str]:
    """Mode ``rate``'s send times and the note that says how they were drawn.

    ``pure``: the seed's Poisson draw, ``n`` arrivals or all before the duration.
    ``exact``: the same draw rescaled by ``exact_rate``; with a duration its count is
    fixed at what fits the rate, ceil(rate x duration) (at most ``n``)."""
    assert sc.rate is not None
    rate = sc.rate
    if sc.poisson == "pure":
        times = poisson_times(rate, seed=sc.seed, n=n, duration_s=sc.duration_s)
        span = float(times[-1]) if times.size else 0.0
        own = f"{(times.size - 1) / span:.4g} req/s over its span" if span > 0 else "a single arrival"
        return times, (f"Poisson schedule as drawn (seed {sc.seed}, --poisson pure): {own} for {rate:g} asked; "
                       "--poisson exact rescales it to the asked rate")
    if sc.duration_s is not None:
        fit = max(1, math.ceil(rate * sc.duration_s - 1e-9))
        n = fit if n is None else min(n, fit)
    assert n is not None
    times, drawn = exact_rate(poisson_times(rate, seed=sc.seed, n=n), rate)
    return times, (f"Poisson schedule rescaled to exactly {rate:g} req/s (seed {sc.seed} drew {drawn:.4g}; "
                   "--poisson pure keeps the draw)")


def build_plan(trace: Trace, sc: Scenario) -> Plan:
    """The whole run's plan (worker 0 of 1); ``partition`` splits it for ``--workers``."""
    if trace.df.height == 0:
        raise InputError("the trace has no requests to send")
    notes: list[str] = []
    bad = (pl.col("input_tokens") < 1) | pl.col("input_tokens").is_null()
    n_bad = trace.df.filter(bad).height
    if n_bad:
        if n_bad == trace.df.height:
            raise InputError("every request has input_tokens < 1; nothing can be sent", field="input_tokens")
        notes.append(f"skipped {n_bad} trace request(s) with input_tokens < 1 (nothing to send)")
        trace = Trace(trace.df.filter(~bad), trace.meta)
    if sc.mode == "closed" and sc.cooldown_s > 0 and sc.duration_s is None:
        raise UsageError("cool-down needs --duration in closed-loop mode (the end is not known otherwise)")

    if sc.mode == "trace":
        times = trace.df["arrival_s"].to_numpy().astype(np.float64) / sc.time_scale
        times = times - (times[0] if times.size else 0.0)
        df = _templates(trace.df, times)
        if sc.duration_s is not None:
            df = df.filter(pl.col("scheduled_s") < sc.duration_s)
        if sc.max_requests is not None:
            df = df.head(sc.max_requests)
        if df.height == 0:
            raise UsageError("no request of the trace falls within --duration; lengthen it")
        last = float(df["scheduled_s"].max())
        end = sc.duration_s if sc.duration_s is not None else last
        target = df.height / end if end > 0 else None
    elif sc.mode == "rate":
        assert sc.rate is not None
        n = trace.df.height if sc.max_requests is None and sc.duration_s is None else sc.max_requests
        times, note = rate_schedule(sc, n)
        notes.append(note)
        df = _templates(_rows(trace, times.size), times)
        # Poisson mode replays lengths only: turns are independent requests here.
        end = sc.duration_s if sc.duration_s is not None else (float(times[-1]) if times.size else 0.0)
        target = sc.rate
    else:  # closed
        n = sc.max_requests if sc.max_requests is not None else trace.df.height
        pool = _rows(trace, n if sc.duration_s is None else min(trace.df.height, n))
        df = _templates(pool, np.full(pool.height, np.nan))
        end = sc.duration_s
        target = None
    measure_end = (end - sc.cooldown_s) if (end is not None and sc.cooldown_s > 0) else None
    max_requests = sc.max_requests if sc.mode != "closed" else (
        sc.max_requests if sc.max_requests is not None else (trace.df.height if sc.duration_s is None else None))
    return Plan(df=df, mode=sc.mode, end_s=end, measure_start_s=sc.warmup_s, measure_end_s=measure_end,
                target_rate=target, think_time_s=sc.think_time_s, max_concurrency=sc.max_concurrency,
                users=sc.concurrency or 0, max_requests=max_requests, notes=notes)


def _worker_of(df: pl.DataFrame, workers: int) -> np.ndarray:
    """Worker index per row: a session's turns hash to one worker, other rows round-robin."""
    rid = df["request_id"].to_numpy()
    out = (rid % workers).astype(np.int64)
    sess = df["session_id"].to_list()
    for i, s in enumerate(sess):
        if s is not None:
            out[i] = zlib.crc32(s.encode()) % workers
    return out


def partition(plan: Plan, workers: int) -> list[Plan]:
    """Split a plan over ``workers`` processes; every request lands on exactly one.

    Open loop: rows are divided (sessions whole). Closed loop: users are divided
    and each worker numbers its requests ``worker_id + workers * k`` from the
    shared pool, so ids never collide and the global request limit holds.
    """
    if plan.mode == "closed":
        workers = min(workers, max(1, plan.users))  # a worker without users would leave id gaps
    if workers <= 1:
        return [plan]
    parts: list[Plan] = []
    if plan.mode == "closed":
        for w in range(workers):
            users = plan.users // workers + (1 if w < plan.users % workers else 0)
            parts.append(replace(plan, users=users, worker_id=w, workers=workers,
                                 max_concurrency=_split_cap(plan.max_concurrency, w, workers)))
        return parts
    owner = _worker_of(plan.df, workers)
    for w in range(workers):
        parts.append(replace(plan, df=plan.df.filter(pl.Series(owner == w)), worker_id=w, workers=workers,
                             max_concurrency=_split_cap(plan.max_concurrency, w, workers)))
    return parts


def _split_cap(cap: int | None, w: int, workers: int) -> int | None:
    """A global in-flight cap split over workers (each gets at least one slot)."""
    if cap is None:
        return None
    return max(1, cap // workers + (1 if w < cap % workers else 0))
