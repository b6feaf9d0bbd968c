"""The scheduler's own series of a run (running, waiting, preemptions), and two runs compared.

A real vLLM exports what its scheduler does on ``/metrics``
(``vllm:num_requests_running`` / ``_waiting`` gauges, ``vllm:num_preemptions_total``,
``vllm:generation_tokens_total``), which ``burstbench run`` scrapes into the
``telemetry`` table; the simulator writes the same names for the reference engine.
So "does the reference scheduler behave like vLLM under overload" is a comparison of
two runs' series in one store: the measured run and its replay in the engine.

Two axes, because they answer different questions:

- **time** (seconds from each run's first request): what a user sees, but it mixes the
  scheduler with the cost model; a twin whose steps are 10% slow stretches every curve;
- **work** (share of the run's generated tokens done): the same scheduler fed the same
  requests passes the same states in the same order whatever each step costs, so this
  axis isolates the scheduler from the cost model (a burst's admissions and preemptions
  depend on blocks, not seconds).

The distance of two series is the area between them over the area under the measured
one (``∫|m − s| / ∫m``, step-held samples, zero after a series ends): 0 is identical,
1 means the curves differ by as much as the measured one holds. Preemptions are counted
as the counter's increase over the run (a server reused across runs keeps counting).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from burstbench.errors import StoreError

_NAMES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:generation_tokens_total": "generated",
}
GRID = 400  # points of the common grid the distances are computed on


@dataclass
class SchedSeries:
    """One run's scheduler series, times in seconds from the run's first sent request."""

    run_id: str
    t: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    preemptions: np.ndarray  # cumulative, from 0 at the first sample
    generated: np.ndarray  # cumulative, from 0 at the first sample

    @property
    def preempted(self) -> int:
        return round(self.preemptions[-1]) if len(self.t) else 0


def read_series(con: duckdb.DuckDBPyConnection, run_id: str) -> SchedSeries | None:
    """The run's scheduler series (summed over label sets: engines, replicas), or None
    when the run recorded no running/waiting gauges (a server without vLLM's metrics)."""
    rows = con.execute(
        "SELECT t_s, name, sum(value) FROM telemetry WHERE run_id = ? AND name IN (SELECT unnest(?))"
        " AND value IS NOT NULL GROUP BY t_s, name ORDER BY t_s",
        [run_id, list(_NAMES)],
    ).fetchall()
    if not rows:
        return None
    ts = sorted({r[0] for r in rows})
    idx = {t: i for i, t in enumerate(ts)}
    cols = {k: np.full(len(ts), np.nan) for k in _NAMES.values()}
    for t, name, v in rows:
        cols[_NAMES[name]][idx[t]] = v
    if np.isnan(cols["running"]).all() or np.isnan(cols["waiting"]).all():
        return None
    for k, v in cols.items():  # a scrape that missed a series holds the previous value
        cols[k] = _ffill(v)
    first = con.execute("SELECT min(sent_s) FROM requests WHERE run_id = ?", [run_id]).fetchone()
    t0 = float(first[0]) if first and first[0] is not None else 0.0
    return SchedSeries(run_id, np.asarray(ts, dtype=np.float64) - t0, cols["running"], cols["waiting"],
                       cols["preemptions"] - cols["preemptions"][0], cols["generated"] - cols["generated"][0])


def _ffill(v: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(v)
    if not ok.any():
        return np.zeros_like(v)
    i = np.where(ok, np.arange(len(v)), 0)
    np.maximum.accumulate(i, out=i)
    out = v[i]
    out[: int(np.argmax(ok))] = v[ok][0]
    return out


def kv_config(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """What the server said about its KV cache (vLLM's ``cache_config_info`` labels):
    ``num_gpu_blocks`` (with vLLM's reserved null block), ``block_size``,
    ``enable_prefix_caching``; empty when the run did not record it."""
    row = con.execute(
        "SELECT labels FROM telemetry WHERE run_id = ? AND name = 'vllm:cache_config_info'"
        " AND labels IS NOT NULL ORDER BY t_s LIMIT 1", [run_id]).fetchone()
    if not row:
        return {}
    lab = json.loads(row[0])
    out: dict[str, Any] = {}
    for key in ("num_gpu_blocks", "block_size"):
        v = lab.get(key)
        if v not in (None, "", "None"):
            with contextlib.suppress(ValueError):
                out[key] = int(float(v))
    if "enable_prefix_caching" in lab:
        out["enable_prefix_caching"] = str(lab["enable_prefix_caching"]).lower() == "true"
    return out


def _step_at(t: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sample-and-hold of ``y(t)`` on ``grid``; 0 before the first and after the last sample."""
    i = np.searchsorted(t, grid, side="right") - 1
    out = np.where(i >= 0, y[np.clip(i, 0, None)], 0.0)
    return np.where(grid > t[-1], 0.0, out)


def distance(m: np.ndarray, s: np.ndarray) -> float | None:
    """``Σ|m − s| / Σm`` on a common grid (see module doc); None when ``m`` is all zero."""
    area = float(np.sum(m))
    return float(np.sum(np.abs(m - s))) / area if area > 0 else None


def compare_series(measured: SchedSeries, simulated: SchedSeries, *, grid: int = GRID) -> dict[str, Any]:
    """Preemption counts and the running/waiting distances on both axes (module doc)."""
    end = max(float(measured.t[-1]), float(simulated.t[-1]))
    tg = np.linspace(0.0, end, grid)
    out: dict[str, Any] = {
        "measured_run": measured.run_id, "simulated_run": simulated.run_id,
        "preemptions": {"measured": measured.preempted, "simulated": simulated.preempted,
                        "rel_diff": _rel(simulated.preempted, measured.preempted)},
        "duration_s": {"measured": float(measured.t[-1]), "simulated": float(simulated.t[-1])},
        "time_axis": {}, "work_axis": {},
    }
    for name in ("running", "waiting"):
        m = _step_at(measured.t, getattr(measured, name), tg)
        s = _step_at(simulated.t, getattr(simulated, name), tg)
        out["time_axis"][name] = distance(m, s)
        out.setdefault("mean", {})[name] = {"measured": _mean_busy(measured, name),
                                             "simulated": _mean_busy(simulated, name)}
    # shares in (0, 1]: at share 0 (before the first token) many samples tie and say only
    # how the arrivals fell between scrapes, not what the scheduler did
    wg = np.linspace(0.0, 1.0, grid + 1)[1:]
    if measured.generated[-1] > 0 and simulated.generated[-1] > 0:
        for name in ("running", "waiting", "preemptions"):
            m = _on_work(measured, name, wg)
            s = _on_work(simulated, name, wg)
            out["work_axis"][name] = distance(m, s)
    out["series"] = {"t": tg.tolist(), **{
        f"{k}_{name}": _step_at(r.t, getattr(r, name), tg).tolist()
        for k, r in (("measured", measured), ("simulated", simulated)) for name in ("running", "waiting")}}
    return out


def _on_work(r: SchedSeries, name: str, wg: np.ndarray) -> np.ndarray:
    """``name`` as a function of the share of generated tokens (the last sample at each share)."""
    frac = r.generated / r.generated[-1]
    i = np.searchsorted(frac, wg, side="right") - 1
    return getattr(r, name)[np.clip(i, 0, len(frac) - 1)]


def _mean_busy(r: SchedSeries, name: str) -> float:
    """Time-weighted mean of a gauge while the run had work (running or waiting > 0)."""
    y = getattr(r, name)
    busy = (r.running + r.waiting) > 0
    if len(r.t) < 2 or not busy[:-1].any():
        return 0.0
    dt = np.diff(r.t)
    w = dt * busy[:-1]
    return float(np.sum(y[:-1] * w) / np.sum(w))


def _rel(sim: float, meas: float) -> float | None:
    return (sim - meas) / meas if meas else None


def compare_runs_series(con: duckdb.DuckDBPyConnection, measured: str, simulated: str) -> dict[str, Any]:
    """``compare_series`` of two runs in one store; a StoreError names the run without series."""
    a = read_series(con, measured)
    b = read_series(con, simulated)
    for rid, s in ((measured, a), (simulated, b)):
        if s is None:
            raise StoreError(f"run '{rid}' recorded no vllm:num_requests_running/waiting series "
                             "(a live run scrapes them from a vLLM server's /metrics; a simulated run writes them)")
    assert a is not None and b is not None
    return compare_series(a, b)


def run_as_trace(con: duckdb.DuckDBPyConnection, run_id: str) -> Any:
    """A run's own requests as a Trace, to replay them in the reference engine.

    Arrivals are the send times (from the first one), prompts the server's own count
    (``usage.prompt_tokens``: what occupies its KV cache, BOS included) where it
    reported one, outputs what the server generated, else what was asked. Requests
    that never reached the server (no send time) are left out."""
    import polars as pl

    from burstbench.traces.schema import Trace, conform

    rows = con.execute(
        "SELECT sent_s, COALESCE(input_tokens_server, input_tokens),"
        " COALESCE(output_tokens_server, output_tokens_counted, output_tokens_target)"
        " FROM requests WHERE run_id = ? AND sent_s IS NOT NULL ORDER BY sent_s, request_id", [run_id]).fetchall()
    rows = [r for r in rows if r[1] and r[2]]
    if not rows:
        raise StoreError(f"run '{run_id}' has no sent requests with prompt and output lengths to replay")
    t0 = rows[0][0]
    df = pl.DataFrame({"arrival_s": [r[0] - t0 for r in rows], "input_tokens": [int(r[1]) for r in rows],
                       "output_tokens": [int(r[2]) for r in rows]})
    return Trace(conform(df), {"source_format": "burstbench-run", "source_run": run_id})


def series_rows(cmp: dict[str, Any]) -> list[dict[str, Any]]:
    """``compare_series``'s result as table rows (quantity, A, B, distance)."""
    p = cmp["preemptions"]
    rows: list[dict[str, Any]] = [
        {"quantity": "preemptions", "A": p["measured"], "B": p["simulated"],
         "distance": None if p["rel_diff"] is None else f"{p['rel_diff']:+.1%} (count)"},
        {"quantity": "duration_s", "A": cmp["duration_s"]["measured"], "B": cmp["duration_s"]["simulated"],
         "distance": None},
    ]
    for name in ("running", "waiting"):
        mean = cmp["mean"][name]
        rows.append({"quantity": f"{name} (mean while busy; time axis)", "A": mean["measured"],
                     "B": mean["simulated"], "distance": cmp["time_axis"][name]})
    for name, d in cmp["work_axis"].items():
        rows.append({"quantity": f"{name} (work axis)", "A": None, "B": None, "distance": d})
    return rows


def sample_interval(con: duckdb.DuckDBPyConnection, run_id: str) -> float:
    """How often the run sampled its server (``scrape_interval_s`` of a live run,
    ``telemetry_interval_s`` of a simulated one; 1 s when it does not say)."""
    row = con.execute("SELECT scenario FROM runs WHERE run_id = ?", [run_id]).fetchone()
    sc = json.loads(row[0]) if row and isinstance(row[0], str) else (row[0] if row else None) or {}
    for key in ("scrape_interval_s", "telemetry_interval_s"):
        v = sc.get(key) if isinstance(sc, dict) else None
        if isinstance(v, int | float) and v > 0:
            return float(v)
    return 1.0
