"""Synthesis and replay: determinism, each process's defining property, round trips through fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import special

from burstbench.cli import main
from burstbench.errors import InputError, UsageError
from burstbench.traces.fit import fit_continuous, fit_trace
from burstbench.traces.presets import preset
from burstbench.traces.processes import mean_rate, with_rate
from burstbench.traces.schema import load_trace, read_trace
from burstbench.traces.spec import (
    ArrivalSpec,
    Dist,
    JointSpec,
    LengthSpec,
    PrefixSpec,
    SessionSpec,
    WindowSpec,
    WorkloadSpec,
)
from burstbench.traces.synth import replay, synthesise

LOGN = Dist("lognormal", {"s": 0.7, "scale": 300.0})


def spec_of(process: str, params: dict, **kw) -> WorkloadSpec:
    return WorkloadSpec(ArrivalSpec(process, params, kw.pop("windows", None)), LengthSpec(LOGN, LOGN), **kw)


def gaps(tr) -> np.ndarray:
    return np.diff(tr.df["arrival_s"].to_numpy())


def within(est: float, true: float, se: float, k: float = 4.5) -> bool:
    return abs(est - true) < k * se


def test_same_seed_same_trace_other_seed_differs() -> None:
    spec = preset("mooncake-prefix")
    a = synthesise(spec, seed=7, duration_s=30)
    b = synthesise(spec, seed=7, duration_s=30)
    c = synthesise(spec, seed=8, duration_s=30)
    assert a.df.equals(b.df)
    assert not a.df.equals(c.df)


def test_vllm_gamma_parameterisation_and_round_trip() -> None:
    """shape = burstiness, scale = 1/(rate*burstiness); fitting gives them back."""
    n = 30_000
    rate, b = 4.0, 0.5
    spec = WorkloadSpec(
        ArrivalSpec("gamma", {"rate": rate, "burstiness": b}),
        LengthSpec(
            Dist("lognormal", {"s": 0.8, "scale": 400.0}),
            Dist("gamma", {"shape": 2.0, "scale": 100.0}),
            JointSpec("gaussian-copula", 0.5),
        ),
        context_limit=1_000_000,
    )
    tr = synthesise(spec, seed=1, requests=n)
    assert len(tr) == n
    fit = fit_trace(tr)
    g = fit.arrivals.get("gamma")
    a, th = b, 1 / (rate * b)
    cov = np.linalg.inv(np.array([[special.polygamma(1, a), 1 / th], [1 / th, a / th**2]])) / n
    assert fit.arrivals.best.family == "gamma"
    assert within(g.params["shape"], a, math.sqrt(cov[0, 0]))
    assert within(g.params["scale"], th, math.sqrt(cov[1, 1]))
    li = fit.input_tokens.get("lognormal")
    assert fit.input_tokens.best.family == "lognormal"
    assert within(li.params["s"], 0.8, 0.8 / math.sqrt(2 * n))
    assert within(li.params["scale"], 400, 400 * 0.8 / math.sqrt(n))
    go = fit.output_tokens.get("gamma")
    cov = np.linalg.inv(np.array([[special.polygamma(1, 2.0), 1 / 100], [1 / 100, 2.0 / 100**2]])) / n
    assert within(go.params["shape"], 2.0, math.sqrt(cov[0, 0]))
    assert fit.joint.significant and fit.joint.copula_rho == pytest.approx(0.5, abs=0.03)
    # The spec the fit writes synthesises the same process again.
    spec2 = fit.to_spec()
    assert spec2.arrivals.process == "gamma" and spec2.lengths.joint.method == "gaussian-copula"
    again = fit_trace(synthesise(spec2, seed=2, requests=n)).arrivals.get("gamma")
    assert within(again.params["shape"], a, 2 * math.sqrt(np.linalg.inv(
        np.array([[special.polygamma(1, a), 1 / th], [1 / th, a / th**2]]))[0, 0] / n))  # fmt: skip


@pytest.mark.parametrize(
    ("process", "params", "family", "names"),
    [
        ("weibull", {"shape": 0.6, "scale": 0.5}, "weibull", ("shape", "scale")),
        ("lognormal", {"s": 1.2, "scale": 0.3}, "lognormal", ("s", "scale")),
        ("poisson", {"rate": 5.0}, "exponential", ("scale",)),
    ],
)
def test_renewal_processes_round_trip(process: str, params: dict, family: str, names: tuple) -> None:
    n = 20_000
    tr = synthesise(spec_of(process, params), seed=3, requests=n)
    c = fit_continuous(gaps(tr), "gaps")
    assert c.best.family == family or process == "poisson"
    got = c.get(family).params
    if process == "poisson":
        assert within(got["scale"], 0.2, 0.2 / math.sqrt(n))
    elif process == "weibull":
        assert within(got["shape"], 0.6, math.sqrt(6 / math.pi**2 * 0.36 / n))
    else:
        assert within(got["s"], 1.2, 1.2 / math.sqrt(2 * n))
        assert within(got["scale"], 0.3, 0.3 * 1.2 / math.sqrt(n))


def test_constant_and_duration_limits() -> None:
    tr = synthesise(spec_of("constant", {"rate": 4.0}), seed=0, duration_s=10)
    assert len(tr) == 40
    assert np.allclose(gaps(tr), 0.25)
    tr = synthesise(spec_of("poisson", {"rate": 50.0}), seed=0, duration_s=100)
    assert tr.df["arrival_s"].max() < 100
    assert within(len(tr), 5000, math.sqrt(5000))


def test_piecewise_windows_and_fill() -> None:
    wins = [
        WindowSpec(0, 100, "poisson", {"rate": 2.0}),
        WindowSpec(100, 200, "gamma", {"rate": 20.0, "burstiness": 0.5}, fill=True),
        WindowSpec(300, 400, "constant", {"rate": 1.0}),
    ]
    tr = synthesise(spec_of("piecewise", {}, windows=wins), seed=4, duration_s=1000)
    t = tr.df["arrival_s"].to_numpy()
    c = [int(((t >= a) & (t < b)).sum()) for a, b in ((0, 100), (100, 200), (200, 300), (300, 400))]
    assert within(c[0], 200, math.sqrt(200))
    assert c[2] == 0 and c[3] == 100
    w = t[(t >= 100) & (t < 200)]
    assert w[0] == pytest.approx(100.0)  # filled: the window's gaps tile it from its start
    assert t.max() < 400
    assert mean_rate(spec_of("piecewise", {}, windows=wins).arrivals) == pytest.approx((200 + 2000 + 100) / 300)


def test_mmpp_is_bursty_at_the_right_mean_rate() -> None:
    p = {"rate_on": 20.0, "rate_off": 0.0, "mean_on_s": 10.0, "mean_off_s": 30.0}
    tr = synthesise(spec_of("mmpp", p), seed=5, duration_s=20_000)
    assert mean_rate(spec_of("mmpp", p).arrivals) == 5.0
    assert len(tr) / 20_000 == pytest.approx(5.0, rel=0.1)
    g = gaps(tr)
    assert g.std() / g.mean() > 2  # far burstier than Poisson
    assert (g > 10).sum() > 100  # OFF periods show up as long silences


def test_diurnal_thinning_follows_the_rate_curve() -> None:
    p = {"mean_rate": 10.0, "amplitude": 0.8, "period_s": 1000.0, "peak_s": 250.0}
    t = synthesise(spec_of("diurnal", p), seed=6, duration_s=10_000).df["arrival_s"].to_numpy()
    phase = (t % 1000.0) - 250.0
    peak = (np.abs(phase) < 50).sum()
    trough = (np.abs(phase - 500) < 50).sum()
    # Expected counts: integral of the rate over +-50 s around peak and trough, over 10 periods.
    e_peak = 10 * 10 * (100 + 0.8 * 1000 / math.pi * math.sin(math.pi * 100 / 1000))
    e_trough = 10 * 10 * (100 - 0.8 * 1000 / math.pi * math.sin(math.pi * 100 / 1000))
    assert within(peak, e_peak, math.sqrt(e_peak)) and within(trough, e_trough, math.sqrt(e_trough))


@pytest.mark.parametrize("shape", ["linear", "exponential"])
def test_ramps(shape: str) -> None:
    p = {"start_rate": 1.0, "end_rate": 20.0, "ramp_s": 1000.0, "shape": shape}
    t = synthesise(spec_of("ramp", p), seed=7, duration_s=1000).df["arrival_s"].to_numpy()
    assert within(len(t), mean_rate(spec_of("ramp", p).arrivals) * 1000, 4 * math.sqrt(len(t)))
    first, last = (t < 100).sum(), (t >= 900).sum()
    assert last > 5 * first


def test_with_rate_keeps_burst_shape() -> None:
    proc = ArrivalSpec("lognormal", {"s": 1.5, "scale": 0.2})
    faster = with_rate(proc, 50.0)
    assert mean_rate(faster) == pytest.approx(50.0)
    assert faster.params["s"] == 1.5
    tr = synthesise(WorkloadSpec(proc, LengthSpec(LOGN, LOGN)), seed=1, requests=20_000, rate=50.0)
    g = gaps(tr)
    assert 1 / g.mean() == pytest.approx(50.0, rel=0.05)


def test_lengths_respect_the_context_limit() -> None:
    spec = spec_of("poisson", {"rate": 10.0}, context_limit=1000)
    spec.lengths = LengthSpec(Dist("lognormal", {"s": 1.5, "scale": 600.0}), Dist("lognormal", {"s": 1.5, "scale": 600.0}))
    df = synthesise(spec, seed=2, requests=5000).df
    assert (df["input_tokens"] + df["output_tokens"]).max() <= 1000
    assert df["input_tokens"].min() >= 1 and df["output_tokens"].min() >= 1
    assert (df["input_tokens"] + df["output_tokens"] == 1000).sum() > 100  # the tail piles up at the limit


def test_burstgpt_preset_recipe() -> None:
    tr = synthesise(preset("burstgpt"), seed=3, requests=20_000)
    df = tr.df
    assert df["input_tokens"].max() <= 1023 and df["output_tokens"].max() <= 1023
    g = fit_continuous(gaps(tr), "gaps").get("gamma").params
    a, th, n = 0.5, 2.0, 20_000
    cov = np.linalg.inv(np.array([[special.polygamma(1, a), 1 / th], [1 / th, a / th**2]])) / n
    assert within(g["shape"], a, math.sqrt(cov[0, 0])) and within(g["scale"], th, math.sqrt(cov[1, 1]))
    z = fit_trace(tr).input_tokens.get("zipf").params["a"]
    assert z == pytest.approx(1.1, abs=0.03)


def test_reasoning_preset_has_reasoning_share() -> None:
    spec = preset("reasoning-gamma", rate=3.0, burstiness=0.25)
    assert spec.arrivals.params == {"rate": 3.0, "burstiness": 0.25}
    tr = synthesise(spec, seed=4, requests=5000)
    share = tr.df["reasoning_share"].to_numpy()
    assert share.mean() == pytest.approx(0.74, abs=0.01) and share.min() >= 0 and share.max() <= 1
    df = tr.df
    assert (df["input_tokens"] + df["output_tokens"]).max() == 32768
    assert df["input_tokens"].median() < 200 and df["output_tokens"].median() > 2000


def test_sessions_grow_context_and_repeat_prefix_hashes() -> None:
    spec = spec_of(
        "poisson",
        {"rate": 1.0},
        context_limit=20_000,
        sessions=SessionSpec(Dist("constant", {"value": 4}), Dist("exponential", {"scale": 5.0})),
    )
    df = synthesise(spec, seed=5, duration_s=2000).df
    assert df["turn"].max() == 4
    by = df.sort(["session_id", "turn"]).group_by("session_id", maintain_order=True)
    checked = 0
    for _, s in by:
        inp, out, hs = s["input_tokens"].to_list(), s["output_tokens"].to_list(), s["prefix_hashes"].to_list()
        t = s["arrival_s"].to_list()
        for j in range(1, len(inp)):
            assert t[j] > t[j - 1]
            assert inp[j] > inp[j - 1] + out[j - 1]  # earlier turns + a new message
            assert hs[j][: len(hs[j - 1])] == hs[j - 1]  # earlier blocks hash the same
            checked += 1
        for j in range(len(inp)):
            assert len(hs[j]) == inp[j] // 16
    assert checked > 500
    # Different sessions without a shared prefix share no block.
    firsts = [h[0] for h in df.filter(pl.col("turn") == 1)["prefix_hashes"].to_list() if h]
    assert len(set(firsts)) == len(firsts)


def test_shared_prefix_groups() -> None:
    spec = spec_of("poisson", {"rate": 5.0}, prefix=PrefixSpec(3, Dist("constant", {"value": 160}), 1.0))
    df = synthesise(spec, seed=6, duration_s=100).df
    first10 = {tuple(h[:10]) for h in df["prefix_hashes"].to_list()}
    assert len(first10) == 3  # 160 tokens = 10 blocks, one chain per group
    assert all(len(h) == n // 16 for h, n in zip(df["prefix_hashes"].to_list(), df["input_tokens"].to_list(), strict=True))


def test_mooncake_preset_reuses_prefixes() -> None:
    df = synthesise(preset("mooncake-prefix"), seed=7, duration_s=300).df
    seen: set[int] = set()
    reuse = 0
    for h in df["prefix_hashes"].to_list():
        reuse += bool(h) and h[0] in seen
        seen.update(h[:1])
    assert reuse / df.height == pytest.approx(0.45, abs=0.06)


def test_usage_errors() -> None:
    spec = spec_of("poisson", {"rate": 1.0})
    with pytest.raises(UsageError, match="--duration"):
        synthesise(spec, seed=0)
    with pytest.raises(UsageError, match="--rate"):
        synthesise(spec, seed=0, requests=10, rate=0)
    with pytest.raises(UsageError, match="gamma"):
        synthesise(spec, seed=0, requests=10, burstiness=0.5)
    with pytest.raises(UsageError, match="unknown preset"):
        preset("nope")
    with pytest.raises(UsageError, match="override"):
        preset("burstgpt", colour="red")


def test_replay_transforms(burstgpt_v1: Path) -> None:
    tr = load_trace(burstgpt_v1)
    t0 = tr.df["arrival_s"].to_numpy()
    fast = replay(tr, time_scale=0.5)
    assert np.allclose(fast.df["arrival_s"].to_numpy(), t0 * 0.5)
    assert tr.meta["timestamp_resolution_s"] == 1.0 and fast.meta["timestamp_resolution_s"] == 0.5
    r = replay(tr, rate=2.0)
    t = r.df["arrival_s"].to_numpy()
    assert (len(t) - 1) / t[-1] == pytest.approx(2.0)
    g0, g1 = np.diff(t0), np.diff(t)
    assert g1.std() / g1.mean() == pytest.approx(g0.std() / g0.mean())  # burst shape kept
    w = replay(tr, window=(1000, 5000))
    expect = int(((t0 >= 1000) & (t0 < 5000)).sum())
    assert len(w) == expect and w.df["arrival_s"].min() == 0
    gpt4 = replay(tr, model="GPT-4")
    assert len(gpt4) == int((tr.df["model"] == "GPT-4").sum()) and set(gpt4.df["model"]) == {"GPT-4"}
    s1, s2 = replay(tr, sample=0.5, seed=1), replay(tr, sample=0.5, seed=1)
    assert s1.df.equals(s2.df) and 150 < len(s1) < 250
    assert len(replay(tr, sample=100, seed=2)) == 100
    assert gpt4.meta["replay"] == {"model": "GPT-4"} and gpt4.meta["source_format"] == "burstgpt"
    with pytest.raises(InputError, match="no request has model"):
        replay(tr, model="nope")
    with pytest.raises(UsageError, match="sample"):
        replay(tr, sample=1.5)
    with pytest.raises(UsageError, match="window"):
        replay(tr, window=(10, 5))


def test_cli_synth_preset_is_deterministic(tmp_path: Path, capsys) -> None:
    args = ["trace", "synth", "--preset", "burstgpt", "--requests", "500", "--seed", "9", "--json"]
    assert main([*args, "-o", str(tmp_path / "a.parquet")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.parquet")]) == 0
    a, b = read_trace(tmp_path / "a.parquet"), read_trace(tmp_path / "b.parquet")
    assert a.df.equals(b.df) and len(a) == 500
    assert a.meta["preset"] == "burstgpt" and a.meta["seed"] == 9
    assert main(["trace", "synth", "-o", str(tmp_path / "c.parquet")]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_cli_fit_then_synth(azure_conv: Path, tmp_path: Path, capsys) -> None:
    import json

    spec = tmp_path / "spec.yaml"
    assert main(["trace", "fit", str(azure_conv), "-o", str(spec), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arrivals"]["best"] == "gamma"
    assert main(["trace", "synth", str(spec), "-o", str(tmp_path / "s.parquet"), "--seed", "1"]) == 0
    s = read_trace(tmp_path / "s.parquet")
    assert s.meta["spec_file"] == str(spec)
    # The synthetic copy lasts as long as the source (spec duration) at its rate.
    assert len(s) == pytest.approx(19366, rel=0.05)
    g = fit_trace(s).arrivals.get("gamma").params
    assert g["shape"] == pytest.approx(0.871, rel=0.05)


def test_sessions_round_trip_through_fit() -> None:
    spec = spec_of(
        "poisson",
        {"rate": 0.5},
        sessions=SessionSpec(Dist("geometric", {"p": 0.4}), Dist("exponential", {"scale": 20.0})),
    )
    fit = fit_trace(synthesise(spec, seed=11, duration_s=20_000))
    sf = fit.sessions
    assert sf is not None
    n = sf.sessions
    assert within(sf.starts.get("exponential").params["scale"], 2.0, 2.0 / math.sqrt(n))
    assert sf.think_time_s.best.family in ("exponential", "gamma", "weibull")
    assert within(sf.think_time_s.get("exponential").params["scale"], 20.0, 20.0 / math.sqrt(sf.think_time_s.n))
    # Geometric(p) turns: single-turn share p, mean 1/p.
    assert within(1 - sf.multi_turn_share, 0.4, math.sqrt(0.24 / n))
    # First-turn prompts are the fresh-message model, not the grown prompts.
    li = sf.first_input.get("lognormal")
    assert within(li.params["scale"], 300.0, 300 * 0.7 / math.sqrt(sf.first_input.n))
    back = fit.to_spec()
    assert back.sessions is not None and back.arrivals.process == "exponential"
    again = synthesise(back, seed=12, duration_s=5000).df
    assert again["turn"].max() > 3


def test_burstgpt_sessions_file_gives_a_session_spec(burstgpt_v3: Path, tmp_path: Path) -> None:
    spec = fit_trace(load_trace(burstgpt_v3)).to_spec()
    assert spec.sessions is not None
    p = spec.to_yaml(tmp_path / "s.yaml")
    tr = synthesise(WorkloadSpec.from_yaml(p), seed=1, duration_s=20_000)
    assert tr.df["session_id"].n_unique() < len(tr)
    assert tr.df["prefix_hashes"].null_count() == 0


def test_too_many_prefix_hashes_is_a_usage_error(monkeypatch) -> None:
    from burstbench.traces import synth

    monkeypatch.setattr(synth, "MAX_HASHES", 1000)
    with pytest.raises(UsageError, match="block_size"):
        synthesise(preset("mooncake-prefix"), seed=0, requests=50)


def test_cli_replay_and_piecewise_fit(burstgpt_v1: Path, azure_conv: Path, tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "r.parquet"
    args = ["trace", "synth", "--replay", str(burstgpt_v1), "--model", "ChatGPT", "--rate", "0.5", "-o", str(out)]
    assert main(args) == 0
    r = read_trace(out)
    raw = pl.read_csv(burstgpt_v1).filter(pl.col("Model") == "ChatGPT")
    assert len(r) == raw.height and set(r.df["model"]) == {"ChatGPT"}
    assert (len(r) - 1) / r.duration_s == pytest.approx(0.5)
    assert r.meta["replay"] == {"model": "ChatGPT", "rate": 0.5}
    assert main(["trace", "synth", "--replay", str(burstgpt_v1), "--window", "abc", "-o", str(out)]) == 2
    assert main(["trace", "synth", "--preset", "burstgpt", "--window", "0:10", "-o", str(out)]) == 2
    capsys.readouterr()
    spec = tmp_path / "p.yaml"
    assert main(["trace", "fit", str(azure_conv), "--window", "1200", "-o", str(spec), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["window_s"] == 1200 and len(j["windows"]) == 3
    assert all(w["best"] in ("exponential", "gamma", "weibull", "lognormal") for w in j["windows"])
    assert WorkloadSpec.from_yaml(spec).arrivals.process == "piecewise"


def test_mmpp_chunks_continue_without_artificial_silences() -> None:
    # Both states at rate 10: arrivals must look Poisson across chunk boundaries, which
    # the generator uses when only a request count is given.
    from burstbench.traces.processes import _mmpp

    p = {"rate_on": 10.0, "rate_off": 10.0, "mean_on_s": 30.0, "mean_off_s": 30.0}
    rng = np.random.default_rng(8)
    parts, t0, on = [], 0.0, True
    for _ in range(50):
        seg, on, t0 = _mmpp(p, rng, t0, t0 + 5.0, on)  # chunks shorter than a period
        parts.append(seg)
    t = np.concatenate(parts)
    g = np.diff(t)
    assert np.all(g >= 0)
    assert g.max() < 2.0  # P(an exponential gap with mean 0.1 s exceeds 2 s) = e^-20
    assert len(t) / t0 == pytest.approx(10.0, rel=0.05)
