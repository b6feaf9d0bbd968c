"""``whatif``: the same trace under a changed deployment, beside the twin's own.

Each side (baseline = the twin as calibrated; variant = the twin with the changes) is
run on the trace in virtual time for SLO attainment and latency percentiles, and its
max goodput rate (DistServe's capacity: the highest rate with attainment >= target) is
found with the analysis package's search (``analysis.sweep.search_max_goodput``: bracket
by doubling, then bisect) over the trace rescaled to each rate. Every search step is a
run in a results file (``-o``, else a temporary one), written in the results schema
with ``clock='virtual'`` and ``backend='twin'``, so ``analyze``/``report`` can read it and
the attainment numbers come from the same SQL as for measured runs.

``--layout disagg`` makes the variant DistServe's layout (prefill and decode pools) and
reports goodput per GPU for both sides, DistServe's comparison.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from burstbench.errors import UsageError
from burstbench.limits import MAX_BAND
from burstbench.twin.deploy import Deployment
from burstbench.twin.spec import TwinSpec
from burstbench.twin.vsim import Latencies, Workload


def write_run(out: str | Path, work: Workload, lat: Latencies, *, label: str, model: str,
              scenario: dict[str, Any], target_rate: float | None = None) -> str:
    """One virtual run's request rows (no chunks: the twin keeps first/last token only)."""
    from burstbench.store import ResultsStore, RunInfo

    n = len(work)
    ok = lat.ok
    first = np.where(ok, work.arrival + lat.ttft, np.nan)
    last = np.where(ok, work.arrival + lat.e2el, np.nan)
    with ResultsStore(out) as store:
        rid = store.create_run(RunInfo(backend="twin", model=model, label=label, clock="virtual",
                                       target_rate=target_rate, scenario=scenario))
        df = pl.DataFrame({
            "run_id": pl.repeat(rid, n, eager=True),
            "request_id": np.arange(n, dtype=np.int64),
            "session_id": pl.repeat(None, n, dtype=pl.String, eager=True),
            "turn": pl.repeat(None, n, dtype=pl.Int32, eager=True),
            "tenant": pl.repeat(None, n, dtype=pl.String, eager=True),
            "model": pl.repeat(model, n, eager=True),
            "phase": pl.repeat("measure", n, eager=True),
            "scheduled_s": work.arrival,
            "sent_s": work.arrival,
            "first_token_s": first,
            "first_visible_s": first,
            "last_token_s": last,
            "end_s": np.where(ok, last, work.arrival),
            "input_tokens": work.input_tokens,
            "input_tokens_server": np.where(ok, work.input_tokens, 0),
            "output_tokens_target": work.output_tokens,
            "output_tokens_server": np.where(ok, work.output_tokens, 0),
            "output_tokens_counted": np.where(ok, work.output_tokens, 0),
            "reasoning_tokens": np.zeros(n, dtype=np.int64),
            "cached_tokens": np.zeros(n, dtype=np.int64),
            "chunk_count": np.where(ok, work.output_tokens, 0).astype(np.int32),
            "status": lat.status or ["ok" if o else "error" for o in ok],
            "http_status": np.where(ok, 200, 400).astype(np.int32),
            "error_class": [None if o else "http_400" for o in ok],
            "error_message": [None if o else "request cannot fit this engine's context" for o in ok],
            "worker_id": np.zeros(n, dtype=np.int32),
        }).with_columns(pl.col("first_token_s", "first_visible_s", "last_token_s").fill_nan(None))
        store.append_requests(df)
        span = float(np.nanmax(np.where(ok, last, work.arrival))) if n else 0.0
        store.finish_run(rid, status="done", end_reason="completed", duration_s=span)
        store.checkpoint()
    return rid


@dataclass
class TwinDriver:
    """``analysis.sweep.Driver`` over the twin: the trace at ``rate``, run, written."""

    deployment: Deployment
    work: Workload
    out: Path
    side: str

    def run(self, rate: float, *, label: str) -> str:
        w = self.work.at_rate(rate)
        lat = self.deployment.run(w)
        return write_run(self.out, w, lat, label=f"whatif:{self.side}:{label}", model=self.deployment.model,
                         scenario={"twin": self.deployment.describe(), "rate": rate}, target_rate=rate)


def _side(dep: Deployment, work: Workload, slo: dict[str, float] | None, out: Path, side: str, *,
          target: float, search: bool, on_step: Callable[[Any], None] | None) -> dict[str, Any]:
    lat = dep.run(work)
    span = float(work.arrival[-1] - work.arrival[0]) if len(work) > 1 else 0.0
    res: dict[str, Any] = {
        "deployment": dep.describe(), "name": dep.name(), "gpus": dep.gpus,
        "requests": len(work), "completed": int(lat.ok.sum()),
        "trace_rate": (len(work) - 1) / span if span > 0 else None,
        **lat.percentiles(),
    }
    res["run_id"] = write_run(out, work, lat, label=f"whatif:{side}", model=dep.model,
                              scenario={"twin": dep.describe()}, target_rate=res["trace_rate"])
    if slo:
        res["slo_attainment"] = lat.attainment(slo)
        for m in slo:
            res[f"{m}_attainment"] = lat.attainment({m: slo[m]})
    if slo and search:
        from burstbench.analysis.sweep import search_max_goodput

        start = res["trace_rate"] or 1.0
        sr = search_max_goodput(TwinDriver(dep, work, out, side), out, slo, target=target, start=start,
                                tolerance=0.05, max_steps=14, on_step=on_step)
        res["max_goodput_rate"] = sr.max_goodput_rate
        res["goodput_per_gpu"] = sr.max_goodput_rate / dep.gpus if sr.max_goodput_rate else None
        res["search"] = {"bracket": sr.bracket, "converged": sr.converged, "notes": sr.notes,
                         "attainment_at_max": sr.attainment_at_max, "attainment_ci95": sr.attainment_ci95,
                         "steps": [{"rate": s.value, "slo_attainment": s.slo_attainment, "passed": s.passed,
                                    "short": s.short} for s in sr.steps]}
    return res


def whatif(
    twin: TwinSpec,
    trace: Any,
    *,
    slo: dict[str, float] | None = None,
    target: float = 0.9,
    rate_scale: float | None = None,
    max_requests: int | None = 2000,
    out: str | Path | None = None,
    search: bool = True,
    on_step: Callable[[Any], None] | None = None,
    band: int = 0,
    on_band: Callable[[int, int], None] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Baseline (the twin) vs variant (the twin with ``changes``) on ``trace``; see module doc.

    ``changes``: hardware, tp, replicas, max_num_seqs, max_num_batched_tokens, layout,
    prefill, decode, link_bandwidth. ``rate_scale`` densifies the variant's arrivals.
    With ``layout='disagg'`` the baseline is instead a colocated fleet with the same changes
    (hardware, TP, scheduler) and as many instances as the two pools (or ``replicas``),
    and both sides see the same (rate-scaled) trace: DistServe's comparison.

    ``band``: also run both sides with that many twins drawn from the calibration's
    uncertainty (``TwinSpec.draws``) and report, per side, the range of attainment and
    percentiles over the draws: how much the answer depends on what the measured run
    could pin down (near saturation, a lot). The goodput search runs on the twin alone.
    Each draw replays the trace twice, so ``band`` is bounded (``MAX_BAND``) and
    ``on_band(done, band)`` is called after each draw, for progress.
    """
    if not 0 < target <= 1:
        raise UsageError(f"--target {target}: give a fraction in (0, 1], e.g. 0.9")
    if not 0 <= band <= MAX_BAND:
        raise UsageError(f"--band {band:,}: give 0 to {MAX_BAND:,} twins (each one replays the trace twice)")
    work = Workload.from_trace(trace)
    notes: list[str] = []
    if len(work) < 2:
        raise UsageError("the trace needs at least two requests")
    if max_requests is not None and len(work) > max_requests:
        notes.append(f"used the first {max_requests} of {len(work)} requests (--max-requests)")
        work = work.head(max_requests)

    def deployments(t: TwinSpec) -> tuple[Deployment, Deployment]:
        var = Deployment.from_twin(t, **changes)
        if changes.get("layout") == "disagg":
            # DistServe's comparison: the same trace and SLOs on a colocated fleet of the same
            # hardware and (unless --replicas says otherwise) the same number of instances
            keep = {k: v for k, v in changes.items() if k not in ("layout", "prefill", "decode", "link_bandwidth")}
            keep["replicas"] = keep.get("replicas") or sum(g.count for g in var.groups)
            return Deployment.from_twin(t, **keep), var
        return Deployment.from_twin(t), var

    base, var = deployments(twin)
    if changes.get("layout") == "disagg":
        work = work.scaled(rate_scale) if rate_scale else work
        var_work = work
    else:
        var_work = work.scaled(rate_scale) if rate_scale else work
    drawn = twin.draws(band, seed=0) if band else []  # a twin without a covariance fails here
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="burstbench-whatif-")
        path = Path(tmp.name) / "whatif.duckdb"
    else:
        path = Path(out)
    try:
        result = {
            "twin": {"model": twin.model, "hardware": twin.hardware, "tp": twin.tp, "replicas": twin.replicas,
                     "overrides": twin.overrides},
            "changes": {k: v for k, v in {**changes, "rate_scale": rate_scale}.items() if v is not None},
            "slo_ms": {k: v * 1000 for k, v in slo.items()} if slo else None,
            "target": target,
            "baseline": _side(base, work, slo, path, "baseline", target=target, search=search, on_step=on_step),
            "variant": _side(var, var_work, slo, path, "variant", target=target, search=search, on_step=on_step),
            "results": str(out) if out is not None else None,
            "notes": notes,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    if drawn:
        rows: dict[str, list[dict[str, Any]]] = {"baseline": [], "variant": []}
        for i, t in enumerate(drawn, start=1):
            for side, dep, w in zip(("baseline", "variant"), deployments(t), (work, var_work), strict=True):
                lat = dep.run(w)
                rows[side].append({"slo_attainment": lat.attainment(slo) if slo else None, **lat.percentiles()})
            if on_band is not None:
                on_band(i, len(drawn))
        for side, rs in rows.items():
            result[side]["band"] = _band(rs)
    b, v = result["baseline"], result["variant"]
    if b.get("max_goodput_rate") and v.get("max_goodput_rate"):
        result["max_goodput_ratio"] = v["max_goodput_rate"] / b["max_goodput_rate"]
        result["goodput_per_gpu_ratio"] = v["goodput_per_gpu"] / b["goodput_per_gpu"]
    return json.loads(json.dumps(result, default=float))


def _band(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Lowest and highest of each figure over the drawn twins."""
    def span(xs: list[Any]) -> list[float] | None:
        xs = [x for x in xs if x is not None]
        return [float(min(xs)), float(max(xs))] if xs else None

    out: dict[str, Any] = {"draws": len(rows), "slo_attainment": span([r["slo_attainment"] for r in rows])}
    for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
        out[key] = {q: span([r[key][q] for r in rows]) for q in rows[0][key]}
    return out
