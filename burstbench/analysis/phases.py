"""Where each request's time to first token went: client timings joined to server spans.

A load generator sees one TTFT per request; the server's span (vLLM's
``llm_request``, or the reference engine's, see ``burstbench.otlp``) says how long
the request queued and prefilled. Joined by trace id, every request's *TTFT from
schedule* splits into five parts that add up exactly:

- ``client``: schedule lag (sent - scheduled): the client's own lateness before the
  request is on the wire;
- ``network``: client TTFT - server TTFT: transit both ways, HTTP parsing, SSE
  framing and the client's read (on loopback: small and positive);
- ``server_other``: server TTFT - queue - prefill: what the server spends outside
  the engine's scheduler (tokenisation, the frontend-to-engine hop, detokenising the
  first token) - the remainder, shown rather than folded into a neighbour;
- ``queue``: waiting for the scheduler (``gen_ai.latency.time_in_queue``);
- ``prefill``: first scheduled to first token (``gen_ai.latency.time_in_model_prefill``).

So TTFT = network + server_other + queue + prefill, and a part that comes out
negative is reported (``negative``), never clipped: it means clocks or definitions
disagree, which a user must see. Requests whose span never arrived are counted.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from burstbench.analysis.metrics import PERCENTILES, Selection, _fetch_dict, _stats_obj, _stats_sql

PARTS: tuple[str, ...] = ("client", "network", "server_other", "queue", "prefill")
SERVER_PHASES: tuple[str, ...] = ("queue", "prefill", "decode", "inference", "ttft", "e2e")

PHASES_VIEW_SQL = """
CREATE OR REPLACE TEMP VIEW request_phases AS
WITH sp AS (
    SELECT * FROM server_spans
    QUALIFY row_number() OVER (PARTITION BY run_id, request_id ORDER BY received_s NULLS LAST, span_id) = 1
)
SELECT
    r.run_id, r.request_id, r.phase, r.ok, r.sent_s, r.tenant, r.model, r.session_id,
    r.ttft_s, r.e2el_s, r.schedule_lag_s,
    sp.request_id IS NOT NULL AS joined,
    sp.arrival_s - r.sent_s AS transit_s,
    sp.queue_s AS server_queue_s, sp.prefill_s AS server_prefill_s, sp.decode_s AS server_decode_s,
    sp.inference_s AS server_inference_s, sp.ttft_s AS server_ttft_s, sp.e2e_s AS server_e2e_s,
    r.schedule_lag_s AS client_s,
    r.ttft_s - sp.ttft_s AS network_s,
    sp.ttft_s - sp.queue_s - sp.prefill_s AS server_other_s,
    sp.queue_s AS queue_s,
    sp.prefill_s AS prefill_s,
    r.e2el_s - sp.e2e_s AS e2e_network_s
FROM request_metrics r
LEFT JOIN sp ON sp.run_id = r.run_id AND sp.request_id = r.request_id
"""


def has_spans(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """Whether the run has any server span (files older than schema 2 have no table)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "server_spans" not in tables:
        return False
    return bool(con.execute("SELECT count(*) FROM server_spans WHERE run_id = ?", [run_id]).fetchone()[0])


def install_view(con: duckdb.DuckDBPyConnection) -> None:
    """``request_phases``: one row per request with its TTFT parts (needs ``server_spans``)."""
    con.execute(PHASES_VIEW_SQL)


def decomposition(con: duckdb.DuckDBPyConnection, run_id: str, sel: Selection | None = None) -> dict[str, Any] | None:
    """The TTFT decomposition of a run's measured, successful requests; None without spans.

    Statistics are the ``analyze --json`` latency objects (milliseconds) over the
    requests whose span arrived and carries both queue and prefill time."""
    if not has_spans(con, run_id):
        return None
    install_view(con)
    cond, params = (sel or Selection()).sql()
    full = "joined AND queue_s IS NOT NULL AND prefill_s IS NOT NULL AND server_ttft_s IS NOT NULL AND ttft_s IS NOT NULL"
    cols = [_stats_sql(f"{p}_s", p, full) for p in PARTS]
    cols += [_stats_sql("ttft_s", "ttft", full), _stats_sql("server_ttft_s", "server_ttft", full),
             _stats_sql("transit_s", "transit", "joined"), _stats_sql("e2e_network_s", "e2e_network", "joined"),
             _stats_sql("server_decode_s", "decode", "joined"), _stats_sql("server_e2e_s", "server_e2e", "joined")]
    neg = ", ".join(f"count(*) FILTER (WHERE {full} AND {p}_s < 0) AS {p}_neg" for p in PARTS)
    sql = (f"SELECT count(*) AS completed, count(*) FILTER (WHERE joined) AS joined_n,"
           f" count(*) FILTER (WHERE {full}) AS full_n,"
           f" count(*) FILTER (WHERE joined AND server_ttft_s > ttft_s) AS server_above_client, {neg}, "
           + ", ".join(cols)
           + " FROM request_phases r WHERE r.run_id = ? AND r.phase = 'measure' AND r.ok" + cond)
    row = _fetch_dict(con, sql, [run_id, *params])
    completed, joined = int(row["completed"]), int(row["joined_n"])
    parts = {p: _stats_obj(row, p) for p in PARTS}
    mean_total = sum((parts[p]["mean"] or 0.0) for p in PARTS)
    return {
        "completed": completed,
        "joined": joined,
        "missing": completed - joined,
        "join_rate": joined / completed if completed else None,
        "decomposed": int(row["full_n"]),
        "server_ttft_above_client": int(row["server_above_client"]),
        "parts_ms": parts,
        "mean_share": {p: (parts[p]["mean"] or 0.0) / mean_total if mean_total > 0 else None for p in PARTS},
        "negative": {p: int(row[f"{p}_neg"]) for p in PARTS},
        "ttft_ms": _stats_obj(row, "ttft"),
        "server_ttft_ms": _stats_obj(row, "server_ttft"),
        "transit_ms": _stats_obj(row, "transit"),
        "e2e_network_ms": _stats_obj(row, "e2e_network"),
        "server_decode_ms": _stats_obj(row, "decode"),
        "server_e2e_ms": _stats_obj(row, "server_e2e"),
        "percentiles": list(PERCENTILES),
    }


def per_request(con: duckdb.DuckDBPyConnection, run_id: str) -> Any:
    """The decomposed requests of a run as a Polars frame (sent_s and each part in seconds)."""
    install_view(con)
    cols = ", ".join(f"{p}_s" for p in PARTS)
    return con.sql(
        f"SELECT request_id, sent_s, ttft_s, server_ttft_s, {cols} FROM request_phases"
        " WHERE run_id = $run AND phase = 'measure' AND ok AND joined AND queue_s IS NOT NULL"
        " AND prefill_s IS NOT NULL AND server_ttft_s IS NOT NULL AND ttft_s IS NOT NULL ORDER BY sent_s",
        params={"run": run_id}).pl()


def outside_engine_s(con: duckdb.DuckDBPyConnection, run_id: str, min_share: float = 0.99) -> np.ndarray | None:
    """Per request, the part of TTFT outside the engine's queue and prefill, from server spans.

    What ``calibrate --spans`` uses; None unless at least 99% of the completed requests have
    a span: the frontend latency is then measured, not profiled from the TTFT the fit is
    also matching. Opt-in because it did not identify the engine better: against the live
    reference server with a hidden engine (benchmarks/bench_spans_twin.py, two repeats on
    a host at load 10-14) it narrowed the frontend's interval ~8x (+-0.7 ms vs +-5.5 ms)
    but moved the bandwidth scale further from the truth (0.60-0.64 vs 0.57-0.58, truth
    0.55) with the same holdout errors; and on simulated runs (frontend exactly 0) a fixed
    frontend made the limit search pick a 4096-token budget where the profiled one, which
    gives the optimizer a smoother path, found the true 2048."""
    if not has_spans(con, run_id):
        return None
    install_view(con)
    n_ok, d = con.execute(
        "SELECT count(*), list(network_s + server_other_s) FILTER (WHERE queue_s IS NOT NULL AND prefill_s IS NOT NULL"
        " AND network_s IS NOT NULL) FROM request_phases WHERE run_id = ? AND ok", [run_id]).fetchone()
    if not d or len(d) < min_share * n_ok:
        return None
    return np.asarray(d, dtype=np.float64)
