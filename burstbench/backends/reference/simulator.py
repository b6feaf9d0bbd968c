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
times are produced here in bulk from the per-replica iteration end times with
numpy, and rows go to DuckDB as Arrow frames.
"""

from __future__ import annotations

import json
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
from burstbench.backends.reference.spans import simulated_span_rows
from burstbench.backends.reference.tokens import DEFAULT_REASONING_SHARE
from burstbench.errors import InputError, UsageError
from burstbench.traces.schema import Trace

TELEMETRY_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:generation_tokens_total",
)


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


def _load_parts(model: Any, hardware: Any, tp: int) -> tuple[Any, Any, Any]:
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
    m, hw, cm = _load_parts(model, hardware, tp)
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
        _write(
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
) -> PoolRun:
    """Requests through a pool of engines in virtual time: the one event loop.

    Replicas advance independently; before each arrival is routed every replica is
    brought up to that time, so a least-outstanding router sees what a real one would.
    Engine telemetry is sampled every ``telemetry_interval_s`` when given.
    """
    n = len(arrivals)
    replicas = len(engines)
    seqs: list[Seq | None] = [None] * n
    invalid_msg: dict[int, str] = {}
    replica_of = np.zeros(n, dtype=np.int32)
    clocks = [0.0] * replicas
    times = [array("d") for _ in range(replicas)]
    tel: list[tuple[float, int, tuple[float, ...]]] = []
    interval = telemetry_interval_s if telemetry_interval_s is not None else float("inf")
    next_tel = [0.0 if telemetry_interval_s is not None else float("inf")] * replicas

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
        ta = float(arrivals[i])
        for r in range(replicas):
            if clocks[r] < ta:
                advance(r, ta)
        r = router.pick(engines)
        replica_of[i] = r
        e = engines[r]
        p_len = int(prompt[i])
        o_len = int(out[i])
        why = e.check(p_len, o_len)
        if why is not None:
            invalid_msg[i] = why
            continue
        s = Seq(
            rid=i,
            prompt_len=p_len,
            max_out=o_len,
            arrival=ta,
            priority=int(priority[i]) if priority is not None else 0,
            hashes=hashes[i] if hashes is not None else None,
        )
        seqs[i] = s
        e.add(s)
        if progress is not None and (i & 1023) == 0:
            progress.update(i)
    for r in range(replicas):
        advance(r, float("inf"))
    stuck = [s.rid for s in seqs if s is not None and s.state not in (DONE, REJECTED)]
    if stuck:  # a bug, not a user error: every accepted request must finish
        raise RuntimeError(f"simulation ended with {len(stuck)} unfinished requests (first: {stuck[:5]})")
    return PoolRun(seqs, invalid_msg, replica_of, times, tel)


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


def _write(
    path: str | Path,
    result: SimResult,
    tr: Trace,
    seqs: list[Seq | None],
    invalid_msg: dict[int, str],
    replica_of: np.ndarray,
    times: list[array],
    tel: list[tuple[float, int, tuple[float, ...]]],
    label: str | None,
    scenario: dict[str, Any],
    model_name: str,
    share_col: np.ndarray | None,
    default_share: float,
    record_chunks: bool,
) -> None:
    from burstbench.store import ResultsStore, RunInfo

    df = tr.df
    n = df.height
    arrivals = df["arrival_s"].to_numpy()
    done_idx = np.array([i for i, s in enumerate(seqs) if s is not None and s.state == DONE], dtype=np.int64)
    # Token times, in bulk: expand every request's iteration segments, index the replica's times.
    seg_start: list[int] = []
    seg_count: list[int] = []
    seg_rep: list[int] = []
    n_out = np.zeros(n, dtype=np.int64)
    for i in done_idx:
        s = seqs[i]
        segs = s.segs
        r = int(replica_of[i])
        for k in range(0, len(segs), 2):
            seg_start.append(segs[k])
            seg_count.append(segs[k + 1])
            seg_rep.append(r)
        n_out[i] = s.max_out
    counts = np.asarray(seg_count, dtype=np.int64)
    total = int(counts.sum())
    starts = np.asarray(seg_start, dtype=np.int64)
    reps = np.asarray(seg_rep, dtype=np.int64)
    seg_first = np.cumsum(counts) - counts
    it_idx = np.repeat(starts - seg_first, counts) + np.arange(total, dtype=np.int64)
    # One concatenated times array; offset each replica's iteration indices into it.
    rep_off = np.cumsum([0] + [len(t) for t in times])[:-1]
    all_times = np.concatenate([np.frombuffer(t, dtype=np.float64) if len(t) else np.zeros(0) for t in times])
    it_idx += np.repeat(rep_off[reps], counts) if total else 0
    tok_t = all_times[it_idx] if total else np.zeros(0)
    outs_done = n_out[done_idx]
    assert int(outs_done.sum()) == total, "token segments disagree with output counts"
    req_first = np.cumsum(outs_done) - outs_done  # offset of each done request's first token

    # Reasoning split per request.
    if share_col is not None:
        shares = np.nan_to_num(share_col[done_idx].astype(np.float64), nan=default_share)
    else:
        shares = np.full(len(done_idx), default_share)
    reasoning = np.where(outs_done > 1, np.minimum((shares * outs_done).astype(np.int64), outs_done - 1), 0)

    first_t = np.full(n, np.nan)
    last_t = np.full(n, np.nan)
    vis_t = np.full(n, np.nan)
    if len(done_idx):
        first_t[done_idx] = tok_t[req_first]
        last_t[done_idx] = tok_t[req_first + outs_done - 1]
        vis_t[done_idx] = tok_t[req_first + reasoning]
    reasoning_full = np.zeros(n, dtype=np.int64)
    reasoning_full[done_idx] = reasoning
    cached = np.full(n, -1, dtype=np.int64)
    status = ["ok"] * n
    http = np.full(n, 200, dtype=np.int64)
    err_class: list[str | None] = [None] * n
    err_msg: list[str | None] = [None] * n
    for i, s in enumerate(seqs):
        if s is None:
            status[i], http[i], err_class[i] = "error", 400, "http_400"
            err_msg[i] = invalid_msg.get(i)
        elif s.state == REJECTED:
            status[i], http[i], err_class[i] = "error", 503, "http_503"
            err_msg[i] = "waiting queue full; retry later"
        else:
            cached[i] = max(s.cached_tokens, 0)
    ok = np.array([st == "ok" for st in status])
    end_t = np.where(ok, last_t, arrivals)

    def col(name: str, default: Any = None) -> Any:
        return df[name] if name in df.columns else pl.repeat(default, n, eager=True)

    with ResultsStore(path) as store:
        run_id = store.create_run(
            RunInfo(backend="simulate", endpoint=None, model=model_name, label=label, clock="virtual", scenario=scenario)
        )
        inp = df["input_tokens"]
        outp = df["output_tokens"]
        req = pl.DataFrame(
            {
                "run_id": pl.repeat(run_id, n, eager=True),
                "request_id": np.arange(n, dtype=np.int64),
                "session_id": col("session_id").cast(pl.String),
                "turn": col("turn").cast(pl.Int32),
                "tenant": col("tenant").cast(pl.String),
                "model": pl.repeat(model_name, n, eager=True),
                "phase": pl.repeat("measure", n, eager=True),
                "scheduled_s": arrivals,
                "sent_s": arrivals,
                "first_token_s": first_t,
                "first_visible_s": vis_t,
                "last_token_s": last_t,
                "end_s": end_t,
                "input_tokens": inp,
                "input_tokens_server": pl.Series(np.where(ok, inp.to_numpy(), 0)).cast(pl.Int64),
                "output_tokens_target": outp,
                "output_tokens_server": n_out,
                "output_tokens_counted": n_out,
                "reasoning_tokens": reasoning_full,
                "cached_tokens": cached,
                "chunk_count": n_out.astype(np.int32),
                "status": status,
                "http_status": http.astype(np.int32),
                "error_class": pl.Series(err_class, dtype=pl.String),
                "error_message": pl.Series(err_msg, dtype=pl.String),
                "worker_id": replica_of,
            }
        ).with_columns(
            # numpy NaN -> SQL NULL for the optional times and counts of failed requests
            *[pl.col(c).fill_nan(None) for c in ("first_token_s", "first_visible_s", "last_token_s")],
            *[
                pl.when(pl.col("status") == "ok").then(pl.col(c)).otherwise(None).alias(c)
                for c in ("input_tokens_server", "output_tokens_server", "output_tokens_counted", "reasoning_tokens", "cached_tokens")
            ],
        )
        store.append_requests(req)
        # vLLM's per-request span phases, as serve --otlp-traces-endpoint would export them
        store.append_server_spans(simulated_span_rows(run_id, seqs, replica_of, times, model_name))
        if record_chunks and total:
            rid_rep = np.repeat(done_idx, outs_done)
            seq_no = np.arange(total, dtype=np.int64) - np.repeat(req_first, outs_done)
            chunks = pl.DataFrame(
                {
                    "run_id": pl.repeat(run_id, total, eager=True),
                    "request_id": rid_rep,
                    "seq": seq_no.astype(np.int32),
                    "t_s": tok_t,
                    "tokens": np.ones(total, dtype=np.int32),
                    "reasoning": seq_no < np.repeat(reasoning, outs_done),
                }
            )
            store.append_chunks(chunks)
        if tel:
            rows_t: list[float] = []
            rows_name: list[str] = []
            rows_val: list[float] = []
            rows_lab: list[str] = []
            rows_w: list[int] = []
            for t, r, vals in tel:
                lab = json.dumps({"replica": str(r), "model_name": model_name})
                for name, v in zip(TELEMETRY_NAMES, vals, strict=True):
                    rows_t.append(t)
                    rows_name.append(name)
                    rows_val.append(float(v))
                    rows_lab.append(lab)
                    rows_w.append(r)
            k = len(rows_t)
            store.append_telemetry(
                pl.DataFrame(
                    {
                        "run_id": pl.repeat(run_id, k, eager=True),
                        "t_s": rows_t,
                        "source": pl.repeat("engine", k, eager=True),
                        "name": rows_name,
                        "value": rows_val,
                        "labels": rows_lab,
                        "worker_id": pl.Series(rows_w, dtype=pl.Int32),
                    }
                )
            )
        notes = list(result.notes)
        notes.append(
            f"simulated: {result.iterations} iterations, {result.preemptions} preemptions, "
            f"prefix hit rate {result.prefix_hit_rate:.3f}"
        )
        store.finish_run(run_id, status="done", end_reason="completed", duration_s=result.duration_s, notes=notes)
        store.checkpoint()
    result.run_id = run_id
    result.store = str(path)


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
