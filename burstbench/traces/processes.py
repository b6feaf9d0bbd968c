"""Distributions and arrival processes of a WorkloadSpec: inverse CDFs, mean rates, and
arrival times drawn from a seeded generator.

Apart from ``synth`` (lengths, sessions, prefix hashes, the trace) because presets and
reports need the processes without the synthesiser: ``presets`` rescales a preset's rate
and burstiness (``with_rate``, ``with_burstiness``), the report draws fitted curves
through ``ppf``.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from burstbench.errors import InputError, UsageError
from burstbench.traces.spec import ArrivalSpec, Dist, WindowSpec

MAX_REQUESTS = 50_000_000  # arrivals one draw may make: a spec's rate x duration is bounded before allocating

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
