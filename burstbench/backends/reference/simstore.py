"""Writing a simulation's results: the same tables as a live run, built column-wise.

Apart from ``simulator`` because the event loop and the store are two concerns:
this module turns what the engines recorded (iteration end times per replica,
iteration-index segments per request) into request rows, one chunk row per token,
vLLM's server spans and engine telemetry, each as one Arrow frame per table (a
simulated hour is millions of chunk rows; per-row inserts would dominate).
"""

from __future__ import annotations

import json
from array import array
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from burstbench.backends.reference.seq import DONE, REJECTED, Seq
from burstbench.backends.reference.spans import simulated_span_frame
from burstbench.traces.schema import Trace

if TYPE_CHECKING:
    from pathlib import Path

    from burstbench.backends.reference.simulator import SimResult

TELEMETRY_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:generation_tokens_total",
)


def token_times(seqs: list[Seq | None], replica_of: np.ndarray,
                times: list[array]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every completed request's token times, in bulk: (its index, its token count, and the
    times of all their tokens, request after request).

    A request's tokens are iteration-index segments (a preemption splits them) into its
    replica's iteration end times; they are expanded and indexed without a per-token loop."""
    done_idx = np.array([i for i, s in enumerate(seqs) if s is not None and s.state == DONE], dtype=np.int64)
    seg_start: list[int] = []
    seg_count: list[int] = []
    seg_rep: list[int] = []
    outs = np.zeros(len(done_idx), dtype=np.int64)
    for j, i in enumerate(done_idx):
        s = seqs[i]
        assert s is not None
        segs = s.segs
        r = int(replica_of[i])
        for k in range(0, len(segs), 2):
            seg_start.append(segs[k])
            seg_count.append(segs[k + 1])
            seg_rep.append(r)
        outs[j] = s.max_out
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
    assert int(outs.sum()) == total, "token segments disagree with output counts"
    return done_idx, outs, tok_t


def write_results(
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
    """One run in ``path``: request rows, token chunks, spans and telemetry, column-wise."""
    from burstbench.store import ResultsStore, RunInfo

    df = tr.df
    n = df.height
    arrivals = df["arrival_s"].to_numpy()
    done_idx, outs_done, tok_t = token_times(seqs, replica_of, times)
    total = len(tok_t)
    n_out = np.zeros(n, dtype=np.int64)
    n_out[done_idx] = outs_done
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
        store.append_server_spans(simulated_span_frame(run_id, seqs, replica_of, times, model_name))
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
            # one row per (sample, metric): the samples' columns repeated, names tiled
            k = len(tel) * len(TELEMETRY_NAMES)
            labels = {r: json.dumps({"replica": str(r), "model_name": model_name}) for r in {r for _, r, _ in tel}}
            store.append_telemetry(
                pl.DataFrame(
                    {
                        "run_id": pl.repeat(run_id, k, eager=True),
                        "t_s": np.repeat(np.fromiter((t for t, _, _ in tel), dtype=np.float64, count=len(tel)), len(TELEMETRY_NAMES)),
                        "source": pl.repeat("engine", k, eager=True),
                        "name": list(TELEMETRY_NAMES) * len(tel),
                        "value": np.array([v for _, _, vals in tel for v in vals], dtype=np.float64),
                        "labels": [labels[r] for _, r, _ in tel for _ in TELEMETRY_NAMES],
                        "worker_id": pl.Series([r for _, r, _ in tel for _ in TELEMETRY_NAMES], dtype=pl.Int32),
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
