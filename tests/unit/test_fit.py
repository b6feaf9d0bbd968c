"""Arrival and length fits: the Azure correctness bar, recovery of known parameters, ties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import special, stats

from burstbench.errors import InputError
from burstbench.traces.fit import (
    fit_arrivals,
    fit_continuous,
    fit_joint,
    fit_lengths,
    fit_trace,
    prepare_gaps,
)
from burstbench.traces.schema import Trace, conform

N = 20_000


def load_azure(path: Path) -> Trace:
    """The shipped Azure trace through ``load_trace`` (or a plain Polars read before ingest exists)."""
    try:
        from burstbench.traces.schema import load_trace

        return load_trace(path)
    except ModuleNotFoundError:
        df = pl.read_csv(path)
        t = df["TIMESTAMP"].str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="ns")
        x = (t - t.min()).dt.total_nanoseconds() / 1e9
        return Trace(
            conform(pl.DataFrame({"arrival_s": x, "input_tokens": df["ContextTokens"], "output_tokens": df["GeneratedTokens"]}))
        )


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


def test_azure_conv_best_is_gamma_with_published_parameters(azure_conv: Path) -> None:
    fit = fit_trace(load_azure(azure_conv))
    best = fit.arrivals.best
    assert best.family == "gamma"
    assert sig3(best.params["shape"]) == 0.871
    assert sig3(best.params["scale"]) == 0.208  # 0.2076 s to 3 significant figures
    assert round(best.params["scale"], 4) == 0.2076
    assert fit.arrivals.notes["method"] == "none"  # microsecond timestamps, no ties


def _check(est: float, true: float, se: float, what: str) -> None:
    assert abs(est - true) < 4.5 * se, f"{what}: {est} vs {true} (se {se:.3g})"


@pytest.mark.parametrize("scale", [0.05, 3.0])
def test_exponential_recovered(scale: float) -> None:
    x = np.random.default_rng(1).exponential(scale, N)
    c = fit_continuous(x, "gaps").get("exponential")
    _check(c.params["scale"], scale, scale / math.sqrt(N), "scale")


@pytest.mark.parametrize(("a", "theta"), [(0.5, 2.0), (2.5, 0.1)])
def test_gamma_recovered_within_fisher_standard_errors(a: float, theta: float) -> None:
    x = np.random.default_rng(2).gamma(a, theta, N)
    c = fit_continuous(x, "gaps").get("gamma")
    info = np.array([[special.polygamma(1, a), 1 / theta], [1 / theta, a / theta**2]])
    cov = np.linalg.inv(info) / N
    _check(c.params["shape"], a, math.sqrt(cov[0, 0]), "shape")
    _check(c.params["scale"], theta, math.sqrt(cov[1, 1]), "scale")


@pytest.mark.parametrize(("k", "lam"), [(0.6, 1.5), (2.0, 0.3)])
def test_weibull_recovered(k: float, lam: float) -> None:
    x = lam * np.random.default_rng(3).weibull(k, N)
    c = fit_continuous(x, "gaps").get("weibull")
    # Asymptotic variances of the Weibull MLE: 6/pi^2 k^2/n and (1 + 6(1-gamma)^2/pi^2) lam^2/(k^2 n).
    _check(c.params["shape"], k, math.sqrt(6 / math.pi**2 * k * k / N), "shape")
    g = 0.5772156649015329
    _check(c.params["scale"], lam, math.sqrt((1 + 6 * (1 - g) ** 2 / math.pi**2) * lam**2 / (k * k * N)), "scale")


@pytest.mark.parametrize(("s", "scale"), [(0.4, 0.2), (1.8, 5.0)])
def test_lognormal_recovered(s: float, scale: float) -> None:
    x = scale * np.exp(s * np.random.default_rng(4).standard_normal(N))
    c = fit_continuous(x, "gaps").get("lognormal")
    _check(c.params["s"], s, s / math.sqrt(2 * N), "s")
    _check(c.params["scale"], scale, scale * s / math.sqrt(N), "scale")


def test_every_family_agrees_with_scipy_fit_on_the_same_data() -> None:
    x = np.random.default_rng(5).gamma(0.8, 0.5, 5000)
    q = fit_continuous(x, "gaps")
    a, _, sc = stats.gamma.fit(x, floc=0)
    assert q.get("gamma").params["shape"] == pytest.approx(a, rel=1e-3)
    assert q.get("gamma").params["scale"] == pytest.approx(sc, rel=1e-3)
    c, _, sc = stats.weibull_min.fit(x, floc=0)
    assert q.get("weibull").params["shape"] == pytest.approx(c, rel=1e-3)
    assert q.get("weibull").params["scale"] == pytest.approx(sc, rel=1e-3)
    s, _, sc = stats.lognorm.fit(x, floc=0)
    assert q.get("lognormal").params["s"] == pytest.approx(s, rel=1e-4)
    assert q.get("lognormal").params["scale"] == pytest.approx(sc, rel=1e-4)
    # KS distance matches scipy's kstest for the fitted parameters.
    g = q.get("gamma")
    ks = stats.kstest(x, "gamma", args=(g.params["shape"], 0, g.params["scale"])).statistic
    assert g.ks == pytest.approx(ks, abs=1e-9)
    for fam, dist in (("weibull", "weibull_min"), ("lognormal", "lognorm")):
        c = q.get(fam)
        shape = c.params["shape"] if fam == "weibull" else c.params["s"]
        ks = stats.kstest(x, dist, args=(shape, 0, c.params["scale"])).statistic
        assert c.ks == pytest.approx(ks, abs=1e-9)
    e = q.get("exponential")
    assert e.ks == pytest.approx(stats.kstest(x, "expon", args=(0, e.params["scale"])).statistic, abs=1e-9)
    # Log-likelihoods match scipy's densities.
    assert g.loglik == pytest.approx(stats.gamma.logpdf(x, g.params["shape"], 0, g.params["scale"]).sum(), rel=1e-9)
    w = q.get("weibull")
    assert w.loglik == pytest.approx(stats.weibull_min.logpdf(x, w.params["shape"], 0, w.params["scale"]).sum(), rel=1e-9)


def test_best_family_is_the_generating_one() -> None:
    rng = np.random.default_rng(6)
    assert fit_continuous(rng.gamma(0.4, 1.0, N), "g").best.family == "gamma"
    assert fit_continuous(rng.lognormal(0, 1.5, N), "g").best.family == "lognormal"
    assert fit_continuous(rng.weibull(2.5, N), "g").best.family == "weibull"


def test_aic_and_bic_follow_their_definitions() -> None:
    x = np.random.default_rng(7).gamma(2.0, 1.0, 1000)
    for c in fit_continuous(x, "g").candidates:
        k = 1 if c.family == "exponential" else 2
        assert c.aic == pytest.approx(2 * k - 2 * c.loglik)
        assert c.bic == pytest.approx(k * math.log(1000) - 2 * c.loglik)


def test_quantised_timestamps_are_jittered_and_named() -> None:
    rng = np.random.default_rng(8)
    t = np.floor(np.cumsum(rng.gamma(0.5, 4.0, 5000)))  # whole seconds: many ties
    gaps, notes = prepare_gaps(t, seed=3)
    assert notes["resolution_s"] == 1.0
    assert notes["tied_share"] > 0.2
    assert notes["method"] == "jitter-uniform" and notes["jitter_s"] == 1.0 and notes["seed"] == 3
    assert np.all(gaps > 0)
    q = fit_arrivals(t, seed=3)
    assert q.notes["method"] == "jitter-uniform"
    # The mean gap survives the jitter (the span moves by less than one tick).
    mean_true = (t[-1] - t[0]) / (t.size - 1)
    assert q.get("exponential").params["scale"] == pytest.approx(mean_true, rel=0.01)
    # Deterministic under the seed.
    assert fit_arrivals(t, seed=3).get("gamma").params == q.get("gamma").params


def test_mostly_tied_arrivals_still_fit() -> None:
    t = np.repeat(np.arange(50.0), 40)  # 40 requests per second, all tied within a second
    q = fit_arrivals(t)
    assert q.notes["tied_share"] > 0.9
    assert all(math.isfinite(c.aic) for c in q.candidates)


def test_degenerate_arrivals_raise_input_error() -> None:
    with pytest.raises(InputError, match="one timestamp"):
        fit_arrivals(np.zeros(100))
    with pytest.raises(InputError, match="at least 3"):
        fit_arrivals(np.array([0.0, 1.0]))


def test_zipf_exponent_recovered_within_fisher_error() -> None:
    a, kmax = 1.1, 1023
    k = np.arange(1, kmax + 1)
    p = k ** -a / (k ** -a).sum()
    x = np.random.default_rng(9).choice(k, N, p=p)
    c = fit_lengths(x, "input_tokens").get("zipf")
    var_log = (p * np.log(k) ** 2).sum() - ((p * np.log(k)).sum()) ** 2
    _check(c.params["a"], a, 1 / math.sqrt(N * var_log), "a")
    assert c.params["max"] == x.max()


def test_lognormal_lengths_recovered_and_chosen() -> None:
    x = np.rint(500 * np.exp(0.7 * np.random.default_rng(10).standard_normal(N)))
    q = fit_lengths(x, "input_tokens")
    assert q.best.family == "lognormal"
    c = q.get("lognormal")
    _check(c.params["s"], 0.7, 0.7 / math.sqrt(2 * N), "s")
    _check(c.params["scale"], 500, 500 * 0.7 / math.sqrt(N), "scale")
    emp = q.get("empirical")
    assert emp.aic is None and emp.ks < 0.01
    assert emp.params["quantiles"][0] == x.min() and emp.params["quantiles"][-1] == x.max()


def test_zero_lengths_are_dropped_and_counted() -> None:
    x = np.concatenate([np.zeros(10), np.random.default_rng(11).integers(1, 100, 500)])
    q = fit_lengths(x, "output_tokens")
    assert q.n == 500 and q.notes == {"dropped_below_1": 10}


def test_joint_dependence_detected_only_when_present() -> None:
    rng = np.random.default_rng(12)
    z1 = rng.standard_normal(N)
    z2 = 0.6 * z1 + 0.8 * rng.standard_normal(N)
    inp, out = np.rint(np.exp(5 + z1)) + 1, np.rint(np.exp(4 + z2)) + 1
    j = fit_joint(inp, out)
    assert j is not None and j.significant
    assert j.copula_rho == pytest.approx(0.6, abs=0.03)
    j0 = fit_joint(inp, np.rint(np.exp(4 + rng.standard_normal(N))) + 1)
    assert j0 is not None and not j0.significant


def test_fit_json_shape_follows_design_section_7(azure_conv: Path) -> None:
    out = fit_trace(load_azure(azure_conv)).to_json()
    json.dumps(out, allow_nan=False)  # strictly JSON: no NaN or infinity
    for q in ("arrivals", "input_tokens", "output_tokens"):
        assert out[q]["best"] in {c["family"] for c in out[q]["candidates"]}
        for c in out[q]["candidates"]:
            assert set(c) >= {"family", "params", "aic", "bic", "ks"}
    fams = [c["family"] for c in out["arrivals"]["candidates"]]
    assert fams == ["exponential", "gamma", "weibull", "lognormal"]
    assert {"shape", "scale"} <= set(out["arrivals"]["candidates"][1]["params"])


def test_window_fits_give_a_piecewise_spec() -> None:
    rng = np.random.default_rng(13)
    t1 = np.cumsum(rng.exponential(1.0, 500))
    t1 = t1[t1 < 400]
    t2 = 400 + np.cumsum(rng.exponential(0.1, 4000))
    t2 = t2[t2 < 800]
    t = np.concatenate([[0.0], t1, t2])
    df = pl.DataFrame({"arrival_s": t, "input_tokens": rng.integers(1, 50, t.size), "output_tokens": rng.integers(1, 50, t.size)})
    fit = fit_trace(Trace(conform(df)), window_s=400)
    assert fit.windows is not None and len(fit.windows) == 2
    rates = [1 / fit.windows[i].fit.get("exponential").params["scale"] for i in range(2)]
    assert rates[0] == pytest.approx(1.0, rel=0.2) and rates[1] == pytest.approx(10.0, rel=0.1)
    spec = fit.to_spec()
    assert spec.arrivals.process == "piecewise" and [w.start_s for w in spec.arrivals.windows] == [0, 400]
    with pytest.raises(InputError, match="window"):
        fit_trace(Trace(conform(df)), window_s=0.01)


def test_silent_windows_leave_a_gap_in_the_piecewise_spec(tmp_path: Path) -> None:
    from burstbench.traces.spec import WorkloadSpec
    from burstbench.traces.synth import synthesise

    t = np.concatenate([np.arange(0, 100, 1.0), np.arange(300, 400, 0.5)])  # nothing in [100, 300)
    df = pl.DataFrame({"arrival_s": t, "input_tokens": np.full(t.size, 10), "output_tokens": np.full(t.size, 5)})
    spec = fit_trace(Trace(conform(df)), window_s=100).to_spec()
    assert [(w.start_s, w.end_s) for w in spec.arrivals.windows] == [(0, 100), (300, 400)]
    back = WorkloadSpec.from_yaml(spec.to_yaml(tmp_path / "p.yaml"))
    s = synthesise(back, seed=0).df["arrival_s"].to_numpy()
    assert not ((s > 100.5) & (s < 299.5)).any()


def test_tabulated_gamma_cdf_gives_scipys_ks_on_large_samples() -> None:
    x = np.random.default_rng(14).gamma(0.7, 1.0, 400_000)  # above the exact-CDF cutoff
    g = fit_continuous(x, "gaps").get("gamma")
    ks = stats.kstest(x, "gamma", args=(g.params["shape"], 0, g.params["scale"])).statistic
    assert g.ks == pytest.approx(ks, abs=1e-7)
