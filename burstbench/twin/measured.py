"""A measured run as the twin sees it: its requests' schedule and latencies, and how to replay it.

Apart from ``calibrate`` (the search) because everything that compares a twin with a run
reads runs this way: calibrate, ``twin.fidelity``, ``benchmarks/bench_fidelity.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from burstbench.errors import StoreError, UsageError
from burstbench.twin.vsim import Latencies, Sched, Workload, closed_loop, colocated


@dataclass
class MeasuredRun:
    """A run's schedule and latencies in the engine's own time (seconds)."""

    run_id: str
    work: Workload
    measured: Latencies
    time_scale: float
    dropped: int
    total: int
    label: str | None = None
    scored: np.ndarray | None = None  # requests the loss counts (None: all)
    # measured outside-the-engine share of TTFT (client TTFT - server queue - prefill), from
    # the run's server spans; None when the run has none (then it is profiled, see module doc)
    frontend: np.ndarray | None = None
    users: int | None = None  # a closed-loop run's users (None: sent on a schedule)
    turnaround_s: float = 0.0  # closed loop: a client's median time from an answer's end to its next send

    def replay(self, cost: Any, sched: Sched, replicas: int = 1, frontend_s: float = 0.0,
               seen_frontend_s: float | None = None, *, itl: bool = False) -> Latencies:
        """The twin's latencies of this run's requests: sent at the run's own times, or, for
        a closed loop, by its users as the twin's answers end (``vsim.closed_loop`` says
        why). ``frontend_s`` is added to every latency; ``seen_frontend_s`` (default the
        same) is the one the closed loop's clients see before they send again. ``itl``: keep
        the gaps between tokens too."""
        if self.users is None:
            return colocated(self.work, cost, sched, replicas, frontend_s=frontend_s, itl=itl)
        seen = frontend_s if seen_frontend_s is None else seen_frontend_s
        return closed_loop(self.work, self.users, self.turnaround_s, cost, sched, replicas, frontend_s=frontend_s,
                           seen_frontend_s=seen, itl=itl)


def read_run(store: str | Path, run_id: str, *, time_scale: float | None = None,
             max_requests: int | None = None, use_spans: bool = False) -> MeasuredRun:
    """The run's completed requests as a schedule (``sent_s``) plus their latencies.

    ``time_scale``: how many times faster than the modelled hardware the endpoint ran
    (``serve --time-scale``); by default the run's scenario ``time_scale`` for live
    runs and 1 for simulated ones. Times are multiplied by it.
    """
    from burstbench.analysis.metrics import open_store, require_timeline, resolve_run, run_info
    from burstbench.analysis.phases import outside_engine_s

    con = open_store(store)
    try:
        rid = resolve_run(con, run_id)
        require_timeline(run_info(con, rid), "a twin (which replays the run's send times)")
        clock, scenario, label = con.execute(
            "SELECT clock, scenario, label FROM runs WHERE run_id = ?", [rid]).fetchone()
        rows = con.execute(
            "SELECT sent_s, input_tokens, COALESCE(output_tokens_server, output_tokens_counted, output_tokens_target),"
            " first_token_s, last_token_s, status, request_id FROM requests WHERE run_id = ? ORDER BY sent_s, request_id",
            [rid],
        ).fetchall()
        frontend = outside_engine_s(con, rid) if use_spans else None
        gaps = _chunk_gaps(con, rid)
    finally:
        con.close()
    if not rows:
        raise StoreError(f"run '{rid}' in {store} has no request rows to calibrate on")
    sc = json.loads(scenario) if isinstance(scenario, str) else (scenario or {})
    if time_scale is None:
        time_scale = float(sc.get("time_scale") or 1.0) if clock != "virtual" else 1.0
    if not time_scale > 0:
        raise UsageError(f"--time-scale must be positive, got {time_scale}")
    kept = [r for r in rows if r[5] == "ok" and r[0] is not None and r[3] is not None and r[4] is not None]
    arr = np.array([(r[0], r[1] or 0, r[2] or 0, r[3], r[4]) for r in kept], dtype=np.float64)
    ids = np.array([r[6] for r in kept], dtype=np.int64)
    total = len(rows)
    if len(arr) < 20:
        raise StoreError(
            f"run '{rid}' has {len(arr)} completed requests with token times; calibration needs at least 20")
    scored = None
    if max_requests is not None and len(arr) > max_requests:
        # keep a contiguous head; requests still running when the first dropped one was
        # sent shared batches with requests the twin will not see, so they are replayed
        # (they load the engine) but not scored
        cut = arr[max_requests, 0]
        arr, ids = arr[:max_requests], ids[:max_requests]
        scored = arr[:, 4] <= cut
    sent = (arr[:, 0] - arr[0, 0]) * time_scale
    work = Workload(sent, arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64))
    itl, itl_of = _owned(gaps, ids, time_scale)
    lat = Latencies((arr[:, 3] - arr[:, 0]) * time_scale, (arr[:, 4] - arr[:, 0]) * time_scale,
                    work.output_tokens, np.ones(len(arr), dtype=bool), itl=itl, itl_of=itl_of)
    if frontend is not None:
        frontend = frontend * time_scale
    users = int(sc.get("concurrency") or 0) if sc.get("mode") == "closed" and clock != "virtual" else 0
    turnaround = 0.0
    if 0 < users < len(sent):
        ends = np.sort(sent + lat.e2el)[: len(sent) - users]
        turnaround = max(float(np.median(sent[users:] - ends)), 0.0)
    return MeasuredRun(rid, work, lat, time_scale, total - len(arr), total, label, scored, frontend,
                       users or None, turnaround)


MAX_GAPS = 1_000_000  # chunk gaps read per run (a reservoir sample beyond): 16 MB, quantiles within ~0.1%


def _chunk_gaps(con: Any, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(request id, gap s) of every pair of consecutive chunks of a request: the chunk ITL
    (DESIGN section 4; vLLM's CPU build sends one token per chunk at these loads), or None
    when the run kept no chunks or none has two. At most ``MAX_GAPS``, sampled repeatably."""
    # in token order within each request: ``twin.jitter`` pairs them with the twin's gaps
    rows = con.execute(
        "SELECT request_id, gap FROM (SELECT request_id, seq, gap FROM (SELECT request_id, seq, "
        "t_s - lag(t_s) OVER (PARTITION BY request_id ORDER BY seq) AS gap FROM chunks WHERE run_id = ?) "
        f"WHERE gap IS NOT NULL USING SAMPLE reservoir({MAX_GAPS} ROWS) REPEATABLE (7)) ORDER BY request_id, seq",
        [run_id]).fetchnumpy()
    if not len(rows["gap"]):
        return None
    return np.asarray(rows["request_id"], dtype=np.int64), np.asarray(rows["gap"], dtype=np.float64)


def _owned(gaps: tuple[np.ndarray, np.ndarray] | None, ids: np.ndarray,
           time_scale: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The gaps of the requests kept (``ids``, in their order), and each one's position."""
    if gaps is None:
        return None, None
    rid, gap = gaps
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], rid)
    found = (pos < len(ids)) & (ids[order][np.minimum(pos, len(ids) - 1)] == rid)
    return gap[found] * time_scale, order[pos[found]]
