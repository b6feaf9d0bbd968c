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


def _scaled(trace: Any, rate: float) -> Any:
    """The trace's arrivals rescaled to mean ``rate``, burst shape kept (traces.synth.replay)."""
    from burstbench.traces.synth import replay

    return replay(trace, rate=rate)


@dataclass
class LiveDriver:
    """Replays ``trace`` at each rate against a live endpoint with the load generator."""

    trace: Any
    out: Path
    url: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    def _run(self, trace: Any, label: str, **flags: Any) -> str:
        from burstbench.loadgen.runner import run_scenario
        from burstbench.loadgen.scenario import build_scenario

        scenario = build_scenario(None, url=self.url, **{**self.overrides, **flags})
        return run_scenario(trace, scenario, self.out, label=label, progress=self.progress)

    def run(self, rate: float, *, label: str) -> str:
        return self._run(_scaled(self.trace, rate), label, mode="trace")

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

    def run(self, rate: float, *, label: str) -> str:
        from burstbench.backends.reference.simulator import simulate

        res = simulate(_scaled(self.trace, rate), model=self.model, hardware=self.hardware, tp=self.tp,
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
    passed: bool | None = None


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


def measure_step(out: Path, run_id: str, value: float, label: str, slo: Mapping[str, float] | None,
                 target: float | None) -> Step:
    """The headline numbers of one sweep step, and its attainment when an SLO is set."""
    con = open_store(out)
    try:
        s = summarize(con, run_id)
        step = Step(value=value, run_id=run_id, label=label, requests=s["requests"], completed=s["completed"],
                    request_throughput=s["request_throughput"], ttft_p99_ms=s["ttft_ms"]["p99"],
                    tpot_p99_ms=s["tpot_ms"]["p99"], e2el_p99_ms=s["e2el_ms"]["p99"])
        if slo:
            g = goodput(con, run_id, slo)
            step.good = g["good_requests"]
            step.slo_attainment = g["slo_attainment"]
            step.attainment_ci95 = g["slo_attainment_ci95"]
            step.request_goodput = g["request_goodput"]
            if target is not None and step.slo_attainment is not None:
                step.passed = step.slo_attainment >= target
        return step
    finally:
        con.close()


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
        step = measure_step(out, rid, float(v), label, slo, target if slo else None)
        steps.append(step)
        if on_step:
            on_step(step)
    res = SweepResult(mode=kind, steps=steps, slo_ms={k: v * 1000 for k, v in slo.items()} if slo else None,
                      target=target if slo else None)
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
    "ConcurrencyDriver", "Driver", "LiveDriver", "QueueDriver", "SimDriver", "Step", "SweepResult",
    "parse_values", "rate_label", "search_max_goodput", "sweep_values", "wilson_interval",
]
