"""``plan``: the cheapest fleet that meets an SLO attainment target at the trace's peak.

The load to plan for is the trace's busiest window (``traces.stats.characterise``,
per-window rate): its own requests, with their real burst shape and lengths, when the
window holds enough of them; else the whole trace rescaled to the peak rate. Every
candidate fleet runs that load in virtual time; its attainment is the evidence.

Search, per instance type and TP degree the model fits on: the fewest instances that
meet the target (doubling, then bisection: attainment rises with instances). Then
mixes of two types: for each pair, each count of the first type below its own minimum,
the fewest of the second that meet the target, kept only when cheaper than the best
found so far (a mixed fleet is routed least-outstanding, as a load-aware router would).
The answer is the cheapest fleet that met the target; every evaluated candidate, met
or not, is in ``candidates``.

Prices are inputs (``--price TYPE=USD_PER_GPU_HOUR``); ``EXAMPLE_PRICES`` are examples
only (see the comment there: two inside published on-demand ranges, two assumed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from burstbench.errors import InputError, UsageError
from burstbench.twin.deploy import Deployment, Group, fits
from burstbench.twin.vsim import Sched, Workload

EXAMPLE_PRICES: dict[str, float] = {
    # USD per GPU-hour, EXAMPLES ONLY, not quotes. A100 80GB SXM and H100 SXM are inside
    # the typical on-demand ranges listed for early 2026 ($1.49-2.49 and $2.49-3.99 per
    # GPU-hour across Lambda, CoreWeave, RunPod, ...; pricegpu.pages.dev/blog/
    # h100-vs-a100-cloud-price). L40S and H200 are assumed round figures for the
    # example (no source checked here). Pass your own with --price.
    "a100-80g": 1.79,
    "h100-sxm": 2.99,
    "h200": 3.79,
    "l40s": 0.86,
}


def parse_prices(text: str | None, types: Sequence[str]) -> dict[str, float]:
    """``"a100-80g=1.8,h100-sxm=3"`` -> {type: USD/GPU-hour}; every type needs a price."""
    prices: dict[str, float] = {}
    if text:
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            try:
                price = float(value)
            except ValueError:
                price = math.nan
            if not sep or not name or not (price > 0 and math.isfinite(price)):
                raise UsageError(f"--price part '{part.strip()}' is not TYPE=USD_PER_GPU_HOUR, e.g. a100-80g=1.8")
            prices[name] = price
    unknown = set(prices) - {t.lower() for t in types}
    if unknown:
        raise UsageError(f"--price names {', '.join(sorted(unknown))}, not in --hardware {','.join(types)}")
    out = {}
    for t in types:
        if t.lower() in prices:
            out[t] = prices[t.lower()]
        elif t.lower() in EXAMPLE_PRICES and not text:
            out[t] = EXAMPLE_PRICES[t.lower()]
        else:
            raise UsageError(f"no price for '{t}'; give --price {t}=USD_PER_GPU_HOUR")
    return out


def peak_workload(trace: Any, window_s: float, *, min_requests: int = 100,
                  max_requests: int | None = 2000) -> tuple[Workload, dict[str, Any]]:
    """The busiest window's requests (or the trace at the peak rate), and what was chosen."""
    from burstbench.traces.stats import characterise
    from burstbench.traces.synth import replay

    stats = characterise(trace, window_s)
    win = stats["windows"]
    peak, start = float(win["peak_rate"]), float(win["peak_window_start_s"])
    info: dict[str, Any] = {"window_s": window_s, "peak_rate": peak, "peak_window_start_s": start,
                            "mean_rate": stats["mean_rate"], "windows": win["count"]}
    t0 = float(trace.df["arrival_s"].min())
    try:
        part = replay(trace, window=(start, start + window_s)) if t0 == 0 else None
    except InputError:  # an empty window: fall back to the rescaled trace
        part = None
    if part is not None and part.df.height >= min_requests:
        work = Workload.from_trace(part)
        info["load"] = f"the peak window's own {len(work)} requests"
    else:
        work = Workload.from_trace(trace).at_rate(peak)
        info["load"] = f"the whole trace rescaled to the peak rate ({peak:.3g} req/s)"
    if max_requests is not None and len(work) > max_requests:
        work = work.head(max_requests)
        info["load"] += f", first {max_requests} requests"
    info["requests"] = len(work)
    return work, info


def plan(
    trace: Any,
    *,
    model: str,
    hardware: Sequence[str],
    prices: dict[str, float],
    slo: dict[str, float],
    target: float = 0.9,
    tp_options: Sequence[int] = (1, 2, 4, 8),
    max_instances: int = 64,
    window_s: float = 300.0,
    sched: Sched | None = None,
    overrides: dict[str, float] | None = None,
    max_requests: int | None = 2000,
    mixes: bool = True,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Cheapest fleet meeting ``target`` attainment at the peak; see module doc."""
    if not slo:
        raise UsageError("plan needs --slo, e.g. --slo ttft=500ms,tpot=50ms")
    if not 0 < target <= 1:
        raise UsageError(f"--target {target}: give a fraction in (0, 1], e.g. 0.9")
    if not hardware:
        raise UsageError("--hardware is empty; give e.g. a100-80g,h100-sxm,l40s")
    sched = sched or Sched()
    overrides = overrides or {}
    work, load = peak_workload(trace, window_s, max_requests=max_requests)
    candidates: list[dict[str, Any]] = []
    cache: dict[tuple[Group, ...], dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []

    def evaluate(groups: Sequence[Group]) -> dict[str, Any]:
        key = tuple(groups)
        if key in cache:
            return cache[key]
        dep = Deployment(model, list(groups), sched, overrides)
        lat = dep.run(work)
        att = lat.attainment(slo)
        cand = {
            "fleet": [{"hardware": g.hardware, "tp": g.tp, "instances": g.count} for g in groups],
            "name": dep.name(), "gpus": dep.gpus,
            "usd_per_hour": sum(prices[g.hardware] * g.gpus for g in groups),
            "slo_attainment": att, "meets_target": att >= target,
            "p99_ms": {k: v["p99"] for k, v in lat.percentiles((99,)).items()},
        }
        cache[key] = cand
        candidates.append(cand)
        if on_candidate:
            on_candidate(cand)
        return cand

    def fewest(make: Callable[[int], list[Group]], lo: int, hi: int) -> int | None:
        """Fewest n in [lo, hi] whose fleet meets the target (doubling, then bisection)."""
        n, last_fail = lo, lo - 1
        while n <= hi:
            if evaluate(make(n))["meets_target"]:
                break
            last_fail = n
            n = min(hi, n * 2) if n < hi else hi + 1
        if n > hi:
            return None
        a, b = last_fail, n  # a fails (or is below the range), b meets
        while b - a > 1:
            mid = (a + b) // 2
            if evaluate(make(mid))["meets_target"]:
                b = mid
            else:
                a = mid
        return b

    singles: dict[tuple[str, int], int] = {}
    for hw in hardware:
        for tp in tp_options:
            why = fits(model, hw, tp, overrides, sched)
            if why is not None:
                skipped.append({"hardware": hw, "tp": tp, "reason": why})
                continue
            n = fewest(lambda k, hw=hw, tp=tp: [Group(hw, tp, k)], 1, max(1, max_instances // tp))
            if n is not None:
                singles[(hw, tp)] = n
    best = min((c for c in candidates if c["meets_target"]), key=lambda c: (c["usd_per_hour"], c["gpus"]),
               default=None)
    if mixes and best is not None and len(singles) > 1:
        types = sorted(singles)
        for i, a in enumerate(types):
            for b in types[i + 1:]:
                for na in range(1, singles[a]):
                    cost_a = prices[a[0]] * a[1] * na
                    if cost_a + prices[b[0]] * b[1] >= best["usd_per_hour"]:
                        break
                    # fewest b-instances with na a-instances; never more than b alone needs
                    nb = fewest(lambda k, a=a, b=b, na=na: [Group(a[0], a[1], na), Group(b[0], b[1], k)],
                                1, singles[b])
                    if nb is None:
                        continue
                    cand = cache[(Group(a[0], a[1], na), Group(b[0], b[1], nb))]
                    if cand["meets_target"] and cand["usd_per_hour"] < best["usd_per_hour"]:
                        best = cand
    return {
        "model": model, "slo_ms": {k: v * 1000 for k, v in slo.items()}, "target": target,
        "load": load, "prices_usd_per_gpu_hour": prices,
        "best": best,
        "cheapest_per_type": [
            {"hardware": hw, "tp": tp, "instances": n, **{k: cache[(Group(hw, tp, n),)][k]
                                                          for k in ("usd_per_hour", "slo_attainment")}}
            for (hw, tp), n in sorted(singles.items(), key=lambda kv: cache[(Group(kv[0][0], kv[0][1], kv[1]),)]["usd_per_hour"])
        ],
        "skipped": skipped,
        "candidates": candidates,
        "notes": [] if best else [f"no fleet of up to {max_instances} GPUs per type met the target"],
    }
