"""The twin's fast virtual-time runs: latencies in memory, colocated or disaggregated.

Why not ``backends.reference.simulator.simulate``: that writes every token to DuckDB,
which is right for ``simulate`` but too slow for a calibration that runs the same
schedule dozens of times, or a plan that tries dozens of fleets. This module drives the
*same* ``EngineCore`` (scheduler, KV cache, cost model) with the same event loop, and
keeps only what the twin needs per request: first and last token times.

Disaggregated prefill/decode (DistServe) is a composition of two pools of that engine:

1. the **prefill pool** runs every request with one output token (its prefill; the
   first token comes out of the prefill instance, as in DistServe and vLLM's P/D);
2. the request's KV cache moves to a decode instance: ``input_tokens × KV bytes per
   token / link bandwidth`` (+ link latency);
3. the **decode pool** admits it with the prompt already computed: the engine sees a
   "prefill" of ``prompt + 1`` tokens that costs what one decode step of that context
   costs (``_MigratedCost``), then decodes the remaining ``output − 1`` tokens.

The prefill pool does not depend on the decode pool (no back-pressure: DistServe
assumes the decode pool keeps up, and the prefill instance's KV is freed when the
transfer starts), so the two pools run one after the other, each exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from burstbench.backends.reference import simulator
from burstbench.backends.reference.engine import REJECTED, EngineCore
from burstbench.backends.reference.jitter import StepJitter, check_table
from burstbench.backends.reference.router import Router
from burstbench.errors import UsageError


@dataclass(frozen=True)
class Sched:
    """Scheduler limits of every instance (vLLM's names and defaults)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_waiting: int | None = None
    router: str = "round_robin"
    # a random time added to every iteration: ``(probability, seconds)`` pairs of its inverse
    # CDF (``backends.reference.jitter``; fitted by ``twin.jitter``); empty: none. Each
    # instance draws from its own stream, seeded from ``jitter_seed``, so a run repeats.
    step_jitter: tuple[tuple[float, float], ...] = ()
    jitter_seed: int = 0

    def __post_init__(self) -> None:  # a twin file gives lists; the fitter hashes a Sched
        if self.step_jitter:
            object.__setattr__(self, "step_jitter", check_table(self.step_jitter))
        else:
            object.__setattr__(self, "step_jitter", ())

    def jitter(self, instance: int = 0) -> StepJitter | None:
        """Instance ``instance``'s jitter stream, or None when the twin has none."""
        return StepJitter(self.step_jitter, self.jitter_seed + instance) if self.step_jitter else None


@dataclass
class Workload:
    """A schedule as arrays: arrival (s), prompt and output tokens per request."""

    arrival: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        self.arrival = np.asarray(self.arrival, dtype=np.float64)
        self.input_tokens = np.asarray(self.input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(self.output_tokens, dtype=np.int64)
        n = len(self.arrival)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise UsageError("arrival, input_tokens and output_tokens must have the same length")
        if n and (np.diff(self.arrival) < 0).any():
            order = np.argsort(self.arrival, kind="stable")
            self.arrival, self.input_tokens, self.output_tokens = (
                self.arrival[order], self.input_tokens[order], self.output_tokens[order])

    @classmethod
    def from_trace(cls, trace: Any) -> Workload:
        df = trace.df
        return cls(
            df["arrival_s"].to_numpy(),
            df["input_tokens"].fill_null(0).to_numpy(),
            df["output_tokens"].fill_null(0).to_numpy(),
        )

    def __len__(self) -> int:
        return len(self.arrival)

    def head(self, n: int) -> Workload:
        return Workload(self.arrival[:n], self.input_tokens[:n], self.output_tokens[:n])

    def scaled(self, rate_scale: float) -> Workload:
        """Arrivals ``rate_scale`` times as dense (2 = twice the request rate)."""
        if not rate_scale > 0:
            raise UsageError(f"--rate-scale must be positive, got {rate_scale}")
        return Workload(self.arrival / rate_scale, self.input_tokens, self.output_tokens)

    def at_rate(self, rate: float) -> Workload:
        """Arrivals rescaled so the mean rate ((n-1)/span) is ``rate``, shape kept."""
        span = float(self.arrival[-1] - self.arrival[0]) if len(self) else 0.0
        if len(self) < 2 or span <= 0:
            raise UsageError("need at least two distinct arrival times to rescale the rate")
        return Workload(self.arrival[0] + (self.arrival - self.arrival[0]) * ((len(self) - 1) / span / rate),
                        self.input_tokens, self.output_tokens)


@dataclass
class Latencies:
    """Per request, seconds; NaN where the request did not complete (``ok`` False)."""

    ttft: np.ndarray
    e2el: np.ndarray
    output_tokens: np.ndarray
    ok: np.ndarray
    status: list[str] = field(default_factory=list)
    arrival: np.ndarray | None = None  # the send times, where the twin chose them (closed loops)
    # gaps between consecutive tokens (s) of completed requests, pooled, and whose each is;
    # only where asked for (``itl=True``): a calibration's loss does not use them
    itl: np.ndarray | None = None
    itl_of: np.ndarray | None = None

    @property
    def tpot(self) -> np.ndarray:
        """(E2EL − TTFT)/(out − 1) where out > 1, else NaN (DESIGN section 4)."""
        out = self.output_tokens.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(out > 1, (self.e2el - self.ttft) / (out - 1), np.nan)

    def attainment(self, slo: dict[str, float]) -> float:
        """Good requests / all requests (failures count against), as ``analysis.slo``."""
        n = len(self.ok)
        if n == 0:
            return 0.0
        good = self.ok.copy()
        for metric, limit in slo.items():
            if metric == "ttft":
                good &= np.nan_to_num(self.ttft, nan=np.inf) <= limit
            elif metric == "e2el":
                good &= np.nan_to_num(self.e2el, nan=np.inf) <= limit
            elif metric == "tpot":  # <= 1 output token: TPOT counts as 0, as vLLM
                good &= np.nan_to_num(self.tpot, nan=0.0) <= limit
            else:
                raise UsageError(f"the twin evaluates SLOs on ttft, tpot and e2el only, not '{metric}'")
        return float(good.sum() / n)

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, dict[str, float | None]]:
        """Milliseconds per metric, over completed requests (linear interpolation)."""
        out: dict[str, dict[str, float | None]] = {}
        metrics = [("ttft_ms", self.ttft), ("tpot_ms", self.tpot), ("e2el_ms", self.e2el)]
        if self.itl is not None:  # in the usual order: TTFT, TPOT, ITL, E2EL
            metrics.insert(2, ("itl_ms", self.itl))
        for name, arr in metrics:
            x = arr[np.isfinite(arr)]
            out[name] = {f"p{q:g}": (float(np.percentile(x, q)) * 1000 if x.size else None) for q in qs}
        return out


def make_engine(cost: Any, num_blocks: int, s: Sched, *, max_tokens: int | None = None, max_context: int | None = None,
                instance: int = 0) -> EngineCore:
    """One instance; ``instance`` numbers it within its pool (its own jitter stream)."""
    return EngineCore(
        cost, num_blocks, block_size=s.block_size, max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=max_tokens or s.max_num_batched_tokens, enable_prefix_caching=False,
        max_waiting=s.max_waiting, policy="fcfs", max_context=max_context, jitter=s.jitter(instance),
    )


def kv_blocks(cost: Any, s: Sched) -> int:
    """KV blocks per instance as vLLM sizes them (+1: vLLM's count includes the null block)."""
    return cost.kv_cache_blocks(
        block_size=s.block_size, gpu_memory_utilization=s.gpu_memory_utilization,
        max_num_batched_tokens=s.max_num_batched_tokens, max_num_seqs=s.max_num_seqs,
    ) + 1


def run_pool(
    engines: list[EngineCore], router: Router, arrival: np.ndarray, prompt: np.ndarray, out: np.ndarray,
    closed: tuple[int, float] | None = None, gaps: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Requests through a pool of engines in virtual time (the simulator's own event loop).

    Returns arrival, first-token time, last-token time (NaN when not done) and a status
    code per request: 0 ok, 1 invalid (HTTP 400), 2 rejected (503). The arrivals are the
    given ones, or for a ``closed`` loop ``(users, delay_s)`` the ones the loop chose.
    ``gaps``: a list that receives ``PoolRun.token_gaps()`` (the inter-token gaps).
    """
    run = simulator.run_pool(engines, router, arrival, prompt, out, closed=closed)
    if gaps is not None:
        gaps.extend(run.token_gaps())
    first, last = run.token_bounds()
    code = np.zeros(len(arrival), dtype=np.int8)
    for i, s in enumerate(run.seqs):
        if s is None:
            code[i] = 1
        elif s.state == REJECTED:
            code[i] = 2
    sent = np.asarray(run.arrivals, dtype=np.float64) if run.arrivals is not None else np.asarray(arrival)
    return sent, first, last, code


_STATUS = {0: "ok", 1: "error", 2: "error"}


def colocated(work: Workload, cost: Any, sched: Sched, replicas: int = 1, *, num_blocks: int | None = None,
              frontend_s: float = 0.0, closed: tuple[int, float] | None = None, itl: bool = False) -> Latencies:
    """``replicas`` identical instances behind the router (the usual deployment).

    ``frontend_s``: fixed time outside the engine added to every token's arrival (HTTP,
    API server, tokenisation, network): what a client measures beyond the engine.
    ``closed``: ``(users, delay_s)`` of a closed loop instead of ``work``'s arrivals: a
    user sends again ``delay_s`` after the engine ended its answer (``closed_loop``).
    ``itl``: also keep every gap between tokens (``Latencies.itl``).
    """
    router = Router(sched.router, replicas)  # first: it refuses a replica count beyond the limit
    nb = num_blocks or kv_blocks(cost, sched)
    engines = [make_engine(cost, nb, sched, max_context=cost.model.max_context, instance=i) for i in range(replicas)]
    gaps: list | None = [] if itl else None
    sent, first, last, code = run_pool(engines, router, work.arrival, work.input_tokens, work.output_tokens, closed,
                                       gaps)
    return Latencies(first - sent + frontend_s, last - sent + frontend_s, work.output_tokens,
                     code == 0, [_STATUS[int(c)] for c in code], sent if closed is not None else None,
                     *(gaps or (None, None)))


def closed_loop(work: Workload, users: int, turnaround_s: float, cost: Any, sched: Sched, replicas: int = 1, *,
                frontend_s: float = 0.0, seen_frontend_s: float | None = None,
                num_blocks: int | None = None, itl: bool = False) -> Latencies:
    """``work`` sent by ``users`` closed-loop clients: each sends its next request (in
    ``work``'s order) ``turnaround_s`` after it saw its last one end. The clients see an
    answer end ``seen_frontend_s`` (default ``frontend_s``, which is added to every
    latency) after the engine ended it; a calibration profiles the frontend from the
    latencies, so it simulates them without it and lets the clients wait its best guess.

    The first ``users`` requests go at their given arrival times, every later one when a
    user is free, in the simulator's own event loop (``simulator.ClosedLoop``). Why not
    replay a closed run's recorded send times: they are the real engine's completions, so
    a twin a little slower or faster than the engine sends the next request into the
    wrong step. Against vLLM's CPU build (2 users, prompts of 1200-2400 tokens with
    4-16-token answers) a replay put the next prompt's prefill on top of short answers the
    engine had finished alone: simulated TPOT p50 +1140%, E2EL p50 +157%; the closed loop
    +55% and +3% with the same coefficients.
    """
    return colocated(work, cost, sched, replicas, num_blocks=num_blocks, frontend_s=frontend_s,
                     closed=(users, turnaround_s + (frontend_s if seen_frontend_s is None else seen_frontend_s)),
                     itl=itl)


class _MigratedCost:
    """A decode instance's cost for a request whose KV arrived from a prefill instance.

    The engine schedules the migrated request as a "prefill" of its whole context
    (prompt + first token); no prefill arithmetic happens, only the decode step that
    produces its second token. So the step costs a decode batch of
    ``decodes + migrated`` sequences over their contexts.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model = inner.model
        self.hardware = inner.hardware
        self.tp = inner.tp
        self.kv_bytes_per_token = inner.kv_bytes_per_token

    def step_time_sums(self, *, prefill_tokens: int = 0, prefill_seqs: int = 0, prefill_pairs: float = 0.0,
                       prefill_kv_tokens: int = 0, decode_seqs: int = 0, decode_context_sum: int = 0) -> float:
        return self.inner.step_time_sums(
            decode_seqs=decode_seqs + prefill_seqs,
            decode_context_sum=decode_context_sum + prefill_kv_tokens - prefill_seqs,
        )

    def step_time(self, prefill: Any, decode: Any) -> float:
        return self.inner.step_time([], [*decode, *(c + n - 1 for n, c in prefill)])

    def kv_cache_blocks(self, **kw: Any) -> int:
        return self.inner.kv_cache_blocks(**kw)


def kv_transfer_s(cost: Any, input_tokens: np.ndarray, link_bandwidth: float | None = None) -> np.ndarray:
    """Seconds to move each request's KV cache: tokens × bytes/token / bandwidth + latency.

    Each of the ``tp`` ranks sends its shard over its own link, so the time is the
    per-rank bytes over one link's bandwidth (the hardware's ``link_bandwidth`` unless
    given: NVLink within a node; pass the NIC's bandwidth for cross-node pools).
    """
    bw = link_bandwidth or cost.hardware.link_bandwidth
    if not bw > 0:
        raise UsageError("the KV transfer bandwidth must be positive")
    return input_tokens.astype(np.float64) * cost.kv_bytes_per_token / bw + cost.hardware.link_latency_s


def disaggregated(
    work: Workload, prefill_cost: Any, decode_cost: Any, sched: Sched, prefill: int, decode: int,
    *, link_bandwidth: float | None = None, frontend_s: float = 0.0,
) -> Latencies:
    """DistServe's layout: ``prefill`` prefill instances feed ``decode`` decode instances."""
    if prefill < 1 or decode < 1:
        raise UsageError(f"--prefill and --decode must be >= 1 instances, got {prefill} and {decode}")
    nb_p = kv_blocks(prefill_cost, sched)
    p_eng = [make_engine(prefill_cost, nb_p, sched, max_context=prefill_cost.model.max_context, instance=i)
             for i in range(prefill)]
    _, first, _, code = run_pool(p_eng, Router(sched.router, prefill), work.arrival, work.input_tokens,
                              np.minimum(work.output_tokens, 1))
    last = first.copy()
    more = (code == 0) & (work.output_tokens > 1)
    idx = np.flatnonzero(more)
    if idx.size:
        ready = first[idx] + kv_transfer_s(decode_cost, work.input_tokens[idx], link_bandwidth)
        order = np.argsort(ready, kind="stable")
        idx, ready = idx[order], ready[order]
        mc = _MigratedCost(decode_cost)
        nb_d = kv_blocks(decode_cost, sched)
        # the whole migrated context is admitted in one step (its KV is already there)
        budget = sched.max_num_batched_tokens + int(work.input_tokens[idx].max()) + 1
        d_eng = [make_engine(mc, nb_d, sched, max_tokens=budget, max_context=decode_cost.model.max_context,
                             instance=prefill + i) for i in range(decode)]
        _, _, d_last, d_code = run_pool(d_eng, Router(sched.router, decode), ready,
                                     work.input_tokens[idx] + 1, work.output_tokens[idx] - 1)
        last[idx] = d_last
        code[idx] = np.where(d_code == 0, 0, d_code)
    okm = code == 0
    first = np.where(okm, first, np.nan)
    last = np.where(okm, last, np.nan)
    return Latencies(first - work.arrival + frontend_s, last - work.arrival + frontend_s, work.output_tokens, okm,
                     [_STATUS[int(c)] for c in code])
