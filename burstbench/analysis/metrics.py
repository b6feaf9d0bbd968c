"""DESIGN section 4 as DuckDB SQL over the results store, and the ``analyze`` summary.

Why SQL views rather than Python loops: a store can hold a million requests and a
hundred million chunks, and DuckDB aggregates those without loading them into Python
(about 20 s of CPU for 100 million chunks here, 1.5x less than numpy after loading;
benchmarks/bench_analysis.py). The views are TEMP views created on the connection (``install_views``),
so they work on a read-only file and a user can query them too
(``burstbench analyze results.duckdb --sql "SELECT * FROM request_metrics"``):

- ``request_metrics``: one row per request with ``ttft_s``, ``ttfvt_s``, ``tpot_s``,
  ``itl_request_mean_s`` (the request's mean chunk gap), ``e2el_s``, ``schedule_lag_s``,
  ``e2el_from_schedule_s``, ``output_tokens`` (server count, else counted),
  ``input_tokens`` (server count, else the trace's) and ``ok``;
- ``chunk_gaps``: one row per token-carrying chunk after the first, with ``gap_s``
  (chunk ITL, ``lag`` over ``seq``) and ``tokens``;
- ``token_itl``: the chunk gap split evenly over the tokens the chunk carried, one row
  per token.

The formulas equal vLLM's ``bench serve`` (``calculate_metrics``): TPOT only for
outputs of more than one token, ITL pooled over every chunk gap of the successful
requests, percentiles by linear interpolation (``quantile_cont`` = ``np.percentile``)
over successful requests, population standard deviation (``np.std``), and
throughputs over the run's wall duration counting successful requests' tokens.
An empty sample gives ``None`` (vLLM prints 0), so "no data" is never read as "fast".

One definition per name, everywhere (``analyze``, ``--compare``, ``--slo``, the report):
``NAMES_IN_OTHER_TOOLS`` below is the table of what each name here is called by other
tools, and where their definitions differ. The trap is "ITL": vLLM's ITL pools chunk
gaps (our ``itl``), while AIPerf's and GuideLLM's "ITL" is a per-request average (our
``tpot``); GuideLLM's own "TPOT" divides by every output token, the first included.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from burstbench.errors import StoreError, UsageError
from burstbench.store import (
    check_schema_version,
    request_counts,
    resolve_run,  # the one run selector, re-exported
)

PERCENTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)

# Per-request latency metrics (column in request_metrics) in the order analyze prints them.
REQUEST_METRICS: tuple[str, ...] = (
    "ttft",
    "ttfvt",
    "tpot",
    "e2el",
    "schedule_lag",
    "e2el_from_schedule",
)
# Every metric with one value per request, which a user may put in --slo: an SLO judges
# requests. ``itl`` is not one of them: it pools every chunk gap (see NAMES_IN_OTHER_TOOLS).
METRIC_NAMES: tuple[str, ...] = (*REQUEST_METRICS, "itl_request_mean")
# name here -> (definition, vLLM bench serve, AIPerf / GenAI-Perf, GuideLLM); "—": no such metric.
# Our percentiles interpolate linearly (as vLLM's np.percentile); GuideLLM's do not
# (they pick an order statistic), so its p99 of a small run can differ from ours on the
# same requests.
NAMES_IN_OTHER_TOOLS: dict[str, tuple[str, str, str, str]] = {
    "ttft": ("first chunk carrying choices − sent", "TTFT", "time_to_first_token (TTFT)",
             "time_to_first_token"),
    "ttfvt": ("first chunk with visible (non-reasoning) content − sent", "—", "—", "—"),
    "tpot": ("(E2EL − TTFT) / (output_tokens − 1), only when output_tokens > 1", "TPOT",
             "inter_token_latency (ITL)",
             "inter_token_latency (ITL); GuideLLM's time_per_output_token (TPOT) is latency / output_tokens, "
             "first token included"),
    "itl": ("every gap between consecutive token-carrying chunks, pooled over requests", "ITL",
            "inter_chunk_latency (ICL)", "—"),
    "itl_token": ("each chunk gap split evenly over the tokens the chunk carried", "—", "—", "—"),
    "itl_request_mean": ("one request's mean chunk gap: (last − first token) / (chunks − 1)", "—", "—", "—"),
    "e2el": ("last token-carrying chunk − sent", "E2EL", "request_latency",
             "request_latency, which ends when the stream closes (our end_s), not at the last token"),
    "schedule_lag": ("sent − scheduled", "—", "credit drop → request start", "dispatch delay"),
    "e2el_from_schedule": ("last token − scheduled (free of coordinated omission)", "—",
                           "effective latency", "scheduled latency"),
}
# Row ranges the adjacent-chunk pass is cut into (None: by table size and threads).
ADJ_PARTS: int | None = None

VIEWS_SQL = """
CREATE OR REPLACE TEMP VIEW request_metrics AS
SELECT
    r.run_id, r.request_id, r.session_id, r.turn, r.tenant,
    COALESCE(r.model, u.model) AS model, r.phase, r.status, r.http_status, r.error_class,
    r.worker_id, r.scheduled_s, r.sent_s, r.first_token_s, r.first_visible_s,
    r.last_token_s, r.end_s, r.chunk_count,
    r.status = 'ok' AS ok,
    COALESCE(r.input_tokens_server, r.input_tokens) AS input_tokens,
    COALESCE(r.output_tokens_server, r.output_tokens_counted) AS output_tokens,
    r.first_token_s - r.sent_s AS ttft_s,
    r.first_visible_s - r.sent_s AS ttfvt_s,
    COALESCE(r.last_token_s, r.end_s) - r.sent_s AS e2el_s,
    CASE WHEN COALESCE(r.output_tokens_server, r.output_tokens_counted) > 1
         THEN (COALESCE(r.last_token_s, r.end_s) - r.first_token_s)
              / (COALESCE(r.output_tokens_server, r.output_tokens_counted) - 1) END AS tpot_s,
    CASE WHEN r.chunk_count > 1
         THEN (r.last_token_s - r.first_token_s) / (r.chunk_count - 1) END AS itl_request_mean_s,
    r.sent_s - r.scheduled_s AS schedule_lag_s,
    COALESCE(r.last_token_s, r.end_s) - r.scheduled_s AS e2el_from_schedule_s
FROM requests r LEFT JOIN runs u USING (run_id);

CREATE OR REPLACE TEMP VIEW chunk_gaps AS
SELECT run_id, request_id, seq, t_s, tokens, reasoning, gap_s FROM (
    SELECT c.*, c.t_s - lag(c.t_s) OVER (PARTITION BY c.run_id, c.request_id ORDER BY c.seq) AS gap_s
    FROM chunks c
) WHERE gap_s IS NOT NULL;

CREATE OR REPLACE TEMP VIEW token_itl AS
SELECT g.run_id, g.request_id, g.seq, g.gap_s / g.k AS itl_token_s
FROM (SELECT *, GREATEST(COALESCE(tokens, 1), 1) AS k FROM chunk_gaps) g, range(g.k);
"""


def install_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the TEMP views of this module on ``con``; idempotent."""
    con.execute(VIEWS_SQL)


def bound_memory(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's memory and threads for reading a store, and where it spills past them.

    Every command that reads a results store comes through ``open_store``, so this is
    the one place its memory is bounded (``limits.READ_MEMORY_LIMIT``). The spill
    folder is private to the process (a read-only store must not grow a ``.tmp``
    folder beside the user's file) and removed when the process ends.
    """
    import os

    from burstbench.limits import READ_MEMORY_LIMIT, READ_THREADS

    con.execute(f"SET memory_limit = '{READ_MEMORY_LIMIT}'")
    con.execute(f"SET threads = {max(1, min(os.cpu_count() or 1, READ_THREADS))}")
    con.execute("SET temp_directory = ?", [_spill_dir()])


_SPILL: list[str] = []


def _spill_dir() -> str:
    """This process's folder for DuckDB's spill files, made on first use."""
    if not _SPILL:
        import atexit
        import shutil
        import tempfile

        _SPILL.append(tempfile.mkdtemp(prefix="burstbench-spill-"))
        atexit.register(shutil.rmtree, _SPILL[0], True)
    return _SPILL[0]


def open_store(path: str | Path, *, lock: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a results file read-only with the metric views installed and DuckDB's
    memory bounded (``bound_memory``).

    With ``lock`` the connection can read nothing outside the file (a user's query
    that needs more than the memory limit fails with DuckDB's out-of-memory error
    instead of taking the machine) and its configuration cannot be changed any more
    (what ``--sql`` uses).
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such results file; create it with 'burstbench run' or 'burstbench simulate'")
    try:
        con = duckdb.connect(str(p), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"{p}: cannot open as a results store ({exc})") from exc
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not {"runs", "requests", "chunks"} <= tables:
        con.close()
        raise StoreError(f"{p}: not a burstbench results store (no runs/requests/chunks tables)")
    try:
        check_schema_version(con, p)
    except StoreError:
        con.close()
        raise
    install_views(con)
    bound_memory(con)
    if lock:
        from burstbench.limits import SQL_MEMORY_LIMIT

        con.execute(f"SET memory_limit = '{SQL_MEMORY_LIMIT}'")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


# -- selection -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which requests of a run a summary covers: a time window, a tenant, a model, a session.

    ``time_range`` is on ``sent_s`` (seconds from run start), half-open ``[t0, t1)``.
    """

    time_range: tuple[float, float] | None = None
    tenant: str | None = None
    model: str | None = None
    session: str | None = None

    @classmethod
    def of(cls, where: Selection | Mapping[str, Any] | None) -> Selection:
        if where is None:
            return cls()
        if isinstance(where, Selection):
            return where
        unknown = set(where) - {"time_range", "tenant", "model", "session"}
        if unknown:
            raise UsageError(
                f"unknown selection key(s) {sorted(unknown)}; use time_range, tenant, model, session"
            )
        tr = where.get("time_range")
        if tr is not None:
            t0, t1 = float(tr[0]), float(tr[1])
            if not t1 > t0:
                raise UsageError(f"time range {t0}:{t1} is empty; give start:end with end > start")
            tr = (t0, t1)
        return cls(time_range=tr, tenant=where.get("tenant"), model=where.get("model"), session=where.get("session"))

    def sql(self, alias: str = "r") -> tuple[str, list[Any]]:
        """``AND ...`` conditions and their bound parameters (never formatted into SQL)."""
        conds: list[str] = []
        params: list[Any] = []
        if self.time_range is not None:
            conds.append(f"{alias}.sent_s >= ? AND {alias}.sent_s < ?")
            params += [self.time_range[0], self.time_range[1]]
        for col, val in (("tenant", self.tenant), ("model", self.model), ("session_id", self.session)):
            if val is not None:
                conds.append(f"{alias}.{col} = ?")
                params.append(val)
        return "".join(f" AND {c}" for c in conds), params

    def as_dict(self) -> dict[str, Any]:
        return {
            "time_range": list(self.time_range) if self.time_range else None,
            "tenant": self.tenant,
            "model": self.model,
            "session": self.session,
        }


def run_info(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The run's row; ``timeline`` is False for a run whose send times are not real (an imported
    file without them: every request at t=0), ``notes`` what its writer or importer warned."""
    import json

    row = con.execute(
        "SELECT run_id, label, backend, model, clock, target_rate, duration_s, measure_start_s,"
        " measure_end_s, status, COALESCE(json_extract(scenario, '$.timeline') <> 'false', true), notes"
        " FROM runs WHERE run_id = ?",
        [run_id],
    ).fetchone()
    if row is None:
        raise StoreError(f"run '{run_id}' not found")
    keys = ("run_id", "label", "backend", "model", "clock", "target_rate", "duration_s",
            "measure_start_s", "measure_end_s", "status", "timeline")
    info = dict(zip(keys, row[:-1], strict=True))
    try:
        notes = json.loads(row[-1]) if row[-1] else []
    except ValueError:
        notes = []
    info["notes"] = [str(n) for n in notes] if isinstance(notes, list) else []
    return info


def list_runs(store: str | Path | duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every run in the store, oldest first, with its label: what ``--run`` can name."""
    con, owned = _as_con(store)
    try:
        cur = con.execute(
            "SELECT run_id, label, backend, model, CAST(date_trunc('second', started_at) AS VARCHAR) AS started_at,"
            " (SELECT count(*) FROM requests q WHERE q.run_id = r.run_id) AS requests, status"
            " FROM runs r ORDER BY r.started_at, r.run_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        if owned:
            con.close()


def require_timeline(info: Mapping[str, Any], what: str) -> None:
    """Refuse ``what`` (a time-resolved view) for a run whose file recorded no send times."""
    if not info["timeline"]:
        name = f"{info['run_id']} ({info['label']})" if info.get("label") else info["run_id"]
        raise UsageError(f"run {name} has no timeline (its file recorded no request start times); {what} cannot be"
                         " computed for it")


def measured_window(con: duckdb.DuckDBPyConnection, run_id: str, sel: Selection | None = None) -> tuple[float, float]:
    """The wall interval throughputs divide by.

    The run's measured window (``measure_start_s``..``measure_end_s``, or 0..``duration_s``)
    when the writer recorded it; for a run that never finished, first send to last
    response of its measured requests. A time-range selection clips it.
    """
    info = run_info(con, run_id)
    t0 = info["measure_start_s"]
    t1 = info["measure_end_s"] if info["measure_end_s"] is not None else info["duration_s"]
    if t0 is None and t1 is not None:
        t0 = 0.0
    if t0 is None or t1 is None:
        row = con.execute(
            "SELECT min(sent_s), max(COALESCE(end_s, last_token_s, sent_s)) FROM requests"
            " WHERE run_id = ? AND phase = 'measure'",
            [run_id],
        ).fetchone()
        t0, t1 = (row[0] or 0.0), (row[1] or 0.0)
    if sel is not None and sel.time_range is not None:
        t0, t1 = max(t0, sel.time_range[0]), min(t1, sel.time_range[1])
    return float(t0), float(t1)


# -- summaries -------------------------------------------------------------------------


def _stats_sql(expr: str, name: str, cond: str = "ok") -> str:
    qs = ", ".join(str(q) for q in PERCENTILES)
    f = f"FILTER (WHERE {cond} AND {expr} IS NOT NULL)"
    return (
        f"avg({expr}) {f} AS {name}_mean, stddev_pop({expr}) {f} AS {name}_std,"
        f" quantile_cont({expr}, [{qs}]) {f} AS {name}_q, max({expr}) {f} AS {name}_max,"
        f" count({expr}) {f} AS {name}_n"
    )


def _stats_obj(row: Mapping[str, Any], name: str) -> dict[str, float | None]:
    """The DESIGN section 7 object for one metric, in milliseconds."""
    n = row.get(f"{name}_n") or 0
    if not n:
        return {k: None for k in ("mean", "median", "std", "p50", "p90", "p95", "p99", "max")}
    q = row[f"{name}_q"]
    ms = [v * 1000.0 for v in q]
    return {
        "mean": row[f"{name}_mean"] * 1000.0,
        "median": ms[0],
        "std": (row[f"{name}_std"] or 0.0) * 1000.0,
        "p50": ms[0],
        "p90": ms[1],
        "p95": ms[2],
        "p99": ms[3],
        "max": row[f"{name}_max"] * 1000.0,
        "n": int(n),
    }


def _fetch_dict(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> dict[str, Any]:
    cur = con.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    row = cur.fetchone()
    return dict(zip(cols, row, strict=True)) if row else {}


def _finite_ms(v: float | None) -> float | None:
    if v is None or math.isinf(v):
        return None
    return v * 1000.0


def request_stats(con: duckdb.DuckDBPyConnection, run_id: str, sel: Selection) -> dict[str, Any]:
    """Token totals, per-request latency statistics and error-adjusted percentiles.

    Request counts are ``store.request_counts``'s, the one accounting every view uses."""
    cond, params = sel.sql()
    qs = ", ".join(str(q) for q in PERCENTILES)
    parts = [_stats_sql(f"{m}_s", m) for m in METRIC_NAMES]
    # Error-adjusted: every failed request counts as +inf, so a tail made of failures shows.
    ea = [
        f"quantile_cont(CASE WHEN ok THEN {m}_s ELSE 'inf'::DOUBLE END, [{qs}])"
        f" FILTER (WHERE NOT ok OR {m}_s IS NOT NULL) AS {m}_ea"
        for m in ("ttft", "tpot", "e2el", "ttfvt")
    ]
    sql = (
        "SELECT COALESCE(sum(input_tokens) FILTER (WHERE ok), 0) AS total_input,"
        " COALESCE(sum(output_tokens) FILTER (WHERE ok), 0) AS total_output,"
        + ", ".join(parts + ea)
        + " FROM request_metrics r WHERE r.run_id = ? AND r.phase = 'measure'"
        + cond
    )
    return _fetch_dict(con, sql, [run_id, *params])


def _gap_quantiles(con: duckdb.DuckDBPyConnection, table: str, value: str, weight: str) -> list[float]:
    """PERCENTILES of ``value`` over ``table``'s gaps, each counted ``weight`` times.

    Exact, in bounded memory (``analysis.quantiles``): ``quantile_cont`` over a hundred
    million gaps held ~0.8 GB per thread outside DuckDB's memory limit.
    """
    from burstbench.analysis.quantiles import exact_quantiles

    src = f"SELECT {value} AS v{'' if weight == '1' else ', ' + weight} FROM {table} WHERE gap_s IS NOT NULL"
    return exact_quantiles(con, src, None, PERCENTILES, weight=None if weight == "1" else weight)[0]


def chunk_stats(con: duckdb.DuckDBPyConnection, run_id: str, sel: Selection) -> dict[str, Any]:
    """Chunk ITL pooled over every gap of the selected successful requests, and token ITL.

    Fast path: the load generator and the simulator write each request's chunks
    together and in ``seq`` order, so a chunk's predecessor is usually the row just
    before it. A streaming ``lag() OVER ()`` (no sort) pairs each row with the row
    before; a pair counts only when it is the same request and ``seq - 1``, so every
    gap found is right, and the number found is checked against the number expected
    (chunks that are not a request's first). If any is missing (rows written out of
    order), the gaps are recomputed the sure way: each request's times collected in
    ``seq`` order and differenced in place. The gaps go to a TEMP table (dropped at
    the end) that the statistics then read.

    Token ITL counts ``gap / tokens`` once per token the chunk carried: its count,
    mean and spread follow from the chunk rows in closed form (sum of k, sum of gaps,
    a second centred pass); its percentiles weigh each value by k. When no chunk
    carried more than one token it equals chunk ITL.
    """
    cond, params = sel.sql()
    multi = con.execute("SELECT COALESCE(bool_or(tokens > 1), false) FROM chunks WHERE run_id = ?", [run_id]).fetchone()[0]
    sel_cte = f"""
    WITH sel AS (
        SELECT r.request_id FROM request_metrics r
        WHERE r.run_id = ? AND r.phase = 'measure' AND r.ok{cond}
    )"""
    # The streaming lag runs on one thread; cut the table into row ranges that overlap
    # by one row (so each range's first row still sees its predecessor) and let the
    # ranges run in parallel. The bounds are integers computed here, not user input.
    n_rows = int(con.execute("SELECT COALESCE(max(rowid) + 1, 0) FROM chunks").fetchone()[0])
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    parts = ADJ_PARTS or max(1, min(2 * threads, n_rows // 1_000_000))
    bounds = [(n_rows * i // parts, n_rows * (i + 1) // parts) for i in range(parts)]
    adj = " UNION ALL ".join(
        f"""SELECT * FROM (
            SELECT rowid AS rw, request_id, seq, t_s, tokens, lag(request_id) OVER () AS p_rid,
                   lag(seq) OVER () AS p_seq, lag(t_s) OVER () AS p_t
            FROM chunks WHERE run_id = ? AND rowid BETWEEN {max(a - 1, 0)} AND {b - 1}) WHERE rw >= {a}"""
        for a, b in bounds
    )
    table = f"_bb_gaps_{uuid.uuid4().hex[:12]}"
    # The table holds one row per chunk that is not its request's first (a gap, or NULL
    # where the fast path found no predecessor) and the token count only when a chunk
    # carried several: 8 bytes a row, so a 100M-chunk run stays near the memory limit.
    k_fast = ", GREATEST(COALESCE(a.tokens, 1), 1) AS k" if multi else ""
    k_sure = ", unnest(tk[2:]) AS k" if multi else ""
    fast = sel_cte + f"""
    , adj AS ({adj})
    SELECT CASE WHEN a.p_rid = a.request_id AND a.p_seq = a.seq - 1 THEN a.t_s - a.p_t END AS gap_s{k_fast}
    FROM adj a SEMI JOIN sel ON a.request_id = sel.request_id WHERE a.seq <> 0"""
    tok_cols = ", sum(k) FILTER (WHERE gap_s IS NOT NULL) AS tok_n, max(gap_s / k) AS tok_max" if multi else ""
    stats_sql = (f"SELECT count(gap_s) AS itl_n, count(*) AS expected_pairs,"
                 f" avg(gap_s) AS itl_mean, stddev_pop(gap_s) AS itl_std, max(gap_s) AS itl_max{tok_cols}"
                 f" FROM {table}")
    try:
        con.execute(f"CREATE TEMP TABLE {table} AS {fast}", [run_id, *params, *([run_id] * parts)])
        row = _fetch_dict(con, stats_sql, [])
        path = "adjacent rows"
        if int(row["itl_n"] or 0) != int(row["expected_pairs"] or 0):
            sure = sel_cte + f"""
            , l AS (
                SELECT list(c.t_s ORDER BY c.seq) AS ts, list(GREATEST(COALESCE(c.tokens, 1), 1) ORDER BY c.seq) AS tk
                FROM chunks c SEMI JOIN sel ON c.request_id = sel.request_id
                WHERE c.run_id = ?
                GROUP BY c.request_id HAVING count(*) > 1
            )
            SELECT unnest(list_transform(range(2, len(ts) + 1), lambda i: ts[i] - ts[i - 1])) AS gap_s{k_sure}
            FROM l"""
            con.execute(f"DROP TABLE {table}")
            con.execute(f"CREATE TEMP TABLE {table} AS {sure}", [run_id, *params, run_id])
            row = _fetch_dict(con, stats_sql, [])
            path = "sorted per request"
        n = int(row["itl_n"] or 0)
        row["itl_q"] = _gap_quantiles(con, table, "gap_s", "1") if n else None
        if multi and n:
            tn = int(row["tok_n"])
            mean = row["itl_mean"] * n / tn
            var = con.execute(f"SELECT sum(k * (gap_s / k - ?) * (gap_s / k - ?)) FROM {table} WHERE gap_s IS NOT NULL",
                              [mean, mean]).fetchone()[0] / tn
            row.update({
                "itl_token_n": tn, "itl_token_mean": mean, "itl_token_std": math.sqrt(max(var, 0.0)),
                "itl_token_max": row["tok_max"],
                "itl_token_q": _gap_quantiles(con, table, "gap_s / k", "k"),
            })
        else:
            for key in ("n", "mean", "std", "max", "q"):
                row[f"itl_token_{key}"] = row[f"itl_{key}"] if n else None
            row["itl_token_n"] = n
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    row["gap_path"] = path
    return row


def peak_concurrency(con: duckdb.DuckDBPyConnection, run_id: str, sel: Selection, *, ok_only: bool = True) -> int:
    """Exact peak of simultaneous requests: a sweep line over sends (+1) and ends (−1).

    Intervals are half-open, so at equal times ends come first (vLLM's
    ``max_concurrent_requests``: successful requests, end = send + E2EL). With
    ``ok_only=False`` every measured request counts until its ``end_s`` (what the
    client really held open).
    """
    cond, params = sel.sql()
    okc = " AND r.ok" if ok_only else ""
    end = "COALESCE(r.last_token_s, r.end_s)" if ok_only else "COALESCE(r.end_s, r.last_token_s)"
    sql = f"""
    WITH rq AS (
        SELECT r.sent_s AS s, {end} AS e FROM request_metrics r
        WHERE r.run_id = ? AND r.phase = 'measure'{okc}{cond} AND r.sent_s IS NOT NULL
    ), ev AS (
        SELECT s AS t, 1 AS d FROM rq UNION ALL SELECT e AS t, -1 AS d FROM rq WHERE e IS NOT NULL
    )
    SELECT COALESCE(max(c), 0) FROM (
        SELECT sum(d) OVER (ORDER BY t, d ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS c FROM ev
    )
    """
    return int(con.execute(sql, [run_id, *params]).fetchone()[0])


def _as_con(store: str | Path | duckdb.DuckDBPyConnection) -> tuple[duckdb.DuckDBPyConnection, bool]:
    if isinstance(store, duckdb.DuckDBPyConnection):
        install_views(store)
        return store, False
    return open_store(store), True


def summarize(
    store: str | Path | duckdb.DuckDBPyConnection,
    run_id: str | None = None,
    *,
    slo: Mapping[str, float] | str | None = None,
    where: Selection | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every metric of one run (or a selection of it) in the ``analyze --json`` shape.

    ``slo`` is a ``parse_slo`` result (metric -> seconds) or the ``--slo`` string.
    Latency objects are in milliseconds; counts cover the measured phase only.
    """
    from burstbench.analysis import slo as slo_mod

    con, owned = _as_con(store)
    try:
        rid = resolve_run(con, run_id)
        sel = Selection.of(where)
        slo_s = slo_mod.parse_slo(slo) if isinstance(slo, str) else (dict(slo) if slo else None)
        info = run_info(con, rid)
        t0, t1 = measured_window(con, rid, sel)
        dur = t1 - t0
        rs = request_stats(con, rid, sel)
        cs = chunk_stats(con, rid, sel)
        cond, cparams = sel.sql()
        counts = request_counts(con, rid, table="request_metrics", cond=cond, params=cparams)
        per_s = (lambda x: x / dur) if dur > 0 else (lambda x: None)
        completed = counts.ok
        out: dict[str, Any] = {
            "run_id": rid,
            "label": info["label"],
            "backend": info["backend"],
            "model": info["model"],
            "clock": info["clock"],
            "status": info["status"],
            "selection": sel.as_dict(),
            "requests": counts.measured,
            "completed": completed,
            "failed": counts.failed,
            "failed_by_status": {"error": counts.error, "timeout": counts.timeout, "cancelled": counts.cancelled},
            "requests_unmeasured": counts.unmeasured,
            "duration_s": dur,
            "total_input_tokens": int(rs["total_input"]),
            "total_output_tokens": int(rs["total_output"]),
            "request_throughput": per_s(completed),
            "output_throughput": per_s(int(rs["total_output"])),
            "total_token_throughput": per_s(int(rs["total_input"]) + int(rs["total_output"])),
            "target_rate": info["target_rate"],
            "achieved_rate": per_s(counts.measured),
            # without real send times every request overlaps every other: no peak to report
            "peak_concurrency": peak_concurrency(con, rid, sel, ok_only=True) if info["timeline"] else None,
            "peak_in_flight": peak_concurrency(con, rid, sel, ok_only=False) if info["timeline"] else None,
            "timeline": info["timeline"],
            "notes": info["notes"],
        }
        for m in ("ttft", "tpot"):
            out[f"{m}_ms"] = _stats_obj(rs, m)
        out["itl_ms"] = _stats_obj(cs, "itl")
        for m in ("e2el", "ttfvt", "schedule_lag", "e2el_from_schedule"):
            out[f"{m}_ms"] = _stats_obj(rs, m)
        out["itl_token_ms"] = _stats_obj(cs, "itl_token")
        out["itl_request_mean_ms"] = _stats_obj(rs, "itl_request_mean")
        out["error_adjusted_ms"] = {
            m: (
                dict(zip(("p50", "p90", "p95", "p99"), (_finite_ms(v) for v in rs[f"{m}_ea"]), strict=True))
                if rs[f"{m}_ea"] is not None
                else None
            )
            for m in ("ttft", "tpot", "e2el", "ttfvt")
        }
        out["goodput"] = slo_mod.goodput(con, rid, slo_s, sel=sel, duration_s=dur) if slo_s else None
        return out
    finally:
        if owned:
            con.close()
