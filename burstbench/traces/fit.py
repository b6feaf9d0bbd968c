"""Fitting a trace: arrival gaps, token lengths, their joint, sessions and windows.

The families and their maximum-likelihood fits are in ``families`` (closed forms and
scalar Newton iterations on a few sums, fast on whole traces); this module prepares each
quantity, scores every family on it and keeps the results (``FitResult.to_spec`` turns
them into a WorkloadSpec).

Tied or quantised timestamps (BurstGPT logs whole seconds, so many gaps are 0) make the
gamma, Weibull and lognormal likelihoods degenerate. When the trace has ties, or its
detected resolution is coarse (at least 1 % of the mean gap), each arrival is moved by an
independent uniform draw within its resolution tick (seeded) before the gaps are taken;
the output names the method (``jitter-uniform``), the resolution and the seed.

Token lengths are integers: they are reduced to (value, count) pairs once, the continuous
families are fitted to the values, and their likelihood and KS distance are evaluated on
the discretised model (``F(k+0.5) - F(k-0.5)``) so the scores compare with Zipf's pmf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from burstbench.errors import InputError
from burstbench.limits import MAX_FIT_WINDOWS, MIN_WINDOW_S
from burstbench.traces.families import (
    Candidate,
    Sample,
    finite_or_none,
    fit_empirical,
    fit_exponential,
    fit_gamma,
    fit_lognormal,
    fit_weibull,
    fit_zipf,
)
from burstbench.traces.schema import Trace
from burstbench.traces.spec import (
    ArrivalSpec,
    Dist,
    JointSpec,
    LengthSpec,
    SessionSpec,
    WindowSpec,
    WorkloadSpec,
)
from burstbench.traces.stats import detect_resolution

ARRIVAL_FAMILIES = ("exponential", "gamma", "weibull", "lognormal")
LENGTH_FAMILIES = ("lognormal", "gamma", "weibull", "zipf")
TIE_METHOD = "jitter-uniform"
# A parametric length model goes into the spec only if it fits this well; otherwise the
# spec keeps the empirical quantiles, so synthesis never trades the data for a bad curve.
LENGTH_KS_THRESHOLD = 0.05
MIN_WINDOW_GAPS = 20


# --------------------------------------------------------------------------- results


@dataclass
class QuantityFit:
    """All candidate fits of one quantity (arrival gaps, input or output tokens)."""

    quantity: str
    n: int
    candidates: list[Candidate]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        """The candidate with the lowest AIC (families without a likelihood never win)."""
        scored = [c for c in self.candidates if c.aic is not None and math.isfinite(c.aic)]
        if not scored:
            return self.candidates[0]
        return min(scored, key=lambda c: c.aic)  # type: ignore[arg-type, return-value]

    def get(self, family: str) -> Candidate:
        for c in self.candidates:
            if c.family == family:
                return c
        raise KeyError(family)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "best": self.best.family,
            "candidates": [c.to_json() for c in self.candidates],
            **({"notes": self.notes} if self.notes else {}),
        }


@dataclass
class WindowFit:
    """The arrival fit of one time window (piecewise fits)."""

    start_s: float
    end_s: float
    count: int
    fit: QuantityFit | None  # None when too few gaps: the window is Poisson at its rate

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start_s": self.start_s, "end_s": self.end_s, "count": self.count}
        if self.fit is not None:
            out.update(self.fit.to_json())
        else:
            out["best"] = "poisson"
            out["rate"] = self.count / max(self.end_s - self.start_s, 1e-12)
        return out


@dataclass
class JointFit:
    """Dependence between input and output lengths (Spearman's rho and its test)."""

    n: int
    spearman: float
    pearson: float
    p_value: float
    significant: bool
    copula_rho: float

    def to_json(self) -> dict[str, Any]:
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class SessionFit:
    """Multi-turn structure: session-start arrivals, turns per session, think times, first prompts.

    With sessions, ``trace synth`` treats the arrival process as session starts and grows
    each later prompt from the earlier turns, so the spec's input model is fitted to
    first-turn prompts only (the fresh message size) rather than to every prompt.
    """

    starts: QuantityFit
    turns: Candidate  # empirical quantiles of turns per session
    think_time_s: QuantityFit
    first_input: QuantityFit
    sessions: int
    multi_turn_share: float
    starts_s: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "multi_turn_share": self.multi_turn_share,
            "starts": self.starts.to_json(),
            "turns": self.turns.to_json(),
            "think_time_s": self.think_time_s.to_json(),
            "first_input_tokens": self.first_input.to_json(),
        }


@dataclass
class FitResult:
    """Everything ``trace fit`` learns from one trace; ``to_spec`` turns it into a workload."""

    arrivals: QuantityFit
    input_tokens: QuantityFit
    output_tokens: QuantityFit
    joint: JointFit | None
    windows: list[WindowFit] | None = None
    window_s: float | None = None
    duration_s: float = 0.0
    requests: int = 0
    context_limit: int | None = None
    tenants: dict[str, float] | None = None
    models: dict[str, float] | None = None
    source: str | None = None
    sessions: SessionFit | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "arrivals": self.arrivals.to_json(),
            "input_tokens": self.input_tokens.to_json(),
            "output_tokens": self.output_tokens.to_json(),
            "joint": self.joint.to_json() if self.joint else None,
        }
        out["sessions"] = self.sessions.to_json() if self.sessions else None
        if self.windows is not None:
            out["window_s"] = self.window_s
            out["windows"] = [w.to_json() for w in self.windows]
        return out

    def to_spec(self) -> WorkloadSpec:
        """A WorkloadSpec that ``trace synth`` turns back into a trace like this one."""
        if self.windows:
            wins = []
            for w in self.windows:
                if w.count == 0:
                    continue  # a silent window: the piecewise process has no window there
                if w.fit is None:
                    wins.append(
                        WindowSpec(w.start_s, w.end_s, "poisson", {"rate": w.count / (w.end_s - w.start_s)})
                    )
                else:
                    b = w.fit.best
                    wins.append(WindowSpec(w.start_s, w.end_s, b.family, dict(b.params)))
            arrivals = ArrivalSpec("piecewise", {}, wins)
        else:
            b = (self.sessions.starts if self.sessions else self.arrivals).best
            arrivals = ArrivalSpec(b.family, dict(b.params))

        def length_dist(q: QuantityFit) -> Dist:
            best = q.best
            if best.ks <= LENGTH_KS_THRESHOLD:
                return Dist(best.family, dict(best.params))
            emp = q.get("empirical")
            return Dist("empirical", dict(emp.params))  # type: ignore[arg-type]

        joint = JointSpec("independent", None)
        if self.joint is not None and self.joint.significant:
            joint = JointSpec("gaussian-copula", round(self.joint.copula_rho, 6))
        scores = {
            q.quantity: {
                "best": q.best.family,
                **{
                    c.family: {"aic": finite_or_none(c.aic), "bic": finite_or_none(c.bic), "ks": finite_or_none(c.ks)}
                    for c in q.candidates
                },
            }
            for q in (self.arrivals, self.input_tokens, self.output_tokens)
        }
        provenance: dict[str, Any] = {
            "trace": self.source,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "fit_method": "maximum likelihood, location 0 (burstbench.traces.fit)",
            "length_model_rule": f"best family by AIC if its KS <= {LENGTH_KS_THRESHOLD}, else empirical quantiles",
            "scores": scores,
        }
        if self.arrivals.notes:
            provenance["arrival_ties"] = self.arrivals.notes
        if self.joint is not None:
            provenance["joint"] = self.joint.to_json()
        if self.window_s:
            provenance["window_s"] = self.window_s
        sessions = None
        if self.sessions is not None:
            sf = self.sessions
            sessions = SessionSpec(Dist("empirical", dict(sf.turns.params)), length_dist(sf.think_time_s))
            provenance["sessions"] = (
                "arrivals are session starts; input lengths are first-turn prompts; "
                "turns and think times as fitted (think time includes the response time)"
            )
        return WorkloadSpec(
            arrivals=arrivals,
            sessions=sessions,
            lengths=LengthSpec(
                input=length_dist(self.sessions.first_input if self.sessions else self.input_tokens),
                output=length_dist(self.output_tokens),
                joint=joint,
            ),
            context_limit=self.context_limit,
            tenants=self.tenants,
            models=self.models,
            duration_s=round(self.duration_s, 6) if self.duration_s else None,
            provenance=provenance,
        )


# --------------------------------------------------------------------------- quantities


def prepare_gaps(arrivals: np.ndarray, *, seed: int = 0, resolution: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Inter-arrival gaps, with ties broken by jitter within the resolution (see module doc)."""
    t = np.sort(np.asarray(arrivals, dtype=np.float64))
    if t.size < 3:
        raise InputError(f"need at least 3 arrivals to fit, got {t.size}", field="arrival_s")
    gaps = np.diff(t)
    tied = float(np.mean(gaps == 0))
    res = detect_resolution(t) if resolution is None else resolution
    mean_gap = float(t[-1] - t[0]) / gaps.size
    if mean_gap <= 0:
        raise InputError("all arrivals share one timestamp; nothing to fit", field="arrival_s")
    notes: dict[str, Any] = {"resolution_s": res, "tied_share": tied}
    if tied > 0 or (res is not None and res >= 0.01 * mean_gap):
        tick = res if res is not None else float(gaps[gaps > 0].min())
        rng = np.random.default_rng(seed)
        t = np.sort(t + rng.uniform(0.0, tick, t.size))
        gaps = np.diff(t)
        gaps = gaps[gaps > 0]
        notes.update(method=TIE_METHOD, jitter_s=tick, seed=seed)
    else:
        notes["method"] = "none"
    return gaps, notes


def fit_continuous(values: np.ndarray, quantity: str, *, families=ARRIVAL_FAMILIES, seed: int = 0) -> QuantityFit:
    """Fit continuous families to positive values (arrival gaps)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[x > 0]
    if x.size < 2:
        raise InputError(f"{quantity}: need at least 2 positive values to fit, got {x.size}")
    s = Sample.from_values(x, discrete=False)
    cands = []
    for fam in families:
        if fam == "exponential":
            cands.append(fit_exponential(s))
        elif fam == "gamma":
            cands.append(fit_gamma(s))
        elif fam == "weibull":
            cands.append(fit_weibull(s, seed=seed))
        elif fam == "lognormal":
            cands.append(fit_lognormal(s))
        else:
            raise ValueError(fam)
    return QuantityFit(quantity, int(s.n), cands)


def fit_arrivals(arrivals: np.ndarray, *, seed: int = 0, resolution: float | None = None) -> QuantityFit:
    gaps, notes = prepare_gaps(arrivals, seed=seed, resolution=resolution)
    q = fit_continuous(gaps, "arrivals", seed=seed)
    q.notes = notes
    return q


def fit_lengths(values: np.ndarray, quantity: str) -> QuantityFit:
    """Fit lengths (integers >= 1; zeros are dropped and counted in ``notes``)."""
    v = np.asarray(values, dtype=np.float64)
    pos = v[v >= 1]
    if pos.size < 2:
        raise InputError(f"need at least 2 positive token counts to fit, got {pos.size}", field=quantity)
    s = Sample.from_values(np.round(pos), discrete=True)
    cands: list[Candidate] = []
    if s.x.size >= 2:
        cands += [fit_lognormal(s), fit_gamma(s), fit_weibull(s)]
    cands += [fit_zipf(s), fit_empirical(s)]
    notes = {"dropped_below_1": int(v.size - pos.size)} if v.size != pos.size else {}
    return QuantityFit(quantity, int(s.n), cands, notes)


def fit_joint(inp: np.ndarray, out: np.ndarray) -> JointFit | None:
    """Spearman rank correlation and its t-test; significant => Gaussian copula in the spec."""
    from scipy import stats as st

    keep = (inp >= 1) & (out >= 1)
    a, b = inp[keep].astype(np.float64), out[keep].astype(np.float64)
    n = a.size
    if n < 10 or a.std() == 0 or b.std() == 0:
        return None
    ra, rb = st.rankdata(a), st.rankdata(b)
    rho = float(np.corrcoef(ra, rb)[0, 1])
    pear = float(np.corrcoef(a, b)[0, 1])
    if abs(rho) >= 1:
        p = 0.0
    else:
        t = rho * math.sqrt((n - 2) / (1 - rho * rho))
        p = float(2 * st.t.sf(abs(t), n - 2))
    # Significant both statistically and in size: a |rho| of 0.05 changes nothing a user sees.
    significant = p < 0.01 and abs(rho) >= 0.05
    copula_rho = 2 * math.sin(math.pi * rho / 6)
    return JointFit(n, rho, pear, p, significant, copula_rho)


def fit_trace(trace: Trace, window_s: float | None = None, *, seed: int = 0) -> FitResult:
    """Fit arrivals, lengths and their dependence; optional per-window arrival fits."""
    df = trace.df
    if df.height < 3:
        raise InputError(f"trace has {df.height} requests; need at least 3 to fit")
    t = df["arrival_s"].to_numpy()
    # Ingest measured the resolution on the raw timestamps; trust it over a re-detection.
    res = trace.meta.get("timestamp_resolution_s")
    arrivals = fit_arrivals(t, seed=seed, resolution=float(res) if res else None)
    ok = df.filter(~df["failed"].fill_null(False)) if "failed" in df.columns else df
    if ok.height < 3:
        ok = df
    inp = ok["input_tokens"].to_numpy()
    out = ok["output_tokens"].to_numpy()
    sessions = fit_sessions(df, ok, seed=seed, resolution=float(res) if res else None)
    t_proc = sessions.starts_s if sessions is not None else t
    windows = fit_windows(t_proc, window_s, seed=seed) if window_s else None
    tenants = _mix(df, "tenant")
    models = _mix(df, "model")
    total = (inp + out).max() if inp.size else None
    return FitResult(
        arrivals=arrivals,
        input_tokens=fit_lengths(inp, "input_tokens"),
        output_tokens=fit_lengths(out, "output_tokens"),
        joint=fit_joint(inp, out),
        windows=windows,
        window_s=window_s,
        duration_s=float(t.max() - t.min()),
        requests=df.height,
        context_limit=int(total) if total is not None else None,
        tenants=tenants,
        models=models,
        source=trace.meta.get("source_file") or trace.meta.get("source") or trace.meta.get("path"),
        sessions=sessions,
    )


def fit_sessions(df: pl.DataFrame, ok: pl.DataFrame, *, seed: int = 0, resolution: float | None = None) -> SessionFit | None:
    """Session structure, when the trace has multi-turn sessions (else None).

    Requests without a session id count as single-turn sessions of their own.
    """
    if "session_id" not in df.columns or df["session_id"].null_count() == df.height:
        return None
    keyed = df.with_columns(
        pl.coalesce(pl.col("session_id"), pl.concat_str(pl.lit("\x00row"), pl.int_range(pl.len()).cast(pl.String)))
        .alias("_sid")
    ).sort(["_sid", "arrival_s"])
    per = keyed.group_by("_sid").agg(pl.len().alias("turns"), pl.col("arrival_s").first().alias("start"))
    turns = per["turns"].to_numpy()
    if turns.max() <= 1:
        return None
    think = keyed.with_columns(pl.col("arrival_s").diff().over("_sid").alias("_d"))["_d"].drop_nulls().to_numpy()
    think = think[think > 0]
    if think.size < 3:
        return None
    first_rows = keyed.filter(pl.col("arrival_s") == pl.col("arrival_s").first().over("_sid")).unique("_sid")
    first_ok = first_rows.filter(~pl.col("failed").fill_null(False))
    if first_ok.height < 3:
        first_ok = first_rows
    starts = np.sort(per["start"].to_numpy())
    starts_fit = fit_arrivals(starts, seed=seed, resolution=resolution)
    think_fit = fit_continuous(think, "think_time_s", seed=seed)
    think_fit.candidates.append(fit_empirical(Sample.from_values(think, discrete=False)))
    sf = SessionFit(
        starts=starts_fit,
        turns=fit_empirical(Sample.from_values(turns.astype(np.float64), discrete=True)),
        think_time_s=think_fit,
        first_input=fit_lengths(first_ok["input_tokens"].to_numpy(), "first_input_tokens"),
        sessions=int(turns.size),
        multi_turn_share=float(np.mean(turns > 1)),
        starts_s=starts,
    )
    return sf


def fit_windows(t: np.ndarray, window_s: float, *, seed: int = 0) -> list[WindowFit]:
    """Fit each window's gaps on their own (a piecewise process for non-stationary traces)."""
    if not (window_s >= MIN_WINDOW_S and math.isfinite(window_s)):
        raise InputError(f"window must be a finite number >= {MIN_WINDOW_S:g} s, got {window_s}", field="--window")
    t = np.sort(np.asarray(t, dtype=np.float64))
    t = t - t[0]
    # multiplied, not divided: span / 1e-320 is inf, which math.floor cannot take
    if t[-1] >= MAX_FIT_WINDOWS * window_s:
        raise InputError(
            f"--window {window_s:g} s cuts {t[-1]:,.0f} s into more windows than the "
            f"limit of {MAX_FIT_WINDOWS:,} per-window fits; use --window {math.ceil(t[-1] / MAX_FIT_WINDOWS):,} "
            "or more",
            field="--window",
        )
    nwin = math.floor(t[-1] / window_s) + 1
    edges = np.searchsorted(t, np.arange(nwin + 1) * window_s, side="left")
    out = []
    for i in range(nwin):
        seg = t[edges[i] : edges[i + 1]]
        a, b = i * window_s, (i + 1) * window_s
        fit = None
        if seg.size > MIN_WINDOW_GAPS:
            try:
                fit = fit_arrivals(seg, seed=seed + i)
            except InputError:
                fit = None
        out.append(WindowFit(a, b, int(seg.size), fit))
    return out


def _mix(df: pl.DataFrame, col: str) -> dict[str, float] | None:
    if col not in df.columns or df[col].null_count() == df.height:
        return None
    vc = df[col].drop_nulls().value_counts(sort=True)
    total = float(vc["count"].sum())
    if vc.height > 50:
        return None  # too many distinct values to be a "mix"; keep the spec readable
    return {str(k): round(float(c) / total, 6) for k, c in zip(vc[col], vc["count"], strict=True)}
