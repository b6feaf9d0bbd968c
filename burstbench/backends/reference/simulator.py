"""``simulate``: a trace through the reference engine in virtual time.

Discrete events, no sleeping: arrivals come from the trace, each engine
iteration advances a replica's clock by the cost model's step time, and a
request that arrives during an iteration joins the next one (as in vLLM,
whose scheduler runs between forward passes). Replicas advance independently;
before each arrival is routed, every replica is brought up to that time, so a
least-outstanding router sees the load a real router would.

The result is written in the same schema as a live run (``burstbench.store``)
with ``clock='virtual'`` and ``backend='simulate'``: one request row per trace
row, one chunk row per emitted token (every iteration emits one token per
request, like vLLM's streaming), and engine telemetry under vLLM's metric
names. Times are seconds from the run's start; ``sent_s = scheduled_s`` =
the trace arrival (the simulated client is never late).

Speed: the engine keeps per-request work to events (see ``engine``); token
times are produced in bulk from the per-replica iteration end times with numpy,
and rows go to DuckDB as Arrow frames (``simstore``).
"""

from __future__ import annotations

import heapq
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from burstbench.backends.reference.engine import DONE, REJECTED, EngineCore, Seq
from burstbench.backends.reference.kvcache import chain_hashes, engine_block_keys, text_block_keys
from burstbench.backends.reference.router import Router
from burstbench.backends.reference.simstore import token_times, write_results
from burstbench.backends.reference.tokens import DEFAULT_REASONING_SHARE
from burstbench.errors import InputError, UsageError
from burstbench.traces.schema import Trace


@dataclass
class SimResult:
    """What a simulation did; ``run_id``/``store`` are None when no results file was asked."""

    run_id: str | None
    store: str | None
    requests: int
    completed: int
    rejected: int
    invalid: int
    iterations: int
    preemptions: int
    prefix_hit_rate: float
    prefix_hit_tokens: int
    generated_tokens: int
    kv_blocks_per_replica: int
    duration_s: float
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_trace(trace: Trace | str | Path) -> Trace:
    if isinstance(trace, Trace):
        return trace
    path = Path(trace)
    if not path.exists():
        raise InputError("no such trace file", path=path)
    try:
        from burstbench.traces.schema import load_trace

        return load_trace(path)
    except ModuleNotFoundError as exc:  # the raw-log readers are not in this build
        if exc.name != "burstbench.traces.ingest":
            raise
        return _fallback_azure(path)


def _fallback_azure(path: Path) -> Trace:
    """Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens) without the ingest module."""
    from burstbench.traces.schema import conform

    df = pl.read_csv(path)
    need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
    if not need <= set(df.columns):
        raise InputError(
            "cannot read this trace without 'burstbench trace ingest'; convert it to Parquet first",
            path=path,
        )
    ts = df["TIMESTAMP"].str.to_datetime(format="%Y-%m-%d %H:%M:%S%.f", time_unit="ns")
    secs = (ts - ts.min()).dt.total_nanoseconds() / 1e9
    out = pl.DataFrame(
        {"arrival_s": secs, "input_tokens": df["ContextTokens"], "output_tokens": df["GeneratedTokens"]}
    )
    return Trace(conform(out), {"source_format": "azure", "source_file": str(path)})


def load_parts(model: Any, hardware: Any, tp: int) -> tuple[Any, Any, Any]:
    """(model, hardware, cost model) from names, files or objects: what ``simulate`` and a replay build."""
    from burstbench.backends.hardware.profile import HardwareProfile, load_hardware
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import ModelConfig, load_model

    m = model if isinstance(model, ModelConfig) else load_model(model)
    hw = hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)
    return m, hw, CostModel(m, hw, tp=tp)


def simulate(
    trace: Trace | str | Path,
    *,
    model: Any,
    hardware: Any,
    tp: int = 1,
    replicas: int = 1,
    router: str = "round_robin",
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    enable_prefix_caching: bool = True,
    max_waiting: int | None = None,
    policy: str = "fcfs",
    seed: int = 0,
    out: str | Path | None = None,
    label: str | None = None,
    record_chunks: bool = True,
    progress: bool = False,
    reasoning_share: float | None = None,
    telemetry_interval_s: float = 1.0,
    num_blocks: int | None = None,
    cost: Any = None,
) -> SimResult:
    """Run ``trace`` through ``replicas`` engines of ``model`` on ``hardware``; see module doc.

    ``cost``/``num_blocks`` override the cost model and KV size (tests, what-ifs).
    ``seed`` is recorded; the simulation itself is deterministic (trace output lengths
    are replayed exactly, as a client using ``ignore_eos`` would).
    """
    wall0 = time.perf_counter()
    tr = _resolve_trace(trace)
    if telemetry_interval_s <= 0:
        raise UsageError("telemetry_interval_s must be positive")
    if reasoning_share is not None and not 0 <= reasoning_share <= 1:
        raise UsageError(f"reasoning_share must be in [0, 1], got {reasoning_share}")
    m, hw, cm = load_parts(model, hardware, tp)
    if cost is not None:
        cm = cost
    if num_blocks is None:
        num_blocks = cm.kv_cache_blocks(
            block_size=block_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
        ) + 1  # vLLM's count includes the reserved null block
    df = tr.df
    inp = df["input_tokens"].fill_null(0).to_numpy()
    keys_list = _prefix_keys(tr, block_size, inp) if enable_prefix_caching else None
    # With no block hashes anywhere in the trace there is nothing to cache; the pool then
    # skips LRU bookkeeping (results are identical, it is only faster).
    caching = enable_prefix_caching and keys_list is not None
    engines = [
        EngineCore(
            cm,
            num_blocks,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=caching,
            max_waiting=max_waiting,
            policy=policy,
            max_context=m.max_context,
        )
        for _ in range(replicas)
    ]
    rt = Router(router, replicas)
    notes: list[str] = []

    n = df.height
    arrivals = df["arrival_s"].to_numpy().astype(np.float64, copy=False)
    if n and (np.isnan(arrivals).any() or (np.diff(arrivals) < 0).any()):
        raise InputError("arrival_s must be non-null and sorted ascending", field="arrival_s")
    outp = df["output_tokens"].fill_null(0).to_numpy()
    prio = df["priority"].fill_null(0).to_numpy() if "priority" in df.columns else None
    share_col = (
        df["reasoning_share"].to_numpy() if m.reasoning and "reasoning_share" in df.columns else None
    )
    default_share = (reasoning_share if reasoning_share is not None else DEFAULT_REASONING_SHARE) if m.reasoning else 0.0

    prog = _Progress(n, enabled=progress)
    run = run_pool(
        engines, rt, arrivals, inp, outp,
        hashes=keys_list, priority=prio, telemetry_interval_s=telemetry_interval_s, progress=prog,
    )
    prog.close()
    seqs, invalid_msg, replica_of, times, tel = run.seqs, run.invalid_msg, run.replica_of, run.times, run.tel

    completed = sum(1 for s in seqs if s is not None and s.state == DONE)
    rejected = sum(1 for s in seqs if s is not None and s.state == REJECTED)
    if invalid_msg:
        notes.append(f"{len(invalid_msg)} requests rejected as invalid (HTTP 400), e.g. row {next(iter(invalid_msg))}: {next(iter(invalid_msg.values()))}")
    if rejected:
        notes.append(f"{rejected} requests rejected with 503: waiting queue full (max_waiting={max_waiting})")
    duration = max([float(arrivals[-1]) if n else 0.0, *(t[-1] for t in times if len(t))])
    queries = sum(e.prefix_queries for e in engines)
    hits = sum(e.prefix_hits for e in engines)
    result = SimResult(
        run_id=None,
        store=None,
        requests=n,
        completed=completed,
        rejected=rejected,
        invalid=len(invalid_msg),
        iterations=sum(len(t) for t in times),
        preemptions=sum(e.num_preemptions for e in engines),
        prefix_hit_rate=(hits / queries) if queries else 0.0,
        prefix_hit_tokens=hits,
        generated_tokens=sum(e.generation_tokens for e in engines),
        kv_blocks_per_replica=num_blocks - 1,
        duration_s=duration,
        wall_s=0.0,
        notes=notes,
    )
    if out is not None:
        scenario = {
            "trace": tr.meta.get("source_file") or (str(trace) if not isinstance(trace, Trace) else None),
            "trace_rows": n,
            "model": m.name,
            "hardware": getattr(hw, "name", str(hardware)),
            "tp": tp,
            "replicas": replicas,
            "router": router,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "block_size": block_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "num_gpu_blocks": num_blocks,
            "enable_prefix_caching": enable_prefix_caching,
            "max_waiting": max_waiting,
            "policy": policy,
            "seed": seed,
            "reasoning_share": default_share if m.reasoning else None,
            "telemetry_interval_s": telemetry_interval_s,
            "chunked_prefill": True,
            "preemption_mode": "recompute",
        }
        write_results(
            out, result, tr, seqs, invalid_msg, replica_of, times, tel, label, scenario,
            m.name, share_col, default_share, record_chunks,
        )
    result.wall_s = time.perf_counter() - wall0
    return result


@dataclass
class PoolRun:
    """What a pool of engines did with a schedule: the raw material of every result.

    ``times[r]`` holds replica ``r``'s iteration end times; a finished ``Seq`` knows
    which iterations emitted its tokens, so token times are indices into them."""

    seqs: list[Seq | None]  # None: refused as invalid (HTTP 400), see invalid_msg
    invalid_msg: dict[int, str]
    replica_of: np.ndarray
    times: list[array]
    tel: list[tuple[float, int, tuple[float, ...]]]
    arrivals: list[float] | None = None  # each request's arrival, where the pool chose it (a closed loop)

    def token_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last token time per request (NaN when it did not complete)."""
        n = len(self.seqs)
        first = np.full(n, np.nan)
        last = np.full(n, np.nan)
        arrs = [np.frombuffer(t, dtype=np.float64) if len(t) else np.zeros(0) for t in self.times]
        for i, s in enumerate(self.seqs):
            if s is not None and s.state == DONE:
                ts = arrs[self.replica_of[i]]
                first[i] = ts[s.first_it]
                last[i] = ts[s.last_it]
        return first, last

    def token_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Each completed request's gaps between consecutive tokens (s; ITL, one token per
        chunk), all requests in one array, and the request each gap belongs to."""
        done, outs, tok_t = token_times(self.seqs, self.replica_of, self.times)
        owner = np.repeat(done, outs)
        keep = owner[1:] == owner[:-1]  # not across two requests
        return np.diff(tok_t)[keep], owner[1:][keep]


def run_pool(
    engines: list[EngineCore],
    router: Router,
    arrivals: np.ndarray,
    prompt: np.ndarray,
    out: np.ndarray,
    *,
    hashes: list[list[int] | None] | None = None,
    priority: np.ndarray | None = None,
    telemetry_interval_s: float | None = None,
    progress: _Progress | None = None,
    closed: tuple[int, float] | None = None,
) -> PoolRun:
    """Requests through a pool of engines in virtual time: the one event loop.

    Replicas advance independently; before each arrival is routed every replica is
    brought up to that time, so a least-outstanding router sees what a real one would.
    Engine telemetry is sampled every ``telemetry_interval_s`` when given.

    ``closed = (users, delay_s)``: a closed loop instead of a schedule. The first
    ``users`` requests arrive at their ``arrivals``; each later one ``delay_s`` after the
    earliest answer that has not yet freed a user ended (``ClosedLoop``).
    """
    n = len(arrivals)
    replicas = len(engines)
    seqs: list[Seq | None] = [None] * n
    invalid_msg: dict[int, str] = {}
    rep_of = [0] * n
    # plain Python numbers: reading numpy scalars one by one costs more than the engine step
    arr_l = np.asarray(arrivals, dtype=np.float64).tolist()
    prompt_l = np.asarray(prompt).tolist()
    out_l = np.asarray(out).tolist()
    prio_l = np.asarray(priority).tolist() if priority is not None else None
    clocks = [0.0] * replicas
    times = [array("d") for _ in range(replicas)]
    tel: list[tuple[float, int, tuple[float, ...]]] = []
    interval = telemetry_interval_s if telemetry_interval_s is not None else float("inf")
    next_tel = [0.0 if telemetry_interval_s is not None else float("inf")] * replicas

    loop = ClosedLoop(engines, clocks, times, seqs, *closed) if closed is not None else None
    if loop is not None and telemetry_interval_s is not None:
        raise UsageError("a closed loop is simulated without telemetry")

    def sample(r: int, t: float) -> None:
        e = engines[r]
        u = e.pool.usage()
        tel.append((t, r, (e.num_running, e.num_waiting, u, u, e.preemptions_reported, e.generation_tokens)))

    def advance(r: int, until: float) -> None:
        e = engines[r]
        t = clocks[r]
        ts = times[r]
        nt = next_tel[r]
        step = e.step
        fast = e.run_decodes
        while t < until:
            if t >= nt:
                sample(r, t)
                nt = t + interval
            # decode-only stretches run in a tight loop, up to the next telemetry sample
            t = fast(t, min(until, nt), ts)
            if t >= until:
                break
            if t >= nt:
                continue
            dt = step()
            if dt is None:
                break
            t += dt
            ts.append(t)
        if t < until and not e.has_work():
            # going idle: record the empty engine once, so a time series steps down to zero
            # instead of holding the last busy sample across the gap
            if nt <= until and until != float("inf"):
                sample(r, max(t, nt))
                nt = until
            elif until == float("inf") and telemetry_interval_s is not None and not (tel and tel[-1][:2] == (t, r)):
                sample(r, t)  # the run's end: the counters' final values (preemptions, tokens)
            t = until
        clocks[r] = t
        next_tel[r] = nt

    for i in range(n):
        if loop is not None and i >= loop.users:
            arr_l[i] = loop.next_send()
        ta = arr_l[i]
        for r in range(replicas):
            if clocks[r] < ta:
                advance(r, ta)
        r = router.pick(engines)
        rep_of[i] = r
        e = engines[r]
        p_len = int(prompt_l[i])
        o_len = int(out_l[i])
        why = e.check(p_len, o_len)
        if why is not None:
            invalid_msg[i] = why
            if loop is not None:
                loop.ended(ta)  # answered at once (HTTP 400): its user is free
            continue
        s = Seq(
            rid=i,
            prompt_len=p_len,
            max_out=o_len,
            arrival=ta,
            priority=int(prio_l[i]) if prio_l is not None else 0,
            hashes=hashes[i] if hashes is not None else None,
        )
        seqs[i] = s
        if not e.add(s) and loop is not None:
            loop.ended(ta)  # refused (503): its user is free
        elif loop is not None:
            loop.sent(r, i)
        if progress is not None and (i & 1023) == 0:
            progress.update(i)
    for r in range(replicas):
        advance(r, float("inf"))
    stuck = [s.rid for s in seqs if s is not None and s.state not in (DONE, REJECTED)]
    if stuck:  # a bug, not a user error: every accepted request must finish
        raise RuntimeError(f"simulation ended with {len(stuck)} unfinished requests (first: {stuck[:5]})")
    return PoolRun(seqs, invalid_msg, np.array(rep_of, dtype=np.int32), times, tel,
                   arr_l if loop is not None else None)


class ClosedLoop:
    """When the next request of a closed loop goes out, from the answers as they end.

    Why exact event order and not a replay of a closed run's recorded send times: those
    are the real engine's completions, so a twin a little slower or faster sends the next
    request into the wrong step (``twin.vsim.closed_loop``). Each answer's end is read from
    its sequence's last token time (so decode stretches that ran ahead in the fast loop
    are still exact); an end counts only once every replica still working has reached it,
    since one behind could still end an answer earlier."""

    def __init__(self, engines: list[EngineCore], clocks: list[float], times: list[Any], seqs: list[Seq | None],
                 users: int, delay_s: float) -> None:
        if users < 1:
            raise UsageError(f"a closed loop needs at least one user, got {users}")
        self.engines, self.clocks, self.times, self.seqs = engines, clocks, times, seqs
        self.users, self.delay_s = users, delay_s
        self.ends: list[float] = []  # answers ended (heap), not yet spent on a send
        self.out: list[list[int]] = [[] for _ in engines]  # request ids in flight per replica
        self.seen = [0] * len(engines)  # each engine's num_finished already harvested

    def sent(self, r: int, rid: int) -> None:
        self.out[r].append(rid)

    def ended(self, t: float) -> None:
        heapq.heappush(self.ends, t)

    def _harvest(self, r: int) -> None:
        e = self.engines[r]
        if e.num_finished == self.seen[r]:
            return
        self.seen[r] = e.num_finished
        ts, keep = self.times[r], []
        for rid in self.out[r]:
            s = self.seqs[rid]
            if s is not None and s.state == DONE:
                self.ended(ts[s.last_it])
            else:
                keep.append(rid)
        self.out[r] = keep

    def next_send(self) -> float:
        """The next send time; steps the replica furthest behind until an end is certain."""
        while True:
            for r in range(len(self.engines)):  # what the pool's own advances finished too
                self._harvest(r)
            busy = [r for r, e in enumerate(self.engines) if e.has_work()]
            if self.ends and (not busy or self.ends[0] <= min(self.clocks[r] for r in busy)):
                return heapq.heappop(self.ends) + self.delay_s
            if not busy:
                raise RuntimeError("closed loop: no request in flight and no user free")  # a bug
            r = min(busy, key=self.clocks.__getitem__)
            e = self.engines[r]
            dt = e.step()  # one iteration: a decode stretch could pass the answer's end
            if dt is not None:
                self.clocks[r] += dt
                self.times[r].append(self.clocks[r])


def _prefix_keys(tr: Trace, block_size: int, inp: np.ndarray) -> list[list[int] | None] | None:
    """Chained engine-block hashes per request from ``prefix_hashes`` or prompt text."""
    df = tr.df
    has_hashes = "prefix_hashes" in df.columns and df["prefix_hashes"].null_count() < df.height
    has_prompt = "prompt" in df.columns and df["prompt"].null_count() < df.height
    if not has_hashes and not has_prompt:
        return None
    tbs = int(tr.meta.get("block_size") or tr.meta.get("prefix_block_size") or 512)
    hashes = df["prefix_hashes"].to_list() if has_hashes else [None] * df.height
    prompts = df["prompt"].to_list() if has_prompt else [None] * df.height
    out: list[list[int] | None] = []
    for i in range(df.height):
        h = hashes[i]
        if h:
            out.append(chain_hashes(engine_block_keys(h, tbs, int(inp[i]), block_size)))
        elif prompts[i]:
            out.append(chain_hashes(text_block_keys(prompts[i].split(), block_size)))
        else:
            out.append(None)
    return out


class _Progress:
    """A rich progress bar on stderr (only when asked; the sweep runs silently)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self._bar = None
        if enabled and total:
            from rich.progress import Progress

            from burstbench.output import console

            self._bar = Progress(console=console(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("simulating", total=total)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
