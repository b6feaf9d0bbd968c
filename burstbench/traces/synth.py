"""Synthesise traces from a WorkloadSpec, and transform real traces for replay.

Every random draw comes from one ``numpy.random.Generator`` seeded by the caller, split
into independent child streams (arrivals, lengths, sessions, mixes) so that, say,
changing the length model does not move any arrival time. Same spec + same seed = the
same trace, byte for byte.

Arrival processes (``spec.arrivals.process``) are drawn in ``processes``.

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
from typing import Any

import numpy as np
import polars as pl
from scipy import special

from burstbench.errors import InputError, UsageError
from burstbench.traces.processes import MAX_REQUESTS, arrival_times, ppf, with_burstiness, with_rate
from burstbench.traces.schema import Trace, conform
from burstbench.traces.spec import WorkloadSpec

MAX_TURNS = 1000
MAX_HASHES = 200_000_000  # 1.6 GB of u64: beyond this, say so instead of running out of memory

# --------------------------------------------------------------------------- lengths


def _ints(x: np.ndarray, lo: int = 1) -> np.ndarray:
    return np.maximum(np.rint(x), lo).astype(np.int64)


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
