"""``characterise``: hand-checked small traces, known processes, and the shipped BurstGPT file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench.cli import main
from burstbench.errors import InputError
from burstbench.traces.schema import Trace, conform, load_trace
from burstbench.traces.stats import characterise, detect_resolution


def make(t, inp=None, out=None, **cols) -> Trace:
    n = len(t)
    df = pl.DataFrame(
        {
            "arrival_s": np.asarray(t, dtype=float),
            "input_tokens": np.arange(1, n + 1) if inp is None else inp,
            "output_tokens": np.arange(1, n + 1) if out is None else out,
            **cols,
        }
    )
    return Trace(conform(df))


def test_small_trace_by_hand() -> None:
    s = characterise(make([0, 0, 1, 3, 3, 3, 10], inp=[1, 2, 3, 4, 5, 6, 70]), window_s=5)
    assert s["requests"] == 7 and s["span_s"] == 10
    assert s["mean_rate"] == pytest.approx(0.7)
    # gaps: 0, 1, 2, 0, 0, 7
    assert s["inter_arrival_s"]["mean"] == pytest.approx(10 / 6)
    assert s["inter_arrival_s"]["median"] == pytest.approx(0.5)
    assert s["timestamps"]["tied_share"] == pytest.approx(3 / 6)
    assert s["timestamps"]["resolution_s"] == 1.0
    # windows [0,5): 6 requests, [5,10]: 1 request
    assert s["windows"]["rate"] == pytest.approx([6 / 5, 1 / 5])
    assert s["peak_rate"] == pytest.approx(1.2)
    assert s["input_tokens"]["max"] == 70 and s["input_tokens"]["median"] == 4
    assert s["input_tokens"]["mean"] == pytest.approx(91 / 7)


def test_poisson_process_looks_poisson() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    t = np.cumsum(rng.exponential(0.5, n))
    s = characterise(make(t - t[0]), window_s=600)
    # CV of exponential gaps is 1; its sampling se is about 1/sqrt(n).
    assert s["inter_arrival_s"]["cv"] == pytest.approx(1.0, abs=5 / math.sqrt(n))
    for k in ("1s", "10s", "60s"):
        assert s["dispersion"][k] == pytest.approx(1.0, abs=0.15)
    assert s["windows"]["cv"]["median"] == pytest.approx(1.0, abs=0.1)
    assert s["timestamps"]["resolution_s"] is None


def test_constant_rate_has_no_burstiness() -> None:
    s = characterise(make(np.arange(1000) * 0.25))
    assert s["inter_arrival_s"]["cv"] == pytest.approx(0.0, abs=1e-9)
    assert s["dispersion"]["1s"] == pytest.approx(0.0, abs=1e-9)


def test_bursty_process_has_growing_dispersion() -> None:
    rng = np.random.default_rng(1)
    # 60 s ON at 20 req/s, 240 s OFF, repeated.
    t = np.concatenate([k * 300 + np.sort(rng.uniform(0, 60, 1200)) for k in range(20)])
    s = characterise(make(t))
    d = s["dispersion"]
    assert d["1s"] < d["10s"] < d["60s"] and d["60s"] > 100


def test_correlations() -> None:
    x = np.arange(1, 201)
    s = characterise(make(np.arange(200.0), inp=x, out=x**3))
    assert s["token_correlation"]["spearman"] == pytest.approx(1.0)
    assert s["token_correlation"]["pearson"] < 0.95


def test_models_tenants_and_failure_rates() -> None:
    tr = make(
        [0, 1, 2, 3, 4],
        model=["a", "a", "a", "b", "b"],
        tenant=["x", "y", "x", "x", None],
        failed=[True, False, False, True, True],
    )
    s = characterise(tr)
    assert s["models"]["a"] == {"count": 3, "failure_rate": pytest.approx(1 / 3)}
    assert s["models"]["b"] == {"count": 2, "failure_rate": 1.0}
    assert s["tenants"]["x"]["count"] == 3 and s["tenants"]["(none)"]["count"] == 1
    assert s["failed"] == {"count": 3, "rate": pytest.approx(0.6)}


def test_sessions() -> None:
    tr = make([0, 10, 30, 5], session_id=["s1", "s1", "s1", "s2"], turn=[1, 2, 3, 1])
    ss = characterise(tr)["sessions"]
    assert ss["sessions"] == 2 and ss["single_turn_share"] == 0.5
    assert ss["turns"]["max"] == 3 and ss["turns"]["mean"] == 2
    assert ss["think_time_s"]["median"] == pytest.approx(15.0)
    assert characterise(make([0, 1, 2]))["sessions"] is None


def test_shipped_burstgpt_file(burstgpt_v1: Path) -> None:
    s = characterise(load_trace(burstgpt_v1))
    raw = pl.read_csv(burstgpt_v1)
    assert s["requests"] == raw.height
    assert s["span_s"] == raw["Timestamp"].max() - raw["Timestamp"].min()
    assert s["timestamps"]["resolution_s"] == 1.0
    assert s["failed"]["count"] == int((raw["Response tokens"] == 0).sum())
    counts = raw["Model"].value_counts()
    for m, c in zip(counts["Model"], counts["count"], strict=True):
        assert s["models"][m]["count"] == c
    json.dumps(s, allow_nan=False)  # strictly JSON-able


def test_bad_input() -> None:
    with pytest.raises(InputError, match="empty"):
        characterise(make([]))
    with pytest.raises(InputError, match="window"):
        characterise(make([0, 1]), window_s=0)


def test_detect_resolution() -> None:
    assert detect_resolution(np.array([0.0, 1.5, 3.25])) == 0.01
    assert detect_resolution(np.array([0.0, 1.5, 3.0])) == 0.1
    assert detect_resolution(np.array([0.0, 0.001, 0.004])) == 1e-3
    assert detect_resolution(np.array([0.0, 60.0, 180.0])) == 60.0
    assert detect_resolution(np.random.default_rng(0).random(100)) is None


def test_cli_json_and_table(azure_conv: Path, capsys) -> None:
    assert main(["trace", "stats", str(azure_conv), "--window", "600", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["requests"] == 19366 and out["windows"]["window_s"] == 600
    assert "inter-arrival CV" in cap.err
    assert main(["trace", "stats", "/no/such/file.parquet"]) == 3
    assert "no such file" in capsys.readouterr().err
