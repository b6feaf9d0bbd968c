"""SLO parsing, goodput semantics, attainment over time, per tenant, Jain's index, Wilson."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_metrics import Req, write_run

from burstbench.analysis.metrics import open_store, summarize
from burstbench.analysis.slo import (
    attainment_over_time,
    format_slo,
    jain_index,
    parse_slo,
    per_tenant,
    wilson_interval,
)
from burstbench.errors import UsageError
from burstbench.store import ResultsStore


def test_parse_slo_units_and_names() -> None:
    assert parse_slo("ttft=500ms,tpot=50ms,e2el=10s") == {"ttft": 0.5, "tpot": 0.05, "e2el": 10.0}
    assert parse_slo(" ttft = 250000us , e2el<=1.5min ") == {"ttft": 0.25, "e2el": 90.0}
    assert parse_slo("ttfvt=1s,itl_request_mean=20ms,schedule_lag=5ms,e2el_from_schedule=3s") == {
        "ttfvt": 1.0, "itl_request_mean": 0.02, "schedule_lag": 0.005, "e2el_from_schedule": 3.0}
    # ITL pools chunk gaps: no request has one to judge, and the message names what to use
    for name in ("itl", "itl_chunk"):
        with pytest.raises(UsageError, match=r"bound tpot .*AIPerf and GuideLLM call ITL.* or itl_request_mean"):
            parse_slo(f"{name}=20ms")
    assert parse_slo("latency=2s") == {"e2el": 2.0}
    assert parse_slo(format_slo({"ttft": 0.5, "tpot": 0.05})) == {"ttft": 0.5, "tpot": 0.05}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ttft=500", "'ttft=500' has no unit"),
        ("ttft=500ms,tpot", "'tpot' is not NAME=VALUEUNIT"),
        ("ttfx=1s", "unknown metric 'ttfx'"),
        ("ttft=5parsecs", "unknown unit 'parsecs'"),
        ("ttft=1s,ttft=2s", "names 'ttft' twice"),
        ("ttft=0ms", "positive time"),
        ("", "empty"),
        (",,", "empty"),
        ("ttft=fast", "not NAME=VALUEUNIT"),
    ],
)
def test_parse_slo_errors_name_the_part(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_slo(text)


def test_wilson_interval_known_values_and_coverage() -> None:
    lo, hi = wilson_interval(9, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.5958, 0.9821)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Coverage of the 95% interval for p = 0.9, n = 200 is close to 95%.
    rng = np.random.default_rng(0)
    ks = rng.binomial(200, 0.9, 4000)
    cover = np.mean([lo <= 0.9 <= hi for lo, hi in (wilson_interval(int(k), 200) for k in ks)])
    assert 0.93 <= cover <= 0.97


def test_jain_index() -> None:
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_index([1.0, 0.5]) == pytest.approx(2.25 / 2.5)
    assert jain_index([]) is None


def _run(tmp_path: Path, reqs: list[Req], duration: float) -> tuple[Path, str]:
    db = tmp_path / "s.duckdb"
    with ResultsStore(db) as st:
        rid = write_run(st, reqs, duration=duration)
    return db, rid


def test_goodput_semantics_of_missing_values(tmp_path: Path) -> None:
    reqs = [
        # one token: TPOT counts as 0 (vLLM), meets any TPOT SLO
        Req(0.0, 0.0, True, 1, [0.25], [1], out_server=1, visible=0.25, end=0.25),
        # no visible token (reasoning only): fails a TTFVT SLO, meets TTFT
        Req(0.0, 0.0, True, 1, [0.25, 0.5], [1, 1], out_server=2, visible=None, end=0.5),
        # two chunks 0.5 s apart: request ITL 500 ms
        Req(0.0, 0.0, True, 1, [0.25, 0.75], [1, 1], out_server=2, visible=0.25, end=0.75),
    ]
    db, rid = _run(tmp_path, reqs, 1.0)
    g = summarize(db, rid, slo="tpot=1ms")["goodput"]
    assert g["per_metric_attainment"]["tpot"] == pytest.approx(1 / 3)
    g = summarize(db, rid, slo="ttfvt=1s,ttft=1s")["goodput"]
    assert g["per_metric_attainment"] == {"ttfvt": pytest.approx(2 / 3), "ttft": pytest.approx(1.0)}
    g = summarize(db, rid, slo="itl_request_mean=400ms")["goodput"]
    # the single-chunk request has no chunk gap and cannot be shown to meet it
    assert g["per_metric_attainment"]["itl_request_mean"] == pytest.approx(1 / 3)
    assert g["slo_attainment_ci95"][0] < 1 / 3 < g["slo_attainment_ci95"][1]


def test_attainment_over_time_and_per_tenant(tmp_path: Path) -> None:
    reqs = []
    # window [0,1): 4 requests, 3 fast; window [1,2): none; window [2,3): 2 requests, both slow
    for i, (t, ttft, tenant) in enumerate([(0.0, 0.1, "a"), (0.25, 0.1, "a"), (0.5, 0.1, "b"), (0.75, 0.9, "b"),
                                           (2.25, 0.9, "a"), (2.5, 0.8, "b")]):
        reqs.append(Req(t, t, True, 1, [t + ttft, t + ttft + 0.01], [1, 1], out_server=2, visible=t + ttft,
                        end=t + ttft + 0.01, tenant=tenant))
        assert i < 6
    reqs.append(Req(2.75, 2.75, False, 1, [], [], end=2.9, status="timeout", tenant="b"))
    db, rid = _run(tmp_path, reqs, 3.0)
    slo = {"ttft": 0.5}
    con = open_store(db)
    try:
        rows = attainment_over_time(con, rid, slo, 1.0)
        assert [(r["t_start_s"], r["requests"], r["good"], r["failed"]) for r in rows] == [
            (0.0, 4, 3, 0), (1.0, 0, 0, 0), (2.0, 3, 0, 1)]
        assert rows[0]["attainment"] == pytest.approx(0.75) and rows[1]["attainment"] is None
        assert rows[2]["per_metric"]["ttft"] == 0.0
        pt = per_tenant(con, rid, slo)
        by = {t["tenant"]: t for t in pt["tenants"]}
        assert by["a"]["slo_attainment"] == pytest.approx(2 / 3)
        assert by["b"]["slo_attainment"] == pytest.approx(1 / 4) and by["b"]["failed"] == 1
        assert pt["jain_index"] == pytest.approx((2 / 3 + 1 / 4) ** 2 / (2 * ((2 / 3) ** 2 + (1 / 4) ** 2)))
        assert by["a"]["request_goodput"] == pytest.approx(2 / 3.0)
        with pytest.raises(UsageError, match="positive"):
            attainment_over_time(con, rid, slo, 0)
        with pytest.raises(UsageError, match="unknown"):
            per_tenant(con, rid, {"nope": 1.0})
    finally:
        con.close()
