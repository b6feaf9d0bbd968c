"""``burstbench demo`` as a user runs it: a subprocess, real engine, real files, a real browser."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import polars as pl
import pytest
from chromium_cdp import CHROMIUM, FIGURE_COUNT_JS, RENDERED_JS, Browser

from burstbench import demo as demo_mod
from burstbench.errors import BurstbenchError, UsageError

REQUESTS = 40


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    # time scale 4: the engine and the replay run 4x faster, so the test takes seconds
    cmd = [sys.executable, "-m", "burstbench", "demo", "--out", str(out), "--requests", str(REQUESTS),
           "--seed", "3", "--time-scale", "4", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    return out, p


def test_demo_writes_every_artefact(demo_run):
    out, p = demo_run
    assert p.returncode == 0, p.stderr[-3000:]
    head = json.loads(p.stdout)
    for name in ("report.html", "results.duckdb", "trace.parquet"):
        assert (out / name).stat().st_size > 0
    # progress and the headline numbers went to stderr
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "report:", "TTFT", "attainment"):
        assert step in p.stderr
    trace = pl.read_parquet(out / "trace.parquet")
    assert trace.height == REQUESTS
    con = duckdb.connect(str(out / "results.duckdb"), read_only=True)
    runs = con.execute("SELECT run_id, status, label FROM runs").fetchall()
    assert runs == [(head["run_id"], "done", "demo")]
    n, ok = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM requests").fetchone()
    assert n == REQUESTS == head["requests"]
    assert ok == head["completed"] and ok >= REQUESTS - 2
    # the headline TTFT p50 is the store's, recomputed here with numpy-style interpolation
    p50 = con.execute(
        "SELECT quantile_cont((first_token_s - sent_s) * 1000, 0.5) FROM requests WHERE status = 'ok'"
    ).fetchone()[0]
    assert head["ttft_ms"]["p50"] == pytest.approx(p50, rel=1e-9)
    assert con.execute("SELECT count(*) FROM telemetry WHERE source = 'server'").fetchone()[0] > 0
    con.close()
    # SLOs shrink with the time scale (defaults ttft=250ms,tpot=35ms at 4x)
    assert head["slo"] == "ttft=62.5ms,tpot=8.75ms"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_demo_report_renders_in_chromium(demo_run):
    out, p = demo_run
    assert p.returncode == 0, p.stderr[-3000:]
    async with Browser() as b:
        await b.open(out / "report.html")
        n = await b.eval(FIGURE_COUNT_JS)
        rendered = await b.wait_for(f"({RENDERED_JS}) >= {n} ? ({RENDERED_JS}) : 0", timeout=90)
        assert n >= 20 and rendered == n
        assert b.console_errors() == []


def test_demo_names_a_missing_piece(monkeypatch):
    monkeypatch.setitem(demo_mod.PIECES, "load generator (loadgen.runner)",
                        ("burstbench.loadgen.no_such_module", "execute"))
    with pytest.raises(demo_mod.MissingPieceError, match=r"load generator \(loadgen.runner\)"):
        demo_mod.require("load generator (loadgen.runner)")
    monkeypatch.setitem(demo_mod.PIECES, "analysis (analysis.metrics)", ("burstbench.analysis.metrics", "nope"))
    with pytest.raises(demo_mod.MissingPieceError, match=r"analysis\.metrics\.nope"):
        demo_mod.require("analysis (analysis.metrics)")
    assert issubclass(demo_mod.MissingPieceError, BurstbenchError)


@pytest.mark.parametrize(("kwargs", "words"), [({"requests": 0}, "--requests"), ({"rate": -1.0}, "positive"),
                                               ({"slo": "ttft=fast"}, "slo")])
def test_demo_rejects_bad_options_before_starting(tmp_path, kwargs, words):
    with pytest.raises(UsageError, match=words):
        demo_mod.run_demo(tmp_path / "d", progress=False, **kwargs)
    assert not (tmp_path / "d" / "results.duckdb").exists()


def test_demo_unwritable_out_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot create the folder"):
        demo_mod.run_demo(tmp_path / "file" / "sub", progress=False)
