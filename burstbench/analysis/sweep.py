"""Sweeps over request rate (or concurrency), and the search for the max goodput rate.

The max goodput rate is DistServe's capacity figure: the highest request rate at
which SLO attainment stays at or above a target (90% by default). Attainment falls
as load rises, so the search brackets the crossing by doubling (or halving) the
rate, then bisects until the bracket is within ``tolerance`` of its upper end. Each
step is a full run in the same results file, labelled ``sweep:<rate>``, so
``analyze`` and ``report`` see every step; the answer carries the Wilson interval
of the attainment measured at that rate, because with a few hundred requests per
step "92%" can easily be "88%" next time.

Where the load comes from is a ``Driver``: anything with ``run(rate) -> run_id``.
``LiveDriver`` replays the trace rescaled to each rate against a URL through the
load generator; ``SimDriver`` runs the reference engine in virtual time (a full
search takes seconds); ``QueueDriver`` is a small M/M/c-style queue written into a
real store, for tests and for trying the search out without any server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from burstbench.analysis.metrics import open_store, summarize
from burstbench.analysis.slo import goodput, wilson_interval
from burstbench.errors import UsageError


class Driver(Protocol):
    """Runs one step at ``rate`` requests/s into the sweep's results file; returns the run id."""

    def run(self, rate: float, *, label: str) -> str: ...


class ConcurrencyDriver(Protocol):
    def run_concurrency(self, concurrency: int, *, label: str) -> str: ...


def rate_label(rate: float) -> str:
    return f"sweep:{rate:.6g}"


# -- drivers ----------------------------------------------------------------------------------


def _scaled(trace: Any, rate: float, duration_s: float | None = None) -> Any:
    """The trace's arrivals rescaled to mean ``rate``, burst shape kept (traces.synth.replay).

    With ``duration_s``, the rescaled trace is repeated back to back until it lasts that
    long: a step must send long enough to hold its rate (see ``MIN_ACHIEVED``), and at a
    high rate a short trace is over in a moment."""
    from burstbench.traces.synth import replay

    scaled = replay(trace, rate=rate)
    return _repeated(scaled, duration_s) if duration_s is not None else scaled


def _repeated(trace: Any, duration_s: float) -> Any:
    """``trace`` played again and again (one mean gap between copies) to cover ``duration_s``.

    Copy k shifts arrivals by k periods and gives sessions the suffix ``#k``, so a
    conversation of copy 2 does not wait for copy 1's. Capped at ``MAX_REPEATED_ROWS``.
    """
    import polars as pl

    from burstbench.traces.schema import Trace

    df = trace.df
    n = df.height
    span = float(df["arrival_s"].max() - df["arrival_s"].min()) if n else 0.0
    period = span + (span / (n - 1) if n > 1 and span > 0 else 1.0)
    copies = max(1, math.ceil(duration_s / period))
    if copies == 1:
        return trace
    if copies * n > MAX_REPEATED_ROWS:
        raise UsageError(f"--duration {duration_s:g}: repeating the {n}-request trace to fill it needs "
                         f"{copies * n} requests (at most {MAX_REPEATED_ROWS}); give a shorter --duration")
    parts = []
    for k in range(copies):
        part = df.with_columns(pl.col("arrival_s") + k * period)
        if "session_id" in df.columns and k:
            part = part.with_columns(pl.col("session_id") + f"#{k}")
        parts.append(part)
    out = pl.concat(parts).filter(pl.col("arrival_s") < duration_s)
    return Trace(out, {**trace.meta, "repeated": {"copies": copies, "period_s": period}})


MAX_REPEATED_ROWS = 10_000_000


@dataclass
class LiveDriver:
    """Replays ``trace`` at each rate against a live endpoint with the load generator.

    Each step writes prompts of its own (prompt seed = the scenario's seed + the step's
    number). Why: the prompt text is seeded, so with one seed every step sent the texts
    of the step before, and a server with a prefix cache (vLLM's is on by default)
    answered every step after the first from its cache: its TTFT measured the cache,
    and a goodput search passed rates the server could not serve. Prefixes the trace
    itself shares (``prefix_hashes``) are still shared within a step."""

    trace: Any
    out: Path
    url: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    steps: int = 0  # runs made so far

    def _run(self, trace: Any, label: str, **flags: Any) -> str:
        from burstbench.loadgen.runner import run_scenario
        from burstbench.loadgen.scenario import build_scenario

        seed = int(self.overrides.get("seed", 0)) + self.steps
        self.steps += 1
        scenario = build_scenario(None, url=self.url, **{**self.overrides, **flags, "seed": seed})
        return run_scenario(trace, scenario, self.out, label=label, progress=self.progress)

    def run(self, rate: float, *, label: str) -> str:
        return self._run(_scaled(self.trace, rate, self.overrides.get("duration_s")), label, mode="trace")

    def run_concurrency(self, concurrency: int, *, label: str) -> str:
        return self._run(self.trace, label, mode="closed", concurrency=concurrency)


@dataclass
class SimDriver:
    """Runs the reference engine in virtual time on the trace rescaled to each rate."""

    trace: Any
    out: Path
    model: str
    hardware: str
    tp: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None  # repeat the rescaled trace to last this long (virtual seconds)

    def run(self, rate: float, *, label: str) -> str:
        from burstbench.backends.reference.simulator import simulate

        res = simulate(_scaled(self.trace, rate, self.duration_s), model=self.model, hardware=self.hardware, tp=self.tp,
                       out=self.out, label=label, **dict(self.options))
        if res.run_id is None:  # pragma: no cover - out is always given
            raise UsageError("the simulator wrote no run")
        return res.run_id


@dataclass
class QueueDriver:
    """A FIFO queue with ``servers`` servers, exponential service, written as real rows.

    Requests arrive as a seeded Poisson process at the asked rate; each waits for a
    free server (Lindley's recursion), then streams ``tokens`` chunks ``itl_s`` apart
    after a prefill of ``prefill_s``. Latency grows with the rate as in any saturating
    server, so a search over it has a true answer to find (capacity ``servers/service_s``).
    """

    out: Path
    service_s: float = 0.05
    servers: int = 4
    requests: int = 400
    prefill_s: float = 0.02
    tokens: int = 8
    itl_s: float = 0.004
    seed: int = 0
    calls: list[float] = field(default_factory=list)

    def run(self, rate: float, *, label: str) -> str:
        import polars as pl

        from burstbench.store import CHUNK_COLUMNS, REQUEST_COLUMNS, ResultsStore, RunInfo

        if not rate > 0:
            raise UsageError(f"rate {rate}: must be positive")
        self.calls.append(rate)
        rng = np.random.default_rng(self.seed)
        arrivals = np.cumsum(rng.exponential(1.0 / rate, self.requests))
        service = rng.exponential(self.service_s, self.requests)
        free = np.zeros(self.servers)
        start = np.empty(self.requests)
        for i, a in enumerate(arrivals):
            k = int(np.argmin(free))
            start[i] = max(a, free[k])
            free[k] = start[i] + service[i]
        first = start + self.prefill_s
        rows, chunks = [], []
        with ResultsStore(self.out) as st:
            rid = st.create_run(RunInfo(backend="queue-model", model="queue", label=label, clock="virtual",
                                        target_rate=rate))
            for i in range(self.requests):
                times = first[i] + self.itl_s * np.arange(self.tokens)
                rows.append((rid, i, None, None, f"t{i % 2}", None, "measure", arrivals[i], arrivals[i],
                             times[0], times[0], times[-1], times[-1], 100, 100, self.tokens, self.tokens,
                             self.tokens, None, None, self.tokens, "ok", 200, None, None, 0))
                chunks += [(rid, i, j, float(t), 1, False) for j, t in enumerate(times)]
            st.append_requests(pl.DataFrame(rows, schema=list(REQUEST_COLUMNS), orient="row", infer_schema_length=None))
            st.append_chunks(pl.DataFrame(chunks, schema=list(CHUNK_COLUMNS), orient="row"))
            end = float(max(first.max() + self.itl_s * self.tokens, free.max()))
            st.finish_run(rid, status="done", end_reason="completed", duration_s=end)
        return rid


# -- steps and results --------------------------------------------------------------------------


@dataclass
class Step:
    """One run of a sweep and what it achieved."""

    value: float  # the rate (req/s), or the concurrency
    run_id: str
    label: str
    requests: int
    completed: int
    request_throughput: float | None
    ttft_p99_ms: float | None
    tpot_p99_ms: float | None
    e2el_p99_ms: float | None
    good: int | None = None
    slo_attainment: float | None = None
    attainment_ci95: list[float] | None = None
    request_goodput: float | None = None
    passed: bool | None = None  # met the target attainment *and* held its rate (see ``short``)
    offered_rate: float | None = None  # sends/s over the middle 90% of the step's schedule
    finished_rate: float | None = None  # completions/s over the middle 90% of completion times
    short: str | None = None  # why the step never held its rate, and what to do; None when it did


@dataclass
class SweepResult:
    mode: str  # rates | concurrencies | search
    steps: list[Step]
    slo_ms: dict[str, float] | None = None
    target: float | None = None
    max_goodput_rate: float | None = None
    bracket: list[float | None] | None = None
    attainment_at_max: float | None = None
    attainment_ci95: list[float] | None = None
    converged: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A rate step counts only when the server finished its requests at (nearly) the rate
# the step offered them. Both rates are taken over the middle 90% of the step's requests
# (scheduled times for the offered rate, completion times for the finishing rate), so one
# long answer at the end does not weigh and a Poisson step's count noise cancels. When
# the server keeps up, completions are the arrivals shifted by their latencies and the
# two rates agree up to the latency spread over the span; a server that falls behind
# finishes at its own capacity, and a trace too short for its rate (629 requests
# squeezed into 2.5 s, finished over 11 s) finishes at whatever the burst drained at.
# Either way the step's latencies then describe a burst, not a sustained rate.
MIN_ACHIEVED = 0.9


def _middle_spans(con: Any, run_id: str) -> tuple[int, float, float]:
    """Requests, and the spans of the middle 90% of their scheduled and completion times."""
    n, q_sched, q_end = con.execute(
        "SELECT count(*), quantile_cont(scheduled_s, [0.05, 0.95]),"
        " quantile_cont(COALESCE(end_s, last_token_s), [0.05, 0.95])"
        " FROM requests WHERE run_id = ? AND phase = 'measure'", [run_id]).fetchone()
    sched = float(q_sched[1] - q_sched[0]) if q_sched else 0.0
    end = float(q_end[1] - q_end[0]) if q_end else 0.0
    return int(n), sched, end


def shortfall(value: float, requests: int, sched_span_s: float, end_span_s: float,
              min_achieved: float = MIN_ACHIEVED) -> tuple[float | None, float | None, str | None]:
    """Offered and finishing rates of a rate step and, when it does not count, why and what to do.

    The rates are 0.9 (n - 1) over each middle-90% span. The advice: with the same extra
    spread of completions, the middle of the schedule must last ``extra * m / (1 - m)``
    for the finishing rate to reach ``m`` of the offered one.
    """
    if requests < 2 or sched_span_s <= 0 or end_span_s <= 0:
        return None, None, None
    k = 0.9 * (requests - 1)
    offered, finished = k / sched_span_s, k / end_span_s
    if finished >= min_achieved * offered:
        return offered, finished, None
    need_s = (end_span_s - sched_span_s) * min_achieved / (1.0 - min_achieved) / 0.9
    why = (f"the server finished requests at {finished:.3g} req/s of the {value:.4g} offered "
           f"({finished / offered:.0%}): the middle 90% of its {requests} requests were sent over "
           f"{sched_span_s:.3g} s and finished over {end_span_s:.3g} s, so the rate was never held and "
           f"the step does not count; give --duration {math.ceil(need_s)} (each step repeats the trace "
           f"to last that long) or a trace of at least {math.ceil(need_s * value)} requests; if the server "
           f"cannot keep up at this rate, no length makes it count")
    return offered, finished, why


def held_rate(con: Any, run_id: str, value: float) -> tuple[float | None, float | None, str | None]:
    """``shortfall`` for a stored rate step: offered rate, finishing rate, why it does not count."""
    return shortfall(value, *_middle_spans(con, run_id))


def measure_step(out: Path, run_id: str, value: float, label: str, slo: Mapping[str, float] | None,
                 target: float | None, *, rate: bool = True) -> Step:
    """The headline numbers of one sweep step, and its attainment when an SLO is set.

    For a rate step (``rate``), a step whose achieved rate falls short of what its schedule
    offered does not pass whatever its attainment (``Step.short`` says why)."""
    con = open_store(out)
    try:
        s = summarize(con, run_id)
        step = Step(value=value, run_id=run_id, label=label, requests=s["requests"], completed=s["completed"],
                    request_throughput=s["request_throughput"], ttft_p99_ms=s["ttft_ms"]["p99"],
                    tpot_p99_ms=s["tpot_ms"]["p99"], e2el_p99_ms=s["e2el_ms"]["p99"])
        if rate:
            step.offered_rate, step.finished_rate, step.short = held_rate(con, run_id, value)
        if slo:
            g = goodput(con, run_id, slo)
            step.good = g["good_requests"]
            step.slo_attainment = g["slo_attainment"]
            step.attainment_ci95 = g["slo_attainment_ci95"]
            step.request_goodput = g["request_goodput"]
            if target is not None and step.slo_attainment is not None:
                step.passed = step.slo_attainment >= target and step.short is None
        return step
    finally:
        con.close()


def _short_notes(steps: Sequence[Step]) -> list[str]:
    return [f"step {s.label}: {s.short}" for s in steps if s.short]


def _best(steps: Sequence[Step]) -> Step | None:
    passing = [s for s in steps if s.passed]
    return max(passing, key=lambda s: s.value) if passing else None


def sweep_values(driver: Any, out: Path, values: Sequence[float], *, kind: str = "rates",
                 slo: Mapping[str, float] | None = None, target: float = 0.9,
                 on_step: Callable[[Step], None] | None = None) -> SweepResult:
    """Run every rate (or concurrency) in ``values``; with an SLO, also the best passing rate."""
    if not values:
        raise UsageError(f"--{kind} is empty; give e.g. --{kind} 1,2,4")
    steps = []
    for v in values:
        if not v > 0:
            raise UsageError(f"--{kind} value {v}: must be positive")
        if kind == "rates":
            label = rate_label(v)
            rid = driver.run(float(v), label=label)
        else:
            label = f"sweep-concurrency:{int(v)}"
            rid = driver.run_concurrency(int(v), label=label)
        step = measure_step(out, rid, float(v), label, slo, target if slo else None, rate=kind == "rates")
        steps.append(step)
        if on_step:
            on_step(step)
    res = SweepResult(mode=kind, steps=steps, slo_ms={k: v * 1000 for k, v in slo.items()} if slo else None,
                      target=target if slo else None, notes=_short_notes(steps))
    if slo and kind == "rates":
        best = _best(steps)
        if best:
            res.max_goodput_rate, res.attainment_at_max, res.attainment_ci95 = (
                best.value, best.slo_attainment, best.attainment_ci95)
        else:
            res.notes.append("no rate in the list met the target attainment")
    return res


def search_max_goodput(
    driver: Driver,
    out: Path,
    slo: Mapping[str, float],
    *,
    target: float = 0.9,
    start: float = 1.0,
    tolerance: float = 0.05,
    max_steps: int = 16,
    min_rate: float = 1e-3,
    max_rate: float = 1e6,
    on_step: Callable[[Step], None] | None = None,
) -> SweepResult:
    """Highest rate with attainment >= ``target``: bracket by doubling/halving, then bisect.

    Stops when ``(hi - lo) / hi <= tolerance`` or after ``max_steps`` runs; the answer
    is the highest rate measured to pass (``lo``), never an interpolation.
    """
    if not slo:
        raise UsageError("--search goodput needs --slo, e.g. --slo ttft=500ms,tpot=50ms")
    if not 0 < target <= 1:
        raise UsageError(f"--target {target}: give a fraction in (0, 1], e.g. 0.9")
    if not start > 0:
        raise UsageError(f"--start {start}: give a positive rate")
    if not 0 < tolerance < 1:
        raise UsageError(f"--tolerance {tolerance}: give a fraction in (0, 1), e.g. 0.05")
    if max_steps < 2:
        raise UsageError(f"--max-steps {max_steps}: at least 2 runs are needed to bracket")
    steps: list[Step] = []

    def step(rate: float) -> bool:
        label = rate_label(rate)
        rid = driver.run(rate, label=label)
        s = measure_step(out, rid, rate, label, slo, target)
        steps.append(s)
        if on_step:
            on_step(s)
        return bool(s.passed)

    lo: float | None = None
    hi: float | None = None
    notes: list[str] = []
    r = start
    if step(r):
        lo = r
        while len(steps) < max_steps and r * 2 <= max_rate:
            r *= 2
            if step(r):
                lo = r
            else:
                hi = r
                break
        if hi is None:
            notes.append(f"attainment stayed >= target up to {lo:g} req/s; raise --max-steps to search higher")
    else:
        hi = r
        while len(steps) < max_steps and r / 2 >= min_rate:
            r /= 2
            if step(r):
                lo = r
                break
            hi = r
        if lo is None:
            notes.append(f"no rate down to {r:g} req/s met the target attainment")
    while lo is not None and hi is not None and (hi - lo) / hi > tolerance and len(steps) < max_steps:
        mid = (lo + hi) / 2
        if step(mid):
            lo = mid
        else:
            hi = mid
    converged = lo is not None and hi is not None and (hi - lo) / hi <= tolerance
    if lo is not None and hi is not None and not converged:
        notes.append(f"stopped after {max_steps} runs with the bracket [{lo:g}, {hi:g}] req/s wider than --tolerance")
    notes = _short_notes(steps) + notes
    at = next((s for s in steps if lo is not None and s.value == lo), None)
    return SweepResult(
        mode="search", steps=steps, slo_ms={k: v * 1000 for k, v in slo.items()}, target=target,
        max_goodput_rate=lo, bracket=[lo, hi], attainment_at_max=at.slo_attainment if at else None,
        attainment_ci95=at.attainment_ci95 if at else None, converged=converged, notes=notes,
    )


def parse_values(text: str, *, integer: bool = False, flag: str = "--rates") -> list[float]:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]`` with a clear error for anything else."""
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            v = float(p)
        except ValueError:
            raise UsageError(f"{flag}: '{p}' is not a number; give e.g. {flag} 1,2,4") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"{flag}: '{p}' must be a positive number")
        if integer and v != int(v):
            raise UsageError(f"{flag}: '{p}' must be a whole number")
        out.append(v)
    if not out:
        raise UsageError(f"{flag} is empty; give e.g. {flag} 1,2,4")
    return out


__all__ = [
    "MIN_ACHIEVED",
    "ConcurrencyDriver",
    "Driver",
    "LiveDriver",
    "QueueDriver",
    "SimDriver",
    "Step",
    "SweepResult",
    "held_rate",
    "parse_values",
    "rate_label",
    "search_max_goodput",
    "shortfall",
    "sweep_values",
    "wilson_interval",
]
