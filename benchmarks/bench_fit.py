"""Arrival-fit speed: burstbench's four-family MLE vs ``scipy.stats.<family>.fit`` on the same gaps.

Draws N gamma gaps (default 10 million, shape 0.6, scale 1.5, seed 0), times
``burstbench.traces.fit.fit_continuous`` (sort once, fit exponential, gamma, Weibull and
lognormal with location 0, and score each: log-likelihood, AIC, BIC, KS) and then
``scipy.stats.<family>.fit(data, floc=0)`` for each family (fit only: no scores).
SciPy runs on the full data unless a 1-million-gap trial predicts more than 60 s for a
family; then it runs on that 1M subsample and the output says so.

    python benchmarks/bench_fit.py            # 10 million gaps
    python benchmarks/bench_fit.py --n 1000000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import stats

from burstbench.traces.families import (
    Sample,
    fit_exponential,
    fit_gamma,
    fit_lognormal,
    fit_weibull,
)
from burstbench.traces.fit import fit_continuous

OURS = {"exponential": fit_exponential, "gamma": fit_gamma, "weibull": fit_weibull, "lognormal": fit_lognormal}

SCIPY = {
    "exponential": (stats.expon, lambda p: (p[1],), ("scale",)),
    "gamma": (stats.gamma, lambda p: (p[0], p[2]), ("shape", "scale")),
    "weibull": (stats.weibull_min, lambda p: (p[0], p[2]), ("shape", "scale")),
    "lognormal": (stats.lognorm, lambda p: (p[0], p[2]), ("s", "scale")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--budget", type=float, default=60.0, help="max predicted SciPy seconds on the full data")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 shared cores)")
    x = np.random.default_rng(0).gamma(0.6, 1.5, args.n)
    t0, c0 = time.perf_counter(), time.process_time()
    ours = fit_continuous(x, "arrivals")
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"burstbench: {args.n:,} gaps, 4 families fitted + loglik/AIC/BIC/KS: {t_ours:.2f} s wall, "
        f"{c_ours:.2f} s CPU (best {ours.best.family})"
    )
    # Per-family split: the shared pass (sort, logs, sums) once, then each family with its KS.
    t0 = time.perf_counter()
    smp = Sample.from_values(x[x > 0], discrete=False)
    t_shared = time.perf_counter() - t0
    mine_t = {}
    for fam, f in OURS.items():
        t0 = time.perf_counter()
        f(smp)
        mine_t[fam] = time.perf_counter() - t0
    print(f"  split: shared sort/logs/sums {t_shared:.2f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in mine_t.items()))
    total_scipy = 0.0
    cpu_scipy = 0.0
    sub = x[: min(1_000_000, args.n)]
    print(f"{'family':<12}{'scipy data':>14}{'scipy s':>10}{'scipy s/N':>11}{'ours s':>8}{'ratio':>9}  parameters (ours on N vs scipy)")
    for fam, (dist, pick, names) in SCIPY.items():
        t0, c0 = time.perf_counter(), time.process_time()
        p_sub = dist.fit(sub, floc=0)
        t_sub, c_sub = time.perf_counter() - t0, time.process_time() - c0
        predicted = t_sub * args.n / sub.size
        cpu_scipy += c_sub * args.n / sub.size
        if args.n > sub.size and predicted <= args.budget:
            t0, c0 = time.perf_counter(), time.process_time()
            p = dist.fit(x, floc=0)
            t_sc, data, full_equiv = time.perf_counter() - t0, "full", None
            cpu_scipy += (time.process_time() - c0) - c_sub * args.n / sub.size
        else:
            p, t_sc = p_sub, t_sub
            data, full_equiv = ("1M subsample", predicted) if args.n > sub.size else ("full", None)
        total_scipy += full_equiv if full_equiv is not None else t_sc
        theirs = pick(p)
        mine = tuple(ours.get(fam).params[k] for k in names)
        agree = ", ".join(f"{k} {a:.6g} vs {b:.6g}" for k, a, b in zip(names, mine, theirs, strict=True))
        per_n = full_equiv if full_equiv is not None else t_sc
        eq = f"{per_n:.1f}*" if full_equiv is not None else f"{per_n:.2f}"
        print(f"{fam:<12}{data:>14}{t_sc:>10.2f}{eq:>11}{mine_t[fam]:>8.2f}{per_n / mine_t[fam]:>8.1f}x  {agree}")
    print(f"scipy, all four families (per N={args.n:,} gaps; * = SciPy ran on a 1M subsample, time extrapolated linearly, parameters from the subsample): {total_scipy:.1f} s")
    print(f"ratio scipy / burstbench: {total_scipy / t_ours:.1f}x wall, {cpu_scipy / c_ours:.1f}x CPU time (burstbench also computes the KS distances)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
