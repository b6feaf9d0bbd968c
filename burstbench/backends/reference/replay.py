"""A measured run replayed through the reference engine: its requests, its server's KV size.

What ``simulate --replay-run`` does, so the engine's scheduler can be set beside the
server's own ``/metrics`` series (``analysis.schedseries``): the run's send times and
the server's prompt/output counts (``schedseries.run_as_trace``), the KV block count
the server reported (vLLM's ``cache_config_info``), sampled as often as the run
scraped.

``match_duration``: a scheduler comparison needs steps of about the right length even
in a burst, because arrivals spread over a fraction of a second count in steps (a
request sent 0.1 s late is 3 steps late at 30 ms per step, 100 at 1 ms), and so does
the order in which requests cross block boundaries. Without a calibrated twin, the
cost model's step times are scaled by one factor so the replay lasts as long as the
measured run. It fits one number (the engine's speed on that machine at that load),
never the scheduler's decisions; the factor is reported. The duration is nearly
proportional to the factor once the queue is never empty, so a fixed-point iteration
converges in a few runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from burstbench.errors import UsageError

MATCH_ITERATIONS = 8
MATCH_TOLERANCE = 0.01


class ScaledCost:
    """A cost model whose every step lasts ``scale`` times as long (see module doc)."""

    def __init__(self, inner: Any, scale: float) -> None:
        self.inner = inner
        self.scale = scale
        self.model = inner.model
        self.hardware = getattr(inner, "hardware", None)
        self.tp = getattr(inner, "tp", 1)

    def step_time_sums(self, **kw: Any) -> float:
        return self.scale * self.inner.step_time_sums(**kw)

    def step_time(self, prefill: Any, decode: Any) -> float:
        return self.scale * self.inner.step_time(prefill, decode)

    def kv_cache_blocks(self, **kw: Any) -> int:
        return self.inner.kv_cache_blocks(**kw)


@dataclass
class ReplaySource:
    """What a replay of ``run_id`` needs from its store."""

    run_id: str
    trace: Any
    kv: dict[str, Any]
    interval_s: float
    duration_s: float  # first send to last token (what a matched replay lasts)


def read_source(store: str | Path, run: str) -> ReplaySource:
    """Everything a replay takes from the store, read at once (the store may then be appended to)."""
    from burstbench.analysis.metrics import open_store, resolve_run
    from burstbench.analysis.schedseries import kv_config, run_as_trace, sample_interval

    con = open_store(store)
    try:
        rid = resolve_run(con, run)
        tr = run_as_trace(con, rid)
        row = con.execute("SELECT max(COALESCE(last_token_s, end_s)) - min(sent_s) FROM requests WHERE run_id = ?",
                          [rid]).fetchone()
        return ReplaySource(rid, tr, kv_config(con, rid), sample_interval(con, rid), float(row[0] or 0.0))
    finally:
        con.close()


def num_blocks_of(src: ReplaySource, given: str | int | None, block_size: int) -> tuple[int | None, int, list[str]]:
    """(KV blocks, block size, notes): ``given`` as a count, or ``'auto'``: the server's."""
    if given != "auto":
        return (int(given) if given is not None else None), block_size, []
    if "num_gpu_blocks" not in src.kv:
        raise UsageError(f"run '{src.run_id}' recorded no vllm:cache_config_info with num_gpu_blocks "
                         "(scraped from a vLLM server's /metrics): give --num-gpu-blocks N")
    notes = [f"{src.kv['num_gpu_blocks']} KV blocks as the server reported (one is vLLM's reserved null block)"]
    bs = src.kv.get("block_size") or block_size
    if bs != block_size:
        notes.append(f"block size {bs} as the server reported (not --block-size {block_size})")
    return src.kv["num_gpu_blocks"], bs, notes


def replay(src: ReplaySource, *, cost: Any, match_duration: bool = False, **sim: Any) -> tuple[Any, float]:
    """Simulate ``src``'s requests (``simulator.simulate`` keywords in ``sim``); with
    ``match_duration`` the step times are scaled to last as long as the run did.
    Returns the result of the last simulation and the scale used (1 without matching)."""
    from burstbench.backends.reference.simulator import load_parts, simulate

    sim = {**sim, "telemetry_interval_s": src.interval_s}
    if cost is None:
        cost = load_parts(sim["model"], sim["hardware"], sim.get("tp", 1))[2]
    if not match_duration:
        return simulate(src.trace, cost=cost, **sim), 1.0
    if not src.duration_s > 0:
        raise UsageError(f"run '{src.run_id}' has no token times to match a duration to")
    out, label = sim.pop("out", None), sim.pop("label", None)
    scale = 1.0
    for _ in range(MATCH_ITERATIONS):
        res = simulate(src.trace, cost=ScaledCost(cost, scale), **{**sim, "record_chunks": False})
        if abs(res.duration_s / src.duration_s - 1) <= MATCH_TOLERANCE or not res.duration_s > 0:
            break
        scale *= src.duration_s / res.duration_s
    res = simulate(src.trace, cost=ScaledCost(cost, scale), out=out, label=label, **sim)
    return res, scale
