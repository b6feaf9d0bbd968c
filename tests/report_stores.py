"""Hand-made results stores for the report tests (real DuckDB files, written through
``ResultsStore``), with known per-request timings so tests can recompute what a
figure must show with numpy, independently of the report code.

Importable from tests/unit and tests/e2e because pytest puts ``tests/`` (where
conftest.py lives) on ``sys.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from burstbench.store import (
    CHUNK_COLUMNS,
    REQUEST_COLUMNS,
    TELEMETRY_COLUMNS,
    ResultsStore,
    RunInfo,
)

XSS_SCRIPT = "<script>window.__pwned=1</script>"
XSS_IMG = '"><img src=x onerror="window.__pwned=2">'
XSS_SVG = "</script><svg onload=window.__pwned=3>"


@dataclass
class RunData:
    """What a test needs to know about a generated run."""

    run_id: str
    label: str
    sent: np.ndarray
    first: np.ndarray
    last: np.ndarray
    out_tokens: np.ndarray
    status: list[str]
    chunk_times: dict[int, np.ndarray]


def add_run(
    store: ResultsStore,
    *,
    label: str,
    n: int,
    rate: float,
    seed: int,
    ttft_scale: float = 0.2,
    tpot: float = 0.02,
    fail_every: int = 0,
    model: str = "llama-3.1-8b",
    tenant_names: tuple[str, ...] = ("chat", "api"),
    error_message: str = "upstream returned 500",
    telemetry: bool = True,
    chunks: bool = True,
) -> RunData:
    """Append one run with Poisson arrivals, gamma TTFT and fixed-rate decoding."""
    rng = np.random.default_rng(seed)
    run_id = store.create_run(
        RunInfo(backend="openai", endpoint="http://user:pw@127.0.0.1:8000/v1?key=s", model=model,
                label=label, target_rate=rate),
        run_id=f"run-{label}-{seed}",
    )
    sched = np.cumsum(rng.exponential(1.0 / rate, n))
    lag = rng.exponential(0.002, n)
    sent = sched + lag
    ttft = rng.gamma(2.0, ttft_scale / 2.0, n)
    out = rng.integers(1, 60, n)
    first = sent + ttft
    last = first + (out - 1) * tpot
    status = ["ok"] * n
    if fail_every:
        for i in range(0, n, fail_every):
            status[i] = "error"
    req_rows = []
    chunk_rows = []
    chunk_times: dict[int, np.ndarray] = {}
    for i in range(n):
        ok = status[i] == "ok"
        tenant = tenant_names[i % len(tenant_names)]
        req_rows.append((
            run_id, i, f"s{i // 3}", i % 3, tenant, model, "measure", float(sched[i]), float(sent[i]),
            float(first[i]) if ok else None, float(first[i]) if ok else None,
            float(last[i]) if ok else None, float(last[i]) if ok else float(sent[i] + 0.05),
            int(rng.integers(10, 2000)), None, int(out[i]), int(out[i]) if ok else None,
            int(out[i]) if ok else None, None, None, int(out[i]) if ok else 0, status[i],
            200 if ok else 500, None if ok else "http_500", None if ok else error_message, 0,
        ))
        if ok and chunks:
            ts = first[i] + np.arange(out[i]) * tpot
            chunk_times[i] = ts
            chunk_rows.extend((run_id, i, k, float(t), 1, False) for k, t in enumerate(ts))
    # Frames take the bulk path (executemany is ~1 ms per row in DuckDB).
    store.append_requests(pl.DataFrame(req_rows, schema=list(REQUEST_COLUMNS), orient="row",
                                       infer_schema_length=None))
    if chunk_rows:
        store.append_chunks(pl.DataFrame(chunk_rows, schema=list(CHUNK_COLUMNS), orient="row"))
    end = float(np.nanmax(last))
    if telemetry:
        tel = []
        for k, t in enumerate(np.arange(0.0, end, 0.5)):
            tel.append((run_id, float(t), "client", "cpu_percent", 20.0 + k % 7, None, 0))
            tel.append((run_id, float(t), "client", "rss_bytes", 1.5e8 + k * 1e5, None, 0))
            tel.append((run_id, float(t), "server", "vllm:num_requests_running", float(k % 11),
                        '{"model_name": "m"}', None))
            tel.append((run_id, float(t), "server", "vllm:gpu_cache_usage_perc", (k % 50) / 50.0,
                        None, None))
        store.append_telemetry(pl.DataFrame(tel, schema=list(TELEMETRY_COLUMNS), orient="row",
                                            infer_schema_length=None))
    store.finish_run(run_id, status="done", end_reason="completed", duration_s=end)
    return RunData(run_id, label, sent, first, last, out, status, chunk_times)


def xss_trace(path: Path, n: int = 200) -> Path:
    """A small trace whose model, tenant and session strings are markup."""
    from burstbench.traces.schema import Trace, conform, write_trace

    rng = np.random.default_rng(9)
    df = pl.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(0.5, n)),
        "input_tokens": rng.integers(1, 3000, n),
        "output_tokens": rng.integers(1, 800, n),
        "model": [XSS_IMG] * n,
        "tenant": [(XSS_SCRIPT, XSS_SVG, "ok-tenant")[i % 3] for i in range(n)],
        "session_id": [f"{XSS_IMG}{i // 4}" for i in range(n)],
        "turn": [i % 4 for i in range(n)],
    })
    return write_trace(Trace(conform(df), {"source_file": XSS_SCRIPT}), path)


def make_store(path: Path, *, n: int = 600, xss: bool = False, sweep: bool = False) -> list[RunData]:
    """Two comparable runs (B is slower), optionally XSS payloads and sweep steps."""
    runs = []
    with ResultsStore(path) as s:
        if xss:
            runs.append(add_run(s, label="A" + XSS_SCRIPT, n=n, rate=20, seed=1, model=XSS_IMG,
                                tenant_names=(XSS_SVG, XSS_IMG), fail_every=25,
                                error_message=XSS_SCRIPT + XSS_IMG))
            # a server that reports a metric named like markup
            rid = runs[-1].run_id
            s.append_telemetry(pl.DataFrame(
                [(rid, float(t), "server", XSS_SVG, float(t), XSS_SCRIPT, None) for t in range(20)],
                schema=list(TELEMETRY_COLUMNS), orient="row"))
        else:
            runs.append(add_run(s, label="baseline", n=n, rate=20, seed=1, fail_every=50))
        runs.append(add_run(s, label="candidate", n=n, rate=20, seed=2, ttft_scale=0.3, tpot=0.03))
        if sweep:
            for k, rate in enumerate((5.0, 10.0, 20.0, 40.0)):
                runs.append(add_run(s, label=f"sweep:{rate:g}", n=120, rate=rate, seed=10 + k,
                                    ttft_scale=0.1 * (k + 1) ** 2, telemetry=False, chunks=False,
                                    fail_every=0))
        s.checkpoint()
    return runs


def make_twin_results(d: Path, trace: Path, *, xss: bool = False) -> list[Path]:
    """Real outputs of calibrate (twin.yaml), whatif and plan (their --json objects) on a
    slice of ``trace``, small enough to make in seconds. With ``xss`` the model and
    hardware names a user could type carry payloads (the files are edited after the
    commands ran, as a hostile or careless hand could)."""
    import json

    import yaml

    from burstbench.backends.reference.simulator import simulate
    from burstbench.traces.schema import load_trace
    from burstbench.traces.synth import replay
    from burstbench.twin.calibrate import calibrate
    from burstbench.twin.plan import plan
    from burstbench.twin.spec import load_twin
    from burstbench.twin.whatif import whatif

    sl = replay(load_trace(trace), window=(0, 30))
    store = d / "twin-runs.duckdb"
    a = simulate(sl, model="llama-3.1-8b", hardware="l40s", out=store, record_chunks=False)
    b = simulate(replay(sl, rate=4.0), model="llama-3.1-8b", hardware="l40s", out=store, record_chunks=False)
    cal = calibrate(store, a.run_id, model="llama-3.1-8b", hardware="l40s", holdout=b.run_id, max_evals=10)
    twin = cal.spec.write(d / "twin.yaml")
    slo = {"ttft": 0.5, "tpot": 0.05}
    wi = whatif(load_twin(twin), sl, slo=slo, hardware="h200", max_requests=200)
    pl_ = plan(sl, model="llama-3.1-8b", hardware=["l40s", "a100-80g"], prices={"l40s": 0.86, "a100-80g": 1.79},
               slo=slo, tp_options=(1,), max_requests=200)
    (d / "whatif.json").write_text(json.dumps(wi))
    (d / "plan.json").write_text(json.dumps(pl_))
    if xss:
        doc = yaml.safe_load(twin.read_text())
        doc["model"], doc["hardware"] = XSS_SCRIPT, XSS_IMG
        twin.write_text(yaml.safe_dump(doc))
        wi["variant"]["name"] = XSS_SVG
        wi["changes"]["hardware"] = XSS_SCRIPT
        (d / "whatif.json").write_text(json.dumps(wi))
        for c in pl_["candidates"]:
            c["name"] = XSS_IMG
        pl_["model"] = XSS_SVG
        (d / "plan.json").write_text(json.dumps(pl_))
    return [twin, d / "whatif.json", d / "plan.json"]
