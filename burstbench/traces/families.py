"""The distribution families ``fit`` scores: maximum-likelihood fits from a few sums.

Why not ``scipy.stats.<family>.fit``: it runs a general optimiser over the full data for
each family, which takes minutes on a 10-million-gap trace. Every family here has an MLE
that depends on the data only through a few sums, so one pass computes them
(``Sample``) and the parameters follow in closed form or by a scalar Newton iteration:

* exponential: ``scale = mean(x)`` (closed form);
* lognormal: ``s = std(log x)`` (ddof 0), ``scale = exp(mean(log x))`` (closed form);
* gamma: Newton on the profile likelihood in the shape, using ``mean(x)`` and
  ``mean(log x)`` only (Minka, *Estimating a Gamma distribution*, 2002);
  ``scale = mean(x) / shape``;
* Weibull: Newton on the shape equation
  ``sum(x^k log x)/sum(x^k) - 1/k = mean(log x)``, started from the moment estimate
  ``k = pi / (sqrt(6) std(log x))``, iterated on a subsample and refined on the full data;
* discrete Zipf (lengths): ``P(k) ~ k^-a`` over ``1..max``, exponent by root finding on
  ``E_a[log k] = mean(log k)``;
* empirical: quantiles at fixed probabilities.

All use location 0. Parameters carry SciPy's names (``shape`` is ``gamma``'s ``a`` and
``weibull_min``'s ``c``; lognormal ``s`` and ``scale``; exponential ``scale``; zipf ``a``
and its support maximum ``max``). Scores: ``aic = 2k - 2 logL``, ``bic = k ln n - 2 logL``
and the Kolmogorov-Smirnov distance, computed on the data sorted once and reused. A
discrete sample (token lengths) is scored on the discretised model
(``F(k+0.5) - F(k-0.5)``), so the continuous families compare with Zipf's pmf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from burstbench.errors import InputError

EMPIRICAL_PROBS = tuple(round(p, 4) for p in [*np.linspace(0, 0.99, 100), 0.995, 0.999, 1.0])

@dataclass
class Candidate:
    """One fitted family and its scores."""

    family: str
    params: dict[str, Any]  # floats, or lists for the empirical model
    loglik: float | None
    aic: float | None
    bic: float | None
    ks: float

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "params": {k: jsonable(v) for k, v in self.params.items()},
            "loglik": finite_or_none(self.loglik),
            "aic": finite_or_none(self.aic),
            "bic": finite_or_none(self.bic),
            "ks": finite_or_none(self.ks),
        }


def jsonable(v: Any) -> Any:
    return [finite_or_none(x) for x in v] if isinstance(v, list | tuple) else finite_or_none(v)


def finite_or_none(v: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """Sorted positive values with optional counts; the sums every fitter needs, once."""

    x: np.ndarray  # sorted ascending, > 0
    w: np.ndarray | None  # counts per value (None: each value once)
    discrete: bool = False

    def __post_init__(self) -> None:
        self.logx = np.log(self.x)
        self.n = float(self.x.size if self.w is None else self.w.sum())
        self.mean = self.wsum(self.x) / self.n
        self.mean_log = self.wsum(self.logx) / self.n
        self.var_log = max(self.wsum((self.logx - self.mean_log) ** 2) / self.n, 0.0)
        cw = np.arange(1, self.x.size + 1, dtype=np.float64) if self.w is None else np.cumsum(self.w, dtype=np.float64)
        self.ecdf_hi = cw / self.n  # ECDF at x_i
        self.ecdf_lo = (cw - (1.0 if self.w is None else self.w)) / self.n  # just below x_i

    def wsum(self, v: np.ndarray) -> float:
        return float(v.sum() if self.w is None else v @ self.w)

    @classmethod
    def from_values(cls, values: np.ndarray, *, discrete: bool) -> Sample:
        values = np.asarray(values, dtype=np.float64)
        if discrete:
            u, c = np.unique(values, return_counts=True)
            return cls(u, c.astype(np.float64), True)
        return cls(np.sort(values), None, False)


def _ks(s: Sample, cdf, cdf_at_x=None) -> float:
    """KS distance between the sample's ECDF and a model CDF (discretised when discrete).

    ``cdf_at_x`` lets a family pass the CDF at the sample already computed from
    ``log x`` (cheaper than a power or log over millions of values again).
    """
    if s.discrete:
        hi = cdf(s.x + 0.5)
        lo = cdf(s.x - 0.5)
    else:
        hi = lo = cdf(s.x) if cdf_at_x is None else cdf_at_x(s)
    return float(max(np.max(s.ecdf_hi - hi), np.max(lo - s.ecdf_lo), 0.0))


def _scored(
    s: Sample, family: str, params: dict[str, float], k: int, loglik_cont: float, cdf, cdf_at_x=None
) -> Candidate:
    if s.discrete:
        mass = np.clip(cdf(s.x + 0.5) - cdf(s.x - 0.5), 1e-300, None)
        loglik = s.wsum(np.log(mass))
    else:
        loglik = loglik_cont
    return Candidate(
        family=family,
        params=params,
        loglik=loglik,
        aic=2 * k - 2 * loglik,
        bic=k * math.log(s.n) - 2 * loglik,
        ks=_ks(s, cdf, cdf_at_x),
    )


# --------------------------------------------------------------------------- families


def fit_exponential(s: Sample) -> Candidate:
    scale = s.mean
    ll = -s.n * math.log(scale) - s.n
    return _scored(s, "exponential", {"scale": scale}, 1, ll, lambda x: -np.expm1(-np.maximum(x, 0) / scale))


def gamma_shape_mle(mean: float, mean_log: float, *, tol: float = 1e-12, max_iter: int = 100) -> float:
    """Gamma shape by Newton on the profile likelihood (Minka 2002)."""
    d = math.log(mean) - mean_log
    if not d > 0:
        raise InputError("gamma fit: all values are equal; nothing to fit")
    a = (3 - d + math.sqrt((d - 3) ** 2 + 24 * d)) / (12 * d)
    for _ in range(max_iter):
        num = mean_log - math.log(mean) + math.log(a) - special.digamma(a)
        den = a * a * (1 / a - special.polygamma(1, a))
        a_new = 1 / (1 / a + num / den)
        if not a_new > 0:
            a_new = a / 2
        if abs(a_new - a) <= tol * a:
            return a_new
        a = a_new
    return a


def fit_gamma(s: Sample) -> Candidate:
    a = gamma_shape_mle(s.mean, s.mean_log)
    scale = s.mean / a
    ll = (a - 1) * s.n * s.mean_log - s.n * s.mean / scale - s.n * a * math.log(scale) - s.n * special.gammaln(a)
    return _scored(s, "gamma", {"shape": a, "scale": scale}, 2, ll, _gamma_cdf(a, scale, s.x))


# The regularised incomplete gamma costs ~300 ns a value; on millions of gaps the KS
# distance would dominate the fit. Its CDF is smooth in log x, so it is tabulated on a
# log grid spanning the data and interpolated; the table is doubled until the largest
# error at interval midpoints is below 1e-8 (KS is reported far coarser than that).
_EXACT_CDF_BELOW = 200_000


def _gamma_cdf(a: float, scale: float, x: np.ndarray):
    def exact(v: np.ndarray) -> np.ndarray:
        return special.gammainc(a, np.maximum(v, 0) / scale)

    if x.size <= _EXACT_CDF_BELOW:
        return exact
    lo, hi = math.log(max(float(x[0]), 1e-300)) - 1.0, math.log(float(x[-1])) + 1.0
    for size in (1 << 14, 1 << 16, 1 << 18, 1 << 20):
        grid = np.linspace(lo, hi, size)
        table = exact(np.exp(grid))
        mid = (grid[:-1] + grid[1:]) / 2
        if np.max(np.abs(exact(np.exp(mid)) - (table[:-1] + table[1:]) / 2)) < 1e-8:
            break
    else:
        return exact

    def approx(v: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            lv = np.log(np.maximum(v, 0))
        return np.interp(lv, grid, table, left=0.0, right=1.0)

    return approx


def _weibull_newton(logx: np.ndarray, w: np.ndarray | None, k: float, iters: int, tol: float = 1e-12) -> float:
    """Newton on g(k) = sum(x^k L)/sum(x^k) - 1/k - mean(L), with L = log x shifted for range."""
    c = float(logx.max())
    L = logx - c
    n = float(L.size if w is None else w.sum())
    mean_L = float((L.sum() if w is None else L @ w) / n)
    for _ in range(iters):
        e = np.exp(k * L)
        if w is not None:
            e = e * w
        A = float(e.sum())
        eL = e * L
        B = float(eL.sum())
        C = float(eL @ L)
        g = B / A - 1 / k - mean_L
        dg = C / A - (B / A) ** 2 + 1 / (k * k)
        step = g / dg
        k_new = k - step
        if not k_new > 0:
            k_new = k / 2
        # Newton converges quadratically: once a step is below sqrt(tol), the error left
        # after it is of order step^2 < tol, so another pass over the data is wasted.
        if abs(k_new - k) <= math.sqrt(tol) * k:
            return k_new
        k = k_new
    return k


def fit_weibull(s: Sample, *, seed: int = 0) -> Candidate:
    sd = math.sqrt(s.var_log)
    if sd == 0:
        raise InputError("weibull fit: all values are equal; nothing to fit")
    k = math.pi / (math.sqrt(6) * sd)
    if s.w is None and s.x.size > 1_000_000:
        # Converge on a 1M subsample (cheap; its root is within ~0.1 % of the full one),
        # then two or three Newton steps on everything finish the job.
        idx = np.random.default_rng(seed).integers(0, s.x.size, 1_000_000)
        k = _weibull_newton(s.logx[idx], None, k, 50, tol=1e-8)
        k = _weibull_newton(s.logx, None, k, 8)
    else:
        k = _weibull_newton(s.logx, s.w, k, 100)
    c = float(s.logx.max())
    mean_pow = s.wsum(np.exp(k * (s.logx - c))) / s.n
    scale = math.exp(c) * mean_pow ** (1 / k)
    ll = s.n * math.log(k) - s.n * k * math.log(scale) + (k - 1) * s.n * s.mean_log - s.n
    return _scored(
        s,
        "weibull",
        {"shape": k, "scale": scale},
        2,
        ll,
        lambda x: -np.expm1(-((np.maximum(x, 0) / scale) ** k)),
        lambda smp: -np.expm1(-np.exp(k * (smp.logx - math.log(scale)))),
    )


def fit_lognormal(s: Sample) -> Candidate:
    mu, sig = s.mean_log, math.sqrt(s.var_log)
    if sig == 0:
        raise InputError("lognormal fit: all values are equal; nothing to fit")
    ll = -s.n * s.mean_log - s.n * math.log(sig) - 0.5 * s.n * math.log(2 * math.pi) - 0.5 * s.n
    scale = math.exp(mu)

    def cdf(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return special.ndtr((np.log(np.maximum(x, 0)) - mu) / sig)

    return _scored(
        s, "lognormal", {"s": sig, "scale": scale}, 2, ll, cdf, lambda smp: special.ndtr((smp.logx - mu) / sig)
    )


def zipf_pmf(a: float, kmax: int) -> np.ndarray:
    """Truncated Zipf pmf over 1..kmax (index 0 is k=1)."""
    k = np.arange(1, kmax + 1, dtype=np.float64)
    logp = -a * np.log(k)
    p = np.exp(logp - logp.max())
    return p / p.sum()


def fit_zipf(s: Sample) -> Candidate:
    """Truncated discrete Zipf over 1..max(x): exponent by MLE (``E_a[log k] = mean log k``)."""
    from scipy.optimize import brentq

    kmax = int(s.x.max())
    logk = np.log(np.arange(1, kmax + 1, dtype=np.float64))

    def g(a: float) -> float:
        return float(zipf_pmf(a, kmax) @ logk) - s.mean_log

    lo, hi = -10.0, 30.0
    if g(lo) < 0:
        a = lo
    elif g(hi) > 0:
        a = hi
    else:
        a = brentq(g, lo, hi, xtol=1e-12)
    pmf = zipf_pmf(a, kmax)
    logH = math.log(float(np.exp(-a * logk - (-a * logk).max()).sum())) + float((-a * logk).max())
    ll = -a * s.n * s.mean_log - s.n * logH
    cdf_tab = np.concatenate([[0.0], np.cumsum(pmf)])

    def cdf(x: np.ndarray) -> np.ndarray:
        idx = np.clip(np.floor(x).astype(np.int64), 0, kmax)
        return cdf_tab[idx]

    # zipf is natively discrete: score with its own pmf, not a continuity correction.
    cand = Candidate("zipf", {"a": a, "max": float(kmax)}, ll, 2 - 2 * ll, math.log(s.n) - 2 * ll, 0.0)
    hi_c = cdf(s.x)
    lo_c = cdf(s.x - 1)
    cand.ks = float(max(np.max(s.ecdf_hi - hi_c), np.max(lo_c - s.ecdf_lo), 0.0))
    return cand


def fit_empirical(s: Sample) -> Candidate:
    """Quantiles at fixed probabilities; sampling interpolates between them."""
    cw = s.ecdf_hi
    probs = np.asarray(EMPIRICAL_PROBS)
    idx = np.clip(np.searchsorted(cw, probs, side="left"), 0, s.x.size - 1)
    q = s.x[idx]
    q[0] = s.x[0]
    qs = [float(v) for v in np.maximum.accumulate(q)]

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.interp(x, qs, probs)

    # Synthesis rounds interpolated quantiles to whole tokens, which is exactly the
    # continuity-corrected comparison ``_ks`` makes for discrete samples.
    ks = _ks(s, cdf)
    params: dict[str, Any] = {"probs": list(EMPIRICAL_PROBS), "quantiles": qs}
    return Candidate("empirical", params, None, None, None, ks)
