"""Synthesise traces from a WorkloadSpec, and transform real traces for replay.

Every random draw comes from one ``numpy.random.Generator`` seeded by the caller, split
into independent child streams (arrivals, lengths, sessions, mixes) so that, say,
changing the length model does not move any arrival time. Same spec + same seed = the
same trace, byte for byte.

Arrival processes (``spec.arrivals.process``):

* ``constant`` (``rate``): evenly spaced.
* ``poisson`` (``rate``) / ``exponential`` (``scale``): exponential gaps.
* ``gamma``: vLLM's parameterisation ``rate`` and ``burstiness`` (shape = burstiness,
  scale = 1/(rate * burstiness): mean gap 1/rate; burstiness 1 is Poisson, below 1 is
  burstier), or SciPy's ``shape``/``scale`` as ``trace fit`` writes them.
* ``weibull`` (``shape``, ``scale``) and ``lognormal`` (``s``, ``scale``): renewal gaps.
* ``piecewise``: windows, each its own renewal family; ``fill: true`` rescales a window's
  gaps so they tile it exactly (its arrivals span the window, the next gap ends on the
  boundary).
* ``mmpp``: ON/OFF bursts, a two-state Markov-modulated Poisson process: exponential ON
  and OFF periods (``mean_on_s``, ``mean_off_s``) with Poisson rates ``rate_on`` and
  ``rate_off``; the trace starts in ON.
* ``diurnal``: non-homogeneous Poisson with rate
  ``mean_rate * (1 + amplitude * cos(2 pi (t - peak_s) / period_s))`` by thinning
  (Lewis & Shedler); defaults amplitude 0.5, period 86400 s, peak at 0.
* ``ramp``: non-homogeneous Poisson whose rate goes from ``start_rate`` to ``end_rate``
  over ``ramp_s`` seconds, ``shape`` linear (default) or exponential, then holds.

Lengths come from any spec distribution by inverse CDF of a uniform draw, so a Gaussian
copula (``lengths.joint``) only has to correlate the uniforms. They are rounded to whole
tokens, at least 1, and clipped so input + output stay within ``context_limit``.

Sessions: each arrival starts a session with ``turns`` turns separated by
``think_time_s``. Turn j's prompt holds every earlier user message and response plus its
own new message, so it grows; a session ends early when its prompt would reach the
context limit. Prefix hashes are chained per block of ``block_size`` tokens
(``h_i = mix(h_{i-1}, content_i)``): blocks fully inside a shared prefix
(``spec.prefix``) hash the same across sessions of a group, and every block of an earlier
turn reappears in later turns of its session, so prefix caching sees real reuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from scipy import special

from burstbench.errors import InputError, UsageError
from burstbench.traces.schema import Trace, conform
from burstbench.traces.spec import ArrivalSpec, Dist, WindowSpec, WorkloadSpec

MAX_REQUESTS = 50_000_000
MAX_TURNS = 1000
MAX_HASHES = 200_000_000  # 1.6 GB of u64: beyond this, say so instead of running out of memory

# --------------------------------------------------------------------------- distributions


def ppf(dist: Dist, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of a spec distribution at uniforms ``u`` in [0, 1)."""
    f, p = dist.family, dist.params
    u = np.clip(u, 0.0, np.nextafter(1.0, 0.0))
    if f == "constant":
        return np.full(u.shape, float(p["value"]))
    if f == "uniform":
        return p["low"] + u * (p["high"] - p["low"])
    if f == "exponential":
        return -p["scale"] * np.log1p(-u)
    if f == "lognormal":
        return p["scale"] * np.exp(p["s"] * special.ndtri(u))
    if f == "gamma":
        return p["scale"] * special.gammaincinv(p["shape"], u)
    if f == "weibull":
        return p["scale"] * (-np.log1p(-u)) ** (1.0 / p["shape"])
    if f == "beta":
        return special.betaincinv(p["a"], p["b"], u)
    if f == "geometric":
        if p["p"] >= 1:
            return np.ones(u.shape)
        return np.maximum(1.0, np.ceil(np.log1p(-u) / math.log1p(-p["p"])))
    if f == "zipf":
        from burstbench.traces.families import zipf_pmf

        cdf = np.cumsum(zipf_pmf(p["a"], int(p["max"])))
        return (np.searchsorted(cdf, u, side="right") + 1).astype(np.float64).clip(1, int(p["max"]))
    if f == "empirical":
        return np.interp(u, p["probs"], p["quantiles"])
    raise InputError(f"unknown distribution family {f!r}")


def mean_of(dist: Dist) -> float:
    """Mean of a distribution (numerically for the awkward ones)."""
    f, p = dist.family, dist.params
    if f == "constant":
        return float(p["value"])
    if f == "exponential":
        return float(p["scale"])
    if f == "lognormal":
        return p["scale"] * math.exp(p["s"] ** 2 / 2)
    if f == "gamma":
        return p["shape"] * p["scale"]
    if f == "weibull":
        return p["scale"] * math.gamma(1 + 1 / p["shape"])
    return float(ppf(dist, (np.arange(10_000) + 0.5) / 10_000).mean())


def _ints(x: np.ndarray, lo: int = 1) -> np.ndarray:
    return np.maximum(np.rint(x), lo).astype(np.int64)


# --------------------------------------------------------------------------- arrivals


def _renewal(name: str, p: dict[str, Any]) -> tuple[Callable[[np.random.Generator, int], np.ndarray], float]:
    """(gap sampler, mean gap) of a renewal process."""
    if name == "constant":
        g = 1.0 / p["rate"]
        return (lambda rng, n: np.full(n, g)), g
    if name == "poisson":
        g = 1.0 / p["rate"]
        return (lambda rng, n: rng.exponential(g, n)), g
    if name == "exponential":
        g = float(p["scale"])
        return (lambda rng, n: rng.exponential(g, n)), g
    if name == "gamma":
        if "burstiness" in p:
            shape, scale = p["burstiness"], 1.0 / (p["rate"] * p["burstiness"])
        else:
            shape, scale = p["shape"], p["scale"]
        return (lambda rng, n: rng.gamma(shape, scale, n)), shape * scale
    if name == "weibull":
        k, lam = p["shape"], p["scale"]
        return (lambda rng, n: lam * rng.weibull(k, n)), lam * math.gamma(1 + 1 / k)
    if name == "lognormal":
        s, sc = p["s"], p["scale"]
        return (lambda rng, n: sc * np.exp(s * rng.standard_normal(n))), sc * math.exp(s * s / 2)
    raise InputError(f"{name!r} is not a renewal process")


def mean_rate(proc: ArrivalSpec | WindowSpec) -> float:
    """Long-run requests per second of a process."""
    name, p = proc.process, proc.params
    if name in ("constant", "poisson", "exponential", "gamma", "weibull", "lognormal"):
        return 1.0 / _renewal(name, p)[1]
    if name == "mmpp":
        on, off = p["mean_on_s"], p["mean_off_s"]
        return (p["rate_on"] * on + p["rate_off"] * off) / (on + off)
    if name == "diurnal":
        return float(p["mean_rate"])
    if name == "ramp":
        r0, r1 = p["start_rate"], p["end_rate"]
        if p.get("shape", "linear") == "exponential" and r0 != r1:
            return (r1 - r0) / math.log(r1 / r0)
        return (r0 + r1) / 2
    if name == "piecewise":
        ws = proc.windows or []
        total = sum(w.end_s - w.start_s for w in ws)
        return sum(mean_rate(w) * (w.end_s - w.start_s) for w in ws) / total
    raise InputError(f"unknown arrival process {name!r}")


def _scaled_params(name: str, p: dict[str, Any], f: float) -> dict[str, Any]:
    """Parameters of the same process with every rate multiplied by ``f`` (shape kept)."""
    q = dict(p)
    if name in ("constant", "poisson") or (name == "gamma" and "rate" in p):
        q["rate"] = p["rate"] * f
    elif name in ("exponential", "gamma", "weibull", "lognormal"):
        q["scale"] = p["scale"] / f
    elif name == "mmpp":
        q["rate_on"], q["rate_off"] = p["rate_on"] * f, p["rate_off"] * f
    elif name == "diurnal":
        q["mean_rate"] = p["mean_rate"] * f
    elif name == "ramp":
        q["start_rate"], q["end_rate"] = p["start_rate"] * f, p["end_rate"] * f
    return q


def with_rate(proc: ArrivalSpec, rate: float) -> ArrivalSpec:
    """The same process (same burst shape) at a different long-run mean rate."""
    if not rate > 0:
        raise UsageError(f"--rate must be > 0, got {rate}")
    f = rate / mean_rate(proc)
    if proc.process == "piecewise":
        wins = [
            WindowSpec(w.start_s, w.end_s, w.process, _scaled_params(w.process, w.params, f), w.fill)
            for w in proc.windows or []
        ]
        return ArrivalSpec("piecewise", dict(proc.params), wins)
    return ArrivalSpec(proc.process, _scaled_params(proc.process, proc.params, f))


def with_burstiness(proc: ArrivalSpec, burstiness: float) -> ArrivalSpec:
    """A gamma process with vLLM's burstiness changed, at the same mean rate."""
    if proc.process != "gamma":
        raise UsageError(f"--burstiness applies to gamma arrivals; this spec's process is {proc.process!r}")
    if not burstiness > 0:
        raise UsageError(f"--burstiness must be > 0, got {burstiness}")
    return ArrivalSpec("gamma", {"rate": mean_rate(proc), "burstiness": burstiness})


def _renewal_times(
    sampler: Callable[[np.random.Generator, int], np.ndarray],
    mean_gap: float,
    rng: np.random.Generator,
    horizon: float | None,
    n: int | None,
) -> np.ndarray:
    """Arrivals of a renewal process from 0: the first at 0, then cumulative gaps."""
    if n is not None:
        t = np.concatenate([[0.0], np.cumsum(sampler(rng, n - 1))]) if n > 0 else np.empty(0)
        return t[t < horizon] if horizon is not None else t
    assert horizon is not None
    parts, total, count = [], 0.0, 0
    est = horizon / mean_gap
    chunk = int(min(max(1024, est * 1.05 + 6 * math.sqrt(est) + 16), MAX_REQUESTS))
    first = True
    while total < horizon:
        g = sampler(rng, chunk)
        if first:
            g[0] = 0.0  # the first request arrives at 0
            first = False
        c = total + np.cumsum(g)
        parts.append(c)
        total = float(c[-1])
        count += c.size
        if count > MAX_REQUESTS:
            raise UsageError(f"more than {MAX_REQUESTS} requests; lower --duration or --rate")
    t = np.concatenate(parts)
    return t[t < horizon]


def _thinned(
    rate_fn: Callable[[np.ndarray], np.ndarray], lam_max: float, rng: np.random.Generator, t0: float, t1: float
) -> np.ndarray:
    """Non-homogeneous Poisson arrivals in [t0, t1) by thinning a rate-``lam_max`` process."""
    k = rng.poisson(lam_max * (t1 - t0))
    if k > MAX_REQUESTS:
        raise UsageError(f"more than {MAX_REQUESTS} candidate arrivals; lower --duration or --rate")
    t = np.sort(rng.uniform(t0, t1, k))
    keep = rng.random(k) * lam_max < rate_fn(t)
    return t[keep]


def _rate_fn(proc: ArrivalSpec) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    p = proc.params
    if proc.process == "diurnal":
        m, a = p["mean_rate"], p.get("amplitude", 0.5)
        period, peak = p.get("period_s", 86400.0), p.get("peak_s", 0.0)
        return (lambda t: m * (1 + a * np.cos(2 * np.pi * (t - peak) / period))), m * (1 + a)
    r0, r1, span = p["start_rate"], p["end_rate"], p["ramp_s"]
    if p.get("shape", "linear") == "exponential":
        return (lambda t: r0 * (r1 / r0) ** (np.minimum(t, span) / span)), max(r0, r1)
    return (lambda t: r0 + (r1 - r0) * np.minimum(t, span) / span), max(r0, r1)


def _mmpp(p: dict[str, Any], rng: np.random.Generator, t0: float, t1: float, on: bool) -> tuple[np.ndarray, bool, float]:
    """MMPP arrivals in whole ON/OFF periods from t0 until one ends at or after t1.

    Returns the times, the state of the next period and when it starts, so a caller can
    continue seamlessly (periods are never cut at t1; callers trim to their horizon).
    """
    parts, t = [], t0
    periods = 0
    while t < t1:
        mean = p["mean_on_s"] if on else p["mean_off_s"]
        d = rng.exponential(mean)
        end = t + d
        r = p["rate_on"] if on else p["rate_off"]
        if r > 0:
            k = rng.poisson(r * (end - t))
            parts.append(np.sort(rng.uniform(t, end, k)))
        t = t + d
        on = not on
        periods += 1
        if periods > 10_000_000:
            raise UsageError("MMPP needs more than 10 million ON/OFF periods; lengthen mean_on_s/mean_off_s")
    return (np.concatenate(parts) if parts else np.empty(0)), on, t


def _window_times(w: WindowSpec, rng: np.random.Generator) -> np.ndarray:
    sampler, mean_gap = _renewal(w.process, w.params)
    length = w.end_s - w.start_s
    if not w.fill:
        g = _renewal_times(sampler, mean_gap, rng, length, None)
        return w.start_s + g
    # Tile the window: draw gaps until they pass the end, then rescale them to end on it.
    parts, total = [], 0.0
    while total < length:
        g = sampler(rng, max(16, int(1.2 * length / mean_gap) + 16))
        parts.append(g)
        total += float(g.sum())
    g = np.concatenate(parts)
    c = np.cumsum(g)
    m = int(np.searchsorted(c, length, side="left"))  # arrivals strictly inside
    c = c[: m + 1] * (length / c[m])
    return w.start_s + np.concatenate([[0.0], c[:-1]])


def arrival_times(proc: ArrivalSpec, rng: np.random.Generator, *, duration_s: float | None, n: int | None) -> np.ndarray:
    """Arrival times from 0 (sorted), stopping at ``duration_s`` and/or after ``n``."""
    name = proc.process
    if name in ("constant", "poisson", "exponential", "gamma", "weibull", "lognormal"):
        sampler, mean_gap = _renewal(name, proc.params)
        t = _renewal_times(sampler, mean_gap, rng, duration_s, n)
    elif name == "piecewise":
        wins = proc.windows or []
        end = wins[-1].end_s if duration_s is None else min(duration_s, wins[-1].end_s)
        t = np.concatenate([_window_times(w, rng) for w in wins if w.start_s < end])
        t = t[t < end]
    else:
        rate = mean_rate(proc)
        horizon = duration_s if duration_s is not None else max(1.0, 1.2 * (n or 0) / rate)
        parts, t0, on, count = [], 0.0, True, 0
        while True:
            if name == "mmpp":
                seg, on, t0_next = _mmpp(proc.params, rng, t0, t0 + horizon, on)
            else:
                fn, lam = _rate_fn(proc)
                seg = _thinned(fn, lam, rng, t0, t0 + horizon)
                t0_next = t0 + horizon
            parts.append(seg)
            count += seg.size
            t0 = t0_next
            if duration_s is not None or (n is not None and count >= n):
                break
            if count > MAX_REQUESTS or t0 > 1e12:
                raise UsageError("the process produced too few arrivals; check its rates")
        t = np.concatenate(parts)
        if duration_s is not None:
            t = t[t < duration_s]
    if n is not None:
        t = t[:n]
    return t


# --------------------------------------------------------------------------- lengths


def _uniform_pair(spec: WorkloadSpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    j = spec.lengths.joint
    if j.method == "gaussian-copula" and j.rho:
        z1 = rng.standard_normal(n)
        z2 = j.rho * z1 + math.sqrt(max(0.0, 1 - j.rho * j.rho)) * rng.standard_normal(n)
        return special.ndtr(z1), special.ndtr(z2)
    return rng.random(n), rng.random(n)


def _clip_context(inp: np.ndarray, out: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if limit is None:
        return inp, out
    inp = np.minimum(inp, limit - 1)
    return inp, np.minimum(out, limit - inp)


# --------------------------------------------------------------------------- hashing


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD_INT = 0x9E3779B97F4A7C15


def _u64(x: int) -> np.uint64:
    """A Python int wrapped to 64 bits (NumPy warns on scalar overflow; arrays wrap)."""
    return np.uint64(x & 0xFFFFFFFFFFFFFFFF)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fast, well-spread 64-bit mixing function."""
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def chained_hashes(keys: np.ndarray, shared_blocks: np.ndarray, group_keys: np.ndarray, nblocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chained block hashes of one token stream per session.

    Block i of session s has content key ``group_keys[s]`` while it lies inside the shared
    prefix (``i < shared_blocks[s]``), else ``keys[s]``; ``h_i = mix(h_{i-1} ^ mix(key ^ i))``.
    Returns (flat hashes, start offset per session). Vectorised across sessions, looping
    over block positions only.
    """
    nblocks = nblocks.astype(np.int64)
    offs = np.zeros(nblocks.size, dtype=np.int64)
    np.cumsum(nblocks[:-1], out=offs[1:])
    out = np.empty(int(nblocks.sum()), dtype=np.uint64)
    order = np.argsort(-nblocks, kind="stable")
    sorted_n = nblocks[order]
    prev = np.zeros(order.size, dtype=np.uint64)
    for i in range(int(sorted_n[0]) if sorted_n.size else 0):
        active = int(np.searchsorted(-sorted_n, -i, side="left"))  # sessions with > i blocks
        s = order[:active]
        key = np.where(i < shared_blocks[s], group_keys[s], keys[s])
        content = _mix(key ^ _u64(i * _GOLD_INT))
        h = _mix(prev[:active] ^ content)
        out[offs[s] + i] = h
        prev[:active] = h
    return out, offs


def _hash_lists(flat: np.ndarray, offs: np.ndarray, session: np.ndarray, nblk: np.ndarray) -> pl.Series:
    import pyarrow as pa

    nblk = nblk.astype(np.int64)
    total = int(nblk.sum())
    list_offs = np.zeros(nblk.size + 1, dtype=np.int64)
    np.cumsum(nblk, out=list_offs[1:])
    starts = offs[session]
    idx = np.repeat(starts - list_offs[:-1], nblk) + np.arange(total, dtype=np.int64)
    arr = pa.LargeListArray.from_arrays(pa.array(list_offs), pa.array(flat[idx], type=pa.uint64()))
    return pl.Series("prefix_hashes", pl.from_arrow(arr)).cast(pl.List(pl.UInt64()))


# --------------------------------------------------------------------------- synthesise


def synthesise(
    spec: WorkloadSpec,
    *,
    seed: int = 0,
    duration_s: float | None = None,
    requests: int | None = None,
    rate: float | None = None,
    burstiness: float | None = None,
    label: str | None = None,
) -> Trace:
    """A Trace drawn from ``spec`` (see module doc); deterministic for a given seed.

    ``label`` (a preset name or the spec's file) is recorded in the trace metadata.

    ``duration_s``/``requests`` default to the spec's; at least one must be set. ``rate``
    rescales the arrival process to that mean rate keeping its burst shape (with sessions,
    it is the session-start rate).
    """
    duration_s = duration_s if duration_s is not None else (None if requests is not None else spec.duration_s)
    requests = requests if requests is not None else (None if duration_s is not None else spec.requests)
    if duration_s is None and requests is None:
        raise UsageError("say how long the trace is: --duration S or --requests N (or set duration_s in the spec)")
    if duration_s is not None and not duration_s > 0:
        raise UsageError(f"--duration must be > 0, got {duration_s}")
    if requests is not None and not 0 < requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be between 1 and {MAX_REQUESTS}, got {requests}")
    proc = spec.arrivals
    if burstiness is not None:
        proc = with_burstiness(proc, burstiness)
    if rate is not None:
        proc = with_rate(proc, rate)
    ss = np.random.SeedSequence(seed)
    r_arr, r_len, r_sess, r_mix, r_pre, r_reason = (np.random.default_rng(s) for s in ss.spawn(6))

    starts = arrival_times(proc, r_arr, duration_s=duration_s, n=requests)
    ns = starts.size
    limit = spec.context_limit
    sessions = spec.sessions
    if sessions is not None:
        turns = np.minimum(_ints(ppf(sessions.turns, r_sess.random(ns))), MAX_TURNS)
    else:
        turns = np.ones(ns, dtype=np.int64)
    total = int(turns.sum())
    sess = np.repeat(np.arange(ns), turns)
    first = np.zeros(ns + 1, dtype=np.int64)
    np.cumsum(turns, out=first[1:])
    pos = np.arange(total) - first[sess]  # 0-based turn index
    # Turn arrival times: session start + cumulative think times.
    if sessions is not None:
        think = ppf(sessions.think_time_s, r_sess.random(total))
        think[pos == 0] = 0.0
        cum = np.cumsum(think)
        arrival = starts[sess] + cum - cum[first[:-1]][sess]
    else:
        arrival = starts[sess]
    u_in, u_out = _uniform_pair(spec, r_len, total)
    new = _ints(ppf(spec.lengths.input, u_in))
    out = _ints(ppf(spec.lengths.output, u_out))
    # Shared prefixes: each session joins a group with probability ``share``.
    shared = np.zeros(ns, dtype=np.int64)
    group = np.full(ns, -1, dtype=np.int64)
    if spec.prefix is not None:
        pre = spec.prefix
        glen = _ints(ppf(pre.tokens, r_pre.random(pre.groups)), 0)
        joined = r_pre.random(ns) < pre.share
        group = np.where(joined, r_pre.integers(0, pre.groups, ns), -1)
        shared = np.where(joined, glen[np.maximum(group, 0)], 0)
    # Prompt of turn j = shared prefix + all earlier (message + response) + this message.
    contrib = new + out
    csum = np.cumsum(contrib)
    before = csum - contrib - (csum - contrib)[first[:-1]][sess]
    inp = shared[sess] + before + new
    keep = np.ones(total, dtype=bool)
    if limit is not None:
        if sessions is not None:
            # A session ends when its prompt would reach the context limit (prompts grow).
            over = (inp >= limit).astype(np.int64)
            keep = (np.cumsum(over) - np.cumsum(over)[first[:-1]][sess] + over[first[:-1]][sess]) == 0
            keep[pos == 0] = True
        inp, out = _clip_context(inp, out, limit)
    if duration_s is not None:
        keep &= arrival < duration_s
    cols: dict[str, Any] = {
        "arrival_s": arrival,
        "input_tokens": inp,
        "output_tokens": out,
    }
    if sessions is not None:
        cols["session_id"] = sess
        cols["turn"] = (pos + 1).astype(np.int32)
    bs = spec.block_size
    want_hashes = sessions is not None or spec.prefix is not None
    if spec.tenants:
        names, w = zip(*spec.tenants.items(), strict=True)
        cols["tenant"] = np.asarray(names, dtype=object)[r_mix.choice(len(names), ns, p=np.asarray(w) / sum(w))][sess]
    if spec.models:
        names, w = zip(*spec.models.items(), strict=True)
        cols["model"] = np.asarray(names, dtype=object)[r_mix.choice(len(names), ns, p=np.asarray(w) / sum(w))][sess]
    if spec.reasoning is not None:
        cols["reasoning_share"] = np.clip(ppf(spec.reasoning.share, r_reason.random(total)), 0.0, 1.0)
    idx = np.flatnonzero(keep)
    df = pl.DataFrame({k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
    if sessions is not None:
        df = df.with_columns(pl.format("s{}", pl.col("session_id")).alias("session_id"))
    if want_hashes and idx.size:
        ksess = r_pre.integers(0, 2**63, ns, dtype=np.int64).astype(np.uint64)
        gkeys = _mix(np.arange(max(int(group.max()) + 1, 1), dtype=np.uint64) + _u64(seed * _GOLD_INT))
        nblk = inp[idx] // bs
        if int(nblk.sum()) > MAX_HASHES:
            raise UsageError(
                f"prefix hashes would need {int(nblk.sum()):,} block hashes (over {MAX_HASHES:,}); "
                "synthesise fewer requests or raise block_size in the spec"
            )
        smax = np.zeros(ns, dtype=np.int64)
        np.maximum.at(smax, sess[idx], nblk)
        flat, offs = chained_hashes(ksess, shared // bs, gkeys[np.maximum(group, 0)], smax)
        df = df.with_columns(_hash_lists(flat, offs, sess[idx], nblk))
    df = df.sort("arrival_s", maintain_order=True)
    if requests is not None:
        df = df.head(requests)
    if df.height:
        df = df.with_columns(pl.col("arrival_s") - pl.col("arrival_s").min())
    meta: dict[str, Any] = {
        "source_format": "synthetic",
        "generator": "burstbench.traces.synth",
        "seed": seed,
        "spec": spec.to_dict(),
        "duration_s": duration_s,
        "requests": requests,
        "rate": rate,
        "burstiness": burstiness,
    }
    if label:
        from burstbench.traces.presets import PRESETS

        meta["preset" if label in PRESETS else "spec_file"] = label
    if want_hashes:
        meta["block_size"] = bs
    if spec.reasoning is not None:
        meta["reasoning_share_column"] = "reasoning_share: share of output_tokens that is reasoning"
    return Trace(conform(df), meta)


# --------------------------------------------------------------------------- replay


def replay(
    trace: Trace,
    *,
    time_scale: float | None = None,
    rate: float | None = None,
    window: tuple[float, float] | None = None,
    model: str | None = None,
    tenant: str | None = None,
    sample: float | None = None,
    seed: int = 0,
) -> Trace:
    """Transform a real trace for replay, in this order: filter, window, sample, time scale, rate.

    * ``model`` / ``tenant``: keep only those rows.
    * ``window=(a, b)``: keep arrivals in [a, b) seconds of the (filtered) trace.
    * ``sample``: a fraction in (0, 1) keeps each request independently with that
      probability (seeded); a whole number >= 1 keeps that many, chosen at random.
    * ``time_scale``: multiply every arrival time (2 = half as fast, 0.5 = twice as fast).
    * ``rate``: rescale times so the mean rate ((n-1)/span) is ``rate``, keeping the
      burst shape (gap CV and relative timing are unchanged).
    The result is rebased to 0 and its metadata records the transforms.
    """
    df = trace.df
    applied: dict[str, Any] = {}
    for col, val in (("model", model), ("tenant", tenant)):
        if val is not None:
            if col not in df.columns or df[col].null_count() == df.height:
                raise InputError(f"trace has no {col} column to filter on", field=col)
            df = df.filter(pl.col(col) == val)
            applied[col] = val
            if df.height == 0:
                raise InputError(f"no request has {col} == {val!r}", field=col)
    if df.height:
        df = df.with_columns(pl.col("arrival_s") - pl.col("arrival_s").min())
    if window is not None:
        a, b = window
        if not (0 <= a < b):
            raise UsageError(f"--window must be START:END with 0 <= START < END, got {a}:{b}")
        df = df.filter((pl.col("arrival_s") >= a) & (pl.col("arrival_s") < b))
        applied["window"] = [a, b]
    if sample is not None:
        rng = np.random.default_rng(seed)
        if 0 < sample < 1:
            df = df.filter(pl.Series(rng.random(df.height) < sample))
        elif sample >= 1 and float(sample).is_integer():
            k = min(int(sample), df.height)
            pick = np.sort(rng.choice(df.height, k, replace=False))
            df = df[pick]
        else:
            raise UsageError(f"--sample must be a fraction in (0, 1) or a whole count >= 1, got {sample}")
        applied["sample"] = sample
        applied["seed"] = seed
    if df.height == 0:
        raise InputError("no requests left after the replay filters; widen the window or filters")
    df = df.with_columns(pl.col("arrival_s") - pl.col("arrival_s").min())
    factor = 1.0
    if time_scale is not None:
        if not time_scale > 0:
            raise UsageError(f"--time-scale must be > 0, got {time_scale}")
        df = df.with_columns(pl.col("arrival_s") * time_scale)
        applied["time_scale"] = time_scale
        factor *= time_scale
    if rate is not None:
        if not rate > 0:
            raise UsageError(f"--rate must be > 0, got {rate}")
        span = float(df["arrival_s"].max())
        if df.height < 2 or span <= 0:
            raise InputError("need at least two distinct arrival times to rescale the rate")
        cur = (df.height - 1) / span
        df = df.with_columns(pl.col("arrival_s") * (cur / rate))
        applied["rate"] = rate
        factor *= cur / rate
    meta = dict(trace.meta)
    meta["replay"] = applied
    if factor != 1.0 and meta.get("timestamp_resolution_s"):
        # The timestamp grid stretches with the times; fits break ties on the new grid.
        meta["timestamp_resolution_s"] = float(meta["timestamp_resolution_s"]) * factor
    return Trace(conform(df), meta)
