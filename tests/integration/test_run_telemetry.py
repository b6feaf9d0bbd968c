"""Telemetry and the bottleneck watch: /metrics scraping against real servers, CPU sampling."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
from aiohttp import web
from app_server import start_app

from burstbench.loadgen.progress import BottleneckWatch
from burstbench.loadgen.telemetry import (
    ClientSampler,
    HostLoad,
    MetricsScraper,
    metrics_url,
    parse_prometheus,
)
from burstbench.testing.stream_server import StreamServer

PROM = """# HELP vllm:num_requests_running Number of requests currently running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m"} 2.0
vllm:e2e_request_latency_seconds_sum{model_name="m"} 1.25
python_gc_objects_collected_total{generation="0"} 100.0
vllm:weird{model_name="a \\"quoted\\" name"} NaN
vllm:broken{model_name="m"} notanumber
"""


def test_parse_prometheus_keeps_vllm_series_without_buckets():
    got = {(n, lab): v for n, v, lab in parse_prometheus(PROM)}
    assert got[("vllm:num_requests_running", '{"model_name": "m"}')] == 3.0
    assert got[("vllm:e2e_request_latency_seconds_sum", '{"model_name": "m"}')] == 1.25
    assert not any("bucket" in n or n.startswith("python") or n == "vllm:broken" for n, _ in got)
    assert any(n == "vllm:weird" and np.isnan(v) for (n, _), v in got.items())
    assert metrics_url("http://u:p@127.0.0.1:8000/v1?key=x") == "http://u:p@127.0.0.1:8000/metrics"


async def test_scraper_reads_a_real_metrics_endpoint():
    async with StreamServer() as srv:
        rows: list = []
        scraper = MetricsScraper(srv.url, lambda: 1.5, rows.extend, interval_s=0.05)
        got = await asyncio.to_thread(scraper.scrape_once)
    names = {r[2] for r in got}
    assert {"vllm:num_requests_running", "vllm:generation_tokens_total"} <= names
    assert all(r[0] == 1.5 and r[1] == "server" for r in got)


async def test_scraper_gives_up_when_the_endpoint_has_no_metrics():
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner, url = await start_app(app)
    try:
        rows: list = []
        scraper = MetricsScraper(url, lambda: 0.0, rows.extend, interval_s=0.05)
        scraper.start()
        await asyncio.to_thread(scraper._thread.join, 5.0)
        assert not scraper._thread.is_alive()
        assert scraper.available is False and rows == []
    finally:
        await runner.cleanup()


def test_bottleneck_watch_warns_on_growing_lag_and_saturated_cpu():
    w = BottleneckWatch()
    for t, lag_ms in enumerate([0.5, 0.8, 0.6, 0.7]):
        w.add_lags(np.full(100, lag_ms / 1e3))
        assert w.tick(float(t), cpu_max=40.0) == []
    new = []
    for t, lag_ms in enumerate([15.0, 30.0, 60.0], start=4):
        w.add_lags(np.full(100, lag_ms / 1e3))
        new += w.tick(float(t), cpu_max=40.0)
    assert len(new) == 1 and "client lag p99 60.0 ms and growing" in new[0]
    for t in range(7, 10):
        new = w.tick(float(t), cpu_max=99.0)
    assert len(new) == 1 and "99% of a core" in new[0]
    assert len(w.warnings) == 2
    # high but shrinking lag is not a growing backlog
    w2 = BottleneckWatch()
    for t, lag_ms in enumerate([60.0, 30.0, 15.0]):
        w2.add_lags(np.full(10, lag_ms / 1e3))
        assert w2.tick(float(t), cpu_max=0.0) == []
    # waiting for a capped slot (the server's doing) is shown but never blamed on the client
    w3 = BottleneckWatch()
    for t, lag_ms in enumerate([100.0, 200.0, 400.0]):
        w3.add_lags(np.full(10, lag_ms / 1e3), np.full(10, 0.0005))
        assert w3.tick(float(t), cpu_max=0.0) == []
    assert w3.lag_p99_ms == 400.0


def test_client_sampler_measures_this_process():
    s = ClientSampler({None: os.getpid()})
    c0 = time.process_time()
    x = 0
    while time.process_time() - c0 < 0.2:  # burn 0.2 s of CPU, however long that takes
        x += 1
    rows = s.sample(1.0)
    by = {r[2]: r for r in rows}
    assert by["process_cpu_percent"][3] > 0.0 and by["process_cpu_percent"][5] is None
    assert by["process_rss_bytes"][3] > 10_000_000


def _growing_lag(w: BottleneckWatch, cpu: float, host: HostLoad) -> list[str]:
    new: list[str] = []
    for t, lag_ms in enumerate([15.0, 30.0, 60.0]):
        w.add_lags(np.full(100, lag_ms / 1e3))
        new += w.tick(float(t), cpu_max=cpu, host=host)
    return new


def test_bottleneck_note_tells_a_saturated_host_from_a_saturated_client():
    # the case: lag grows at 1.1 req/s, the client at 2% CPU, the host busy with others
    (msg,) = _growing_lag(BottleneckWatch(), 2.0, HostLoad(99.0, 0.0, 2, 0.02))
    assert msg.startswith("host saturated") and "2 CPUs were 99% busy" in msg and "only 2% of a core" in msg
    assert "--workers will not help" in msg and "add --workers" not in msg
    # a hypervisor stealing the CPUs is a saturated host too, even when the guest looks idle
    (msg,) = _growing_lag(BottleneckWatch(), 2.0, HostLoad(60.0, 30.0, 4, 0.02))
    assert msg.startswith("host saturated") and "30% stolen by the hypervisor" in msg
    # the client itself at a full core with idle cores left: more workers help
    msgs = _growing_lag(BottleneckWatch(), 97.0, HostLoad(50.0, 0.0, 4, 0.97))
    assert msgs[0].startswith("client bottleneck") and "add --workers: the host has ~2 idle core(s)" in msgs[0]
    assert "97% of a core for 3s" in msgs[1] and "add --workers" in msgs[1]
    # ... but not when the client's own CPU load already fills the host
    (msg, cpu_msg) = _growing_lag(BottleneckWatch(), 97.0, HostLoad(100.0, 0.0, 2, 1.9))
    assert "--workers would compete for the same CPUs" in msg and "add --workers" not in msg + cpu_msg
    # lag with neither the client nor the host busy is not a CPU shortage
    (msg,) = _growing_lag(BottleneckWatch(), 2.0, HostLoad(20.0, 0.0, 8, 0.02))
    assert msg.startswith("client lag") and "not a CPU shortage" in msg and "add --workers" not in msg


def test_client_sampler_sees_other_processes_load_the_host():
    import subprocess
    import sys

    s = ClientSampler({None: os.getpid()})
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(s.cores)]
    try:
        s.sample(0.0)  # starts the interval with every core spinning
        time.sleep(1.0)  # this process sleeps: the host is busy, the client is not
        rows = {r[2]: r[3] for r in s.sample(1.0)}
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert s.host is not None
    assert rows["host_cpu_busy_percent"] == s.host.busy_percent >= 90.0
    assert s.host.client_cores < 0.2 and s.host.other_cores > s.cores - 0.5
    assert "host_cpu_steal_percent" in rows
