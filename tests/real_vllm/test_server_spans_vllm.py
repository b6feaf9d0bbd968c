"""Server spans of a real vLLM joined to burstbench's client timings (issue 16's acceptance).

A ``vllm serve`` of the tiny CPU model exports its ``llm_request`` spans over OTLP/HTTP
(``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``, as ``run --server-spans``
prints) to the receiver of each run; every request carries a traceparent. Checked:
at least 99% of requests joined; for each, vLLM's TTFT is not larger than the
client's and the difference is small and positive on loopback; queue time grows
with load between a light and a heavy run. The distributions are printed (``-s``).

This server is started here, not by the folder's shared fixture, because it needs the
exporter settings; ``--max-num-seqs 4`` makes a burst queue on the CPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from even_trace import even_trace

from burstbench.analysis.metrics import open_store
from burstbench.analysis.phases import decomposition, per_request
from burstbench.loadgen.runner import execute
from burstbench.loadgen.scenario import Scenario
from burstbench.traces.schema import Trace

pytestmark = pytest.mark.vllm
vllm_cpu = pytest.importorskip("burstbench.testing.vllm_cpu", reason="needs burstbench.testing.vllm_cpu (branch vllm)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def traced_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    why = vllm_cpu.check_env()
    if why is None and vllm_cpu.model_facts() is None:
        why = f"no model at {vllm_cpu.model_dir()} (run `burstbench vllm-cpu build-model`)"
    if why:
        pytest.skip(why)
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_BSP_SCHEDULE_DELAY")}
    os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"  # vLLM exports gRPC otherwise
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "500"  # ms between batches (SDK default 5000)
    srv = vllm_cpu.VllmServer(env=vllm_cpu.env_dir(), model=vllm_cpu.model_dir(),
                              log_path=tmp_path_factory.mktemp("vllm-spans") / "serve.log",
                              extra_args=["--max-num-seqs", "4",
                                          "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces"])
    try:
        srv.start(ready_timeout_s=float(os.environ.get("BURSTBENCH_VLLM_READY_S", "300")))
        yield srv.url, port
    finally:
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _trace(n: int, gap: float) -> Trace:
    return even_trace(n, gap, prompt=96, out=16)


def test_vllm_spans_join_and_decompose_ttft_at_two_loads(traced_vllm, tmp_path):
    url, port = traced_vllm
    out = tmp_path / "vllm.duckdb"
    queue_means = []
    for name, gap in (("light", 0.5), ("heavy", 0.0)):
        sc = Scenario(url=url, model=vllm_cpu.SERVED_NAME, server_spans=f"127.0.0.1:{port}", spans_grace_s=15.0,
                      scrape_metrics=False)
        res = execute(_trace(40, gap), sc, out, progress=False, label=f"vllm {name}")
        con = open_store(out)
        try:
            d = decomposition(con, res.run_id)
            rows = per_request(con, res.run_id)
        finally:
            con.close()
        assert d is not None, res.notes
        assert d["completed"] == 40 and d["joined"] >= 0.99 * d["completed"], res.notes
        diff = (rows["ttft_s"] - rows["server_ttft_s"]).to_numpy()
        assert (diff >= 0).all(), f"vLLM's TTFT above the client's: {np.sort(diff)[:5]}"
        q = np.percentile(diff * 1e3, [50, 90, 99])
        # small: a minor part of TTFT at either load; when idle, a few ms (loopback + SSE write).
        # Under the burst the API server serialises 40 streams on a shared CPU, and that
        # frontend time is in this part too (measured 51-130 ms p50 with load average 14-21)
        assert q[0] < 0.25 * 1e3 * float(np.median(rows["ttft_s"])), q
        if name == "light":
            assert q[0] < 20.0, q
        print(f"\n{name}: client - server TTFT ms p50 {q[0]:.2f} p90 {q[1]:.2f} p99 {q[2]:.2f} max "
              f"{diff.max() * 1e3:.2f}; " + ", ".join(
                  f"{p} mean {d['parts_ms'][p]['mean']:.2f} p50 {d['parts_ms'][p]['p50']:.2f} "
                  f"p99 {d['parts_ms'][p]['p99']:.2f}" for p in d["parts_ms"]))
        queue_means.append(d["parts_ms"]["queue"]["mean"])
    assert queue_means[1] > queue_means[0], queue_means
