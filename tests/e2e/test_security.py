"""Security, end to end: the reference engine's defaults and bounds, credentials that never
land anywhere, reports that never run injected markup, and a locked ``analyze --sql``.

Everything runs for real: ``burstbench serve`` and ``burstbench run``/``report``/``analyze``
as subprocesses (so the captured output is what a user's terminal and logs get), raw
aiohttp requests for the server's limits, and headless Chromium for the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import polars as pl
import psutil
import pytest
from aiohttp import web
from app_server import start_app
from chromium_cdp import CHROMIUM, Browser
from live_server import live_server
from url_process import url_process

from burstbench.analysis.sql import run_sql
from burstbench.errors import BurstbenchError
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.reports.build import build_report
from burstbench.traces.schema import Trace, conform, write_trace

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
KEY = "sk-bbSECRET-7f3a9c2e51d84b60"  # distinctive: any hit in an artefact is a leak
URL_PASSWORD = "urlpw-Q9x7ZK2mLw"
URL_QUERY_KEY = "qkey-R4t8YpV3nB"


@contextmanager
def serve(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``burstbench serve`` on a free port; yields (url, process) and stops it after."""
    with url_process("burstbench", "serve", "--port", "0", "--time-scale", "50", *args, env=ENV,
                     capture_stderr=True) as (url, proc):
        yield url, proc


def bb(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def small_trace(path: Path, n: int = 8, **cols: list) -> Path:
    df = pl.DataFrame({"arrival_s": [i * 0.02 for i in range(n)], "input_tokens": [12] * n,
                       "output_tokens": [3] * n, **cols})
    return write_trace(Trace(conform(df), {"source": "test"}), path)


# -- the reference engine: defaults and bounds ---------------------------------------------
def test_serve_binds_loopback_by_default():
    with serve() as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening, "no listening socket found"
        assert {a.ip for a in listening} == {"127.0.0.1"}
        assert {a.port for a in listening} == {port}


async def _post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as s:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with s.post(url + "/v1/completions", data=data,
                          headers={"Content-Type": "application/json", **(headers or {})}) as r:
            text = await r.text()
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = {}
            return r.status, parsed, text


def _openai_error(body: dict) -> str:
    """The OpenAI error object's message (asserting the shape clients parse)."""
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"]
    return body["error"]["message"]


async def test_bearer_token_is_checked():
    with serve("--api-key", KEY) as (url, _):
        ok_body = {"prompt": "hello there", "max_tokens": 2}
        status, body, _ = await _post(url, ok_body)
        assert status == 401
        _openai_error(body)
        for wrong in ("Bearer " + KEY[:-1], "Bearer " + KEY + "x", "Bearer ", "Basic " + KEY, KEY,
                      "Bearer " + KEY.upper()):
            status, body, text = await _post(url, ok_body, {"Authorization": wrong})
            assert status == 401, wrong
            assert KEY not in text  # the server never echoes what it was given
            _openai_error(body)
        status, body, _ = await _post(url, ok_body, {"Authorization": f"Bearer {KEY}"})
        assert status == 200, body
        assert body["choices"][0]["text"] is not None


async def test_oversize_requests_get_clean_4xx():
    with serve("--max-request-bytes", "4096", "--max-concurrent", "2") as (url, _):
        status, body, _ = await _post(url, {"prompt": "word " * 5000, "max_tokens": 2})
        assert status == 413
        assert "4096" in _openai_error(body)
        # prompt longer than the model's context (llama-3.1-8b: 131072 tokens) in a small body?
        # no: say it with max_tokens, the other half of the context check
        status, body, _ = await _post(url, {"prompt": "hello", "max_tokens": 10**9})
        assert status == 400
        _openai_error(body)
        assert body["error"]["param"] == "max_tokens"
        for bad in (-1, 0, "12", 1.5, True):
            status, body, _ = await _post(url, {"prompt": "hello", "max_tokens": bad})
            assert status == 400, bad
            _openai_error(body)
        status, body, _ = await _post(url, b"{not json")
        assert status == 400
        _openai_error(body)
        # concurrent streams: two long streams open, the third is refused with 429
        async with aiohttp.ClientSession() as s:
            long = {"prompt": "hello", "max_tokens": 100_000, "stream": True, "ignore_eos": True}
            resps = []
            try:
                for _ in range(2):
                    r = await s.post(url + "/v1/completions", json=long)
                    assert r.status == 200
                    await r.content.readline()  # the stream is really running
                    resps.append(r)
                status, body, _ = await _post(url, {"prompt": "hello", "max_tokens": 2})
                assert status == 429
                assert "concurrent" in _openai_error(body)
            finally:
                for r in resps:
                    r.close()


async def test_prompt_longer_than_the_context_is_refused():
    with serve("--model", "llama-3.1-8b") as (url, _):
        status, body, _ = await _post(url, {"prompt": "word " * 140_000, "max_tokens": 1})
        assert status == 400
        assert "131072" in _openai_error(body)
        assert body["error"]["code"] == "context_length_exceeded"


# -- credentials never reach an artefact -----------------------------------------------------
def _artefacts(tmp: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp)): p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


def test_credentials_never_reach_results_logs_or_reports(tmp_path):
    trace = small_trace(tmp_path / "t.parquet")
    out = tmp_path / "results.duckdb"
    env = {**ENV, "BB_TEST_KEY": KEY}
    logs: dict[str, str] = {}
    with serve("--api-key", KEY) as (url, server):
        port = url.rsplit(":", 1)[1]
        # 1. the right key, from the environment: the run succeeds
        r = bb("run", "--url", url, "--trace", str(trace), "-o", str(out), "--api-key-env", "BB_TEST_KEY",
               "--json", "--label", "good", env=env)
        logs["run-good"] = r.stdout + r.stderr
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["completed"] == 8
        # 2. keys in the URL (user:password and ?api_key=): accepted or refused, never recorded
        keyed = f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/v1?api_key={URL_QUERY_KEY}"
        r = bb("run", "--url", keyed, "--trace", str(trace), "-o", str(out), "--api-key-env", "BB_TEST_KEY",
               "--json", "--label", "url-keys", env=env)
        logs["run-url"] = r.stdout + r.stderr
        # 3. a wrong key: refused before the run starts (exit non-zero), recorded nowhere
        wrong = KEY[::-1]
        r = bb("run", "--url", url, "--trace", str(trace), "-o", str(out), "--api-key-env", "BB_TEST_KEY",
               "--json", "--label", "wrong-key", env={**ENV, "BB_TEST_KEY": wrong})
        logs["run-wrong"] = r.stdout + r.stderr
        assert r.returncode != 0
        server.send_signal(signal.SIGINT)
        srv_out, srv_err = server.communicate(timeout=10)
        logs["serve"] = srv_out + srv_err
    r = bb("analyze", str(out), "--json")
    logs["analyze"] = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    r = bb("report", str(out), "-o", str(tmp_path / "report.html"))
    logs["report"] = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    r = bb("analyze", str(out), "--sql", "SELECT endpoint, scenario, notes, end_reason FROM runs")
    logs["analyze-sql"] = r.stdout + r.stderr
    # the wrong key was refused up front (asking /v1/models, before any run row exists),
    # naming the variable, not its value; nothing of that run was recorded
    assert "BB_TEST_KEY" in logs["run-wrong"] and "401" in logs["run-wrong"]
    runs = {r[0]: r[1] for r in run_sql(out, "SELECT label, status FROM runs")["rows"]}
    assert runs["good"] == "done" and "wrong-key" not in runs
    n_url = run_sql(out, "SELECT count(*) FROM requests JOIN runs USING (run_id) WHERE label = 'url-keys'")
    assert n_url["rows"] == [[8]], "the URL-key run recorded its requests (ok or failed)"
    files = _artefacts(tmp_path)
    assert any(name.endswith(".duckdb") for name in files) and "report.html" in files
    secrets = {"api key": KEY, "wrong key": KEY[::-1], "url password": URL_PASSWORD, "url query key": URL_QUERY_KEY}
    for what, secret in secrets.items():
        for name, data in files.items():
            assert secret.encode() not in data, f"{what} found in {name}"
        for name, text in logs.items():
            if name == "serve" and what == "api key":
                continue  # the server was given it on its command line; it must not print it either:
            assert secret not in text, f"{what} found in the output of {name}"
    assert KEY not in logs["serve"], "burstbench serve printed its API key"


# -- reports escape every string from a trace, a server or an error -------------------------
PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    '"><svg onload="window.__pwned=3">',
    "</script><script>window.__pwned=4</script>",
    "';window.__pwned=5;//",
    "{{constructor.constructor('window.__pwned=6')()}}",
]


async def _evil_server() -> tuple[web.AppRunner, str]:
    """Answers every request with an OpenAI error whose message and type are payloads."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        i = int(request.headers.get("X-Seq", "0"))
        msg = " ".join(PAYLOADS) + f" #{i}"
        return web.json_response({"error": {"message": msg, "type": PAYLOADS[1], "code": PAYLOADS[3]}},
                                 status=400, reason="Bad <b>Request</b>")

    app = web.Application()
    app.router.add_post("/v1/completions", handle)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": PAYLOADS[0]}]})

    app.router.add_get("/v1/models", models)
    return await start_app(app, access_log=None)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_report_never_runs_markup_from_traces_servers_or_errors(tmp_path):
    n = 12
    trace = Trace(conform(pl.DataFrame({
        "arrival_s": [i * 0.01 for i in range(n)], "input_tokens": [10] * n, "output_tokens": [3] * n,
        "model": [PAYLOADS[i % len(PAYLOADS)] for i in range(n)],
        "tenant": [PAYLOADS[(i + 2) % len(PAYLOADS)] for i in range(n)],
        "session_id": [PAYLOADS[(i + 4) % len(PAYLOADS)] + str(i) for i in range(n)],
    })), {"source": PAYLOADS[0]})
    out = tmp_path / "r.duckdb"
    # a healthy server (payload model/tenant names in the rows) and an evil one (payload errors)
    with live_server(ttft_s=0.002, itl_s=0.001) as srv:
        await asyncio.to_thread(execute, trace, Scenario(url=srv.url, scrape_metrics=False), out,
                                label=PAYLOADS[2], progress=False)
    runner, evil = await _evil_server()
    try:
        await asyncio.to_thread(execute, trace, Scenario(url=evil, scrape_metrics=False), out,
                                label=PAYLOADS[3], progress=False)
    finally:
        await runner.cleanup()
    msgs = run_sql(out, "SELECT DISTINCT error_message FROM requests WHERE status <> 'ok'")["rows"]
    assert msgs and all(PAYLOADS[0] in m[0] for m in msgs), "the payload reached the results"
    trace_path = write_trace(trace, tmp_path / "evil.parquet")
    res = build_report(out, tmp_path / "report.html", trace=trace_path, slo="ttft=1s")
    html = res.path.read_text()
    for p in PAYLOADS[:4]:
        assert p not in html, f"unescaped payload {p!r}"
    async with Browser() as b:
        await b.open(res.path)
        await b.wait_for("document.readyState === 'complete'", timeout=60)
        await b.eval("window.dispatchEvent(new Event('resize')); 1")
        # hover/legend code paths format names again: give them a chance to run
        await b.eval("document.querySelectorAll('.fig').length")
        assert await b.eval("typeof window.__pwned") == "undefined"
        assert not any(u.endswith("/x") for u in b.requested_urls()), "an injected <img> was fetched"
    # the failures table shows the (escaped) server message
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


# -- analyze --sql is locked ---------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from burstbench.store import ResultsStore, RunInfo

    path = tmp_path_factory.mktemp("sql") / "r.duckdb"
    with ResultsStore(path) as s:
        s.create_run(RunInfo(backend="openai", endpoint="http://127.0.0.1:1"))
    return path


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "COPY (SELECT 1) TO '{tmp}/leak.csv'",
    "COPY runs TO '{tmp}/leak.parquet' (FORMAT parquet)",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "PRAGMA enable_external_access",
    "CREATE TABLE t AS SELECT 1",
    "SELECT 1; SET enable_external_access = true",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
])
def test_analyze_sql_cannot_leave_the_results_file(store, tmp_path, sql):
    with pytest.raises(BurstbenchError) as err:
        run_sql(store, sql.format(tmp=tmp_path))
    assert str(err.value)
    assert list(tmp_path.iterdir()) == [], "the statement wrote a file"


def test_analyze_sql_cli_refuses_without_a_traceback(store):
    r = bb("analyze", str(store), "--sql", "SELECT * FROM read_csv('/etc/passwd')")
    assert r.returncode != 0
    assert "root:" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --sql failed:") and "disabled by configuration" in r.stderr.splitlines()[0]
    ok = bb("analyze", str(store), "--sql", "SELECT count(*) AS n FROM runs", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == [[1]]


def test_analyze_sql_cli_refusal_is_one_line(store):
    r = bb("analyze", str(store), "--sql", "SELECT * FROM read_csv('/etc/passwd')")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_url_credentials_with_an_api_key_are_handled(tmp_path):
    trace = small_trace(tmp_path / "t.parquet")
    with serve("--api-key", KEY) as (url, _):
        port = url.rsplit(":", 1)[1]
        r = bb("run", "--url", f"http://user:{URL_PASSWORD}@127.0.0.1:{port}", "--trace", str(trace), "-o",
               str(tmp_path / "r.duckdb"), "--api-key-env", "BB_TEST_KEY", "--json", "--quiet",
               env={**ENV, "BB_TEST_KEY": KEY})
    refused_up_front = r.returncode != 0 and "Traceback" not in r.stderr and "internal" not in r.stderr
    assert refused_up_front or json.loads(r.stdout)["completed"] == 8
