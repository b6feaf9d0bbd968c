"""The end-of-run summary: a vLLM-style table on stderr and the ``--json`` object.

Computed straight from the rows just committed (measured phase only), with the
DESIGN section 4 definitions, so what ``run`` prints is what the file holds.
The full analysis (SLOs, goodput, comparisons) is ``burstbench analyze``; this
module cannot import ``analysis`` (imports flow ``loadgen`` -> ``analysis``), so
it keeps the few formulas it needs, stated here:

- TTFT = first_token_s - sent_s; TTFVT = first_visible_s - sent_s
- E2EL = last_token_s - sent_s; E2EL from schedule = last_token_s - scheduled_s
- TPOT = (E2EL - TTFT) / (output_tokens - 1), only when output_tokens > 1
- ITL (chunk) = gaps between consecutive token-carrying chunks
- schedule lag = sent_s - scheduled_s (every sent request)
- output_tokens = usage.completion_tokens, else the client's count
- percentiles: linear interpolation over successful requests; std is the population std
- request counts: ``store.request_counts``, the accounting ``analyze`` and the report use
  (failed = every measured request that did not succeed, cancelled ones included)
- throughputs divide by the measured window (the run's duration without warm-up/cool-down)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from burstbench.store import ResultsStore, request_counts

STAT_KEYS = ("mean", "median", "std", "p50", "p90", "p95", "p99", "max")


def stats_ms(values_s: np.ndarray) -> dict[str, float | None]:
    """mean/median/std/p50/p90/p95/p99/max in milliseconds (None when empty)."""
    v = np.asarray(values_s, dtype=np.float64)
    v = v[np.isfinite(v)] * 1e3
    if v.size == 0:
        return dict.fromkeys(STAT_KEYS)
    p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
    return {"mean": float(v.mean()), "median": float(p50), "std": float(v.std()), "p50": float(p50),
            "p90": float(p90), "p95": float(p95), "p99": float(p99), "max": float(v.max())}


def summarize(store: ResultsStore, run_id: str) -> dict[str, Any]:
    """The DESIGN section 7 object for one run (measured phase)."""
    con = store.con
    run = con.execute(
        "SELECT status, end_reason, duration_s, measure_start_s, measure_end_s, target_rate, notes "
        "FROM runs WHERE run_id = ?", [run_id]).fetchall()
    if not run:
        raise KeyError(run_id)
    status, end_reason, duration, m0, m1, target_rate, notes = run[0]
    duration = float(duration or 0.0)
    window = max(0.0, float((m1 if m1 is not None else duration) - (m0 or 0.0)))
    rows = con.sql(
        "SELECT status, sent_s, scheduled_s, first_token_s, first_visible_s, last_token_s, "
        "coalesce(input_tokens_server, input_tokens) AS in_tok, "
        "coalesce(output_tokens_server, output_tokens_counted) AS out_tok "
        "FROM requests WHERE run_id = ? AND phase = 'measure'", params=[run_id]).pl()
    col = {c: rows[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in rows.columns if c != "status"}
    ok = rows["status"].to_numpy() == "ok"
    counts = request_counts(con, run_id)
    sent = col["sent_s"]
    sent_ok = sent[ok]
    first, visible, last = col["first_token_s"][ok], col["first_visible_s"][ok], col["last_token_s"][ok]
    out_tok, in_tok = col["out_tok"][ok], col["in_tok"][ok]
    ttft = first - sent_ok
    e2el = last - sent_ok
    multi = out_tok > 1
    tpot = (e2el[multi] - ttft[multi]) / (out_tok[multi] - 1)
    itl = con.sql(
        "SELECT t_s - lag(t_s) OVER (PARTITION BY c.request_id ORDER BY seq) AS gap "
        "FROM chunks c JOIN requests r ON r.run_id = c.run_id AND r.request_id = c.request_id "
        "WHERE c.run_id = ? AND r.phase = 'measure' AND r.status = 'ok' QUALIFY gap IS NOT NULL",
        params=[run_id]).pl()["gap"].to_numpy()
    completed = counts.ok
    total_out = float(np.nansum(out_tok))
    total_in = float(np.nansum(in_tok))
    per_s = (lambda x: x / window) if window > 0 else (lambda x: None)
    return {
        "run_id": run_id, "status": status, "end_reason": end_reason,
        "requests": counts.measured, "completed": completed, "failed": counts.failed,
        "failed_by_status": {"error": counts.error, "timeout": counts.timeout, "cancelled": counts.cancelled},
        "requests_unmeasured": counts.unmeasured, "requests_line": counts.describe(),
        "duration_s": window, "run_duration_s": duration, "target_rate": target_rate,
        "total_input_tokens": int(total_in), "total_output_tokens": int(total_out),
        "request_throughput": per_s(completed), "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
        "ttft_ms": stats_ms(ttft), "ttfvt_ms": stats_ms(visible - sent_ok), "tpot_ms": stats_ms(tpot),
        "itl_ms": stats_ms(np.asarray(itl, dtype=np.float64)), "e2el_ms": stats_ms(e2el),
        "e2el_from_schedule_ms": stats_ms(last - col["scheduled_s"][ok]),
        "schedule_lag_ms": stats_ms(sent - col["scheduled_s"]),
        "goodput": {"request_goodput": None, "slo_attainment": None, "token_goodput": None,
                    "note": "no SLO given; use 'burstbench analyze --slo ...'"},
        "notes": json.loads(notes) if notes else [],
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_table(s: dict[str, Any]) -> str:
    """vLLM ``bench serve``'s result block, plus schedule lag and the run's status."""
    lines = ["{s:{c}^60}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label: str, value: Any, digits: int = 2) -> None:
        lines.append(f"{label:<44}{_fmt(value, digits):>16}")

    row("Run:", s["run_id"])
    row("Status:", f"{s['status']} ({s['end_reason']})")
    row("Successful requests:", s["completed"])
    row("Failed requests:", s["failed"])
    for kind, n in s["failed_by_status"].items():
        if n:
            row(f"  of which {kind}:", n)
    if s["requests_unmeasured"]:
        row("Requests in warm-up/cool-down:", s["requests_unmeasured"])
    row("Benchmark duration (s):", s["duration_s"])
    row("Total input tokens:", s["total_input_tokens"])
    row("Total generated tokens:", s["total_output_tokens"])
    row("Request throughput (req/s):", s["request_throughput"])
    row("Output token throughput (tok/s):", s["output_throughput"])
    row("Total Token throughput (tok/s):", s["total_token_throughput"])
    for key, title, short in (("ttft_ms", "Time to First Token", "TTFT"),
                              ("tpot_ms", "Time per Output Token (excl. 1st token)", "TPOT"),
                              ("itl_ms", "Inter-token Latency", "ITL"),
                              ("e2el_ms", "End-to-end Latency", "E2EL"),
                              ("schedule_lag_ms", "Schedule lag (sent - scheduled)", "lag"),
                              ("e2el_from_schedule_ms", "E2EL from schedule (no coordinated omission)",
                               "E2EL-sched")):
        lines.append("{s:{c}^60}".format(s=f" {title} ", c="-"))
        st = s[key]
        row(f"Mean {short} (ms):", st["mean"])
        row(f"Median {short} (ms):", st["median"])
        row(f"P99 {short} (ms):", st["p99"])
    lines.append("=" * 60)
    for note in s["notes"]:
        lines.append(f"NOTE: {note}")
    return "\n".join(lines)
