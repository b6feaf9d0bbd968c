"""The results store: one DuckDB file, many runs (DESIGN section 3, Results).

This module sits at the base of the package because three parts write the same
schema: the load generator (live runs), the reference engine's simulator
(virtual-time runs) and the importers of other tools' results; analysis and
reports read it. Keeping the DDL in one place is what lets ``analyze`` and
``report`` treat a simulated run and a measured run alike.

All times in ``requests`` and ``chunks`` are seconds from the run's start on one
monotonic clock (virtual seconds for simulations, see ``runs.clock``). Rows are
appended in batches and committed as the run goes, so an interrupted run keeps
what it measured. Nothing here ever stores a credential: ``endpoint`` must be
passed through ``redact_url`` first, which ``ResultsStore.create_run`` does.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb

from burstbench import __version__
from burstbench.errors import StoreError

SCHEMA_VERSION = 1

# Column order of each table; writers pass rows (tuples) or frames in this order.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",          # VARCHAR, unique
    "started_at",      # TIMESTAMPTZ, UTC wall clock at t=0 of the run
    "ended_at",        # TIMESTAMPTZ
    "tool_version",    # VARCHAR
    "backend",         # VARCHAR: 'openai', 'simulate', 'import:vllm', ...
    "endpoint",        # VARCHAR, credentials removed
    "model",           # VARCHAR
    "label",           # VARCHAR, a user's name for the run (sweep step, config name)
    "clock",           # VARCHAR: 'wall' or 'virtual'
    "target_rate",     # DOUBLE, requests/s the schedule aimed at (NULL for closed loop)
    "duration_s",      # DOUBLE, wall (or virtual) duration of the run
    "measure_start_s", # DOUBLE, start of the measured window (after warm-up)
    "measure_end_s",   # DOUBLE, end of the measured window (before cool-down)
    "scenario",        # JSON, the full scenario (flags and files), no credentials
    "host",            # JSON, host facts (cpu, memory, python, platform)
    "status",          # VARCHAR: running | done | aborted
    "end_reason",      # VARCHAR: how it ended (completed, duration limit, SIGINT, error ...)
    "notes",           # JSON: warnings raised during the run (client bottleneck, drift ...)
)

REQUEST_COLUMNS: tuple[str, ...] = (
    "run_id",
    "request_id",            # BIGINT, unique within the run
    "session_id",            # VARCHAR?
    "turn",                  # INTEGER?
    "tenant",                # VARCHAR?
    "model",                 # VARCHAR?
    "phase",                 # VARCHAR: warmup | measure | cooldown (only 'measure' counts)
    "scheduled_s",           # DOUBLE, when the schedule said to send
    "sent_s",                # DOUBLE, when the request was written
    "first_token_s",         # DOUBLE?, first chunk carrying choices
    "first_visible_s",       # DOUBLE?, first chunk with visible (non-reasoning) content
    "last_token_s",          # DOUBLE?, last token-carrying chunk
    "end_s",                 # DOUBLE?, response closed / failed
    "input_tokens",          # BIGINT, prompt tokens we aimed for (trace)
    "input_tokens_server",   # BIGINT?, usage.prompt_tokens
    "output_tokens_target",  # BIGINT?, max_tokens asked (trace)
    "output_tokens_server",  # BIGINT?, usage.completion_tokens
    "output_tokens_counted", # BIGINT?, tokens counted client-side from the stream
    "reasoning_tokens",      # BIGINT?, tokens in reasoning deltas (when known)
    "cached_tokens",         # BIGINT?, usage.prompt_tokens_details.cached_tokens
    "chunk_count",           # INTEGER, token-carrying chunks received
    "status",                # VARCHAR: ok | error | timeout | cancelled
    "http_status",           # INTEGER?
    "error_class",           # VARCHAR?, e.g. http_429, connect, reset, stall, sse_error
    "error_message",         # VARCHAR?
    "worker_id",             # INTEGER
)

CHUNK_COLUMNS: tuple[str, ...] = (
    "run_id",
    "request_id",  # BIGINT
    "seq",         # INTEGER, 0-based index among the request's token-carrying chunks
    "t_s",         # DOUBLE, arrival offset from run start
    "tokens",      # INTEGER?, tokens in the chunk when known (usage deltas, or counted)
    "reasoning",   # BOOLEAN, the chunk carried reasoning content only
)

TELEMETRY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "t_s",     # DOUBLE, offset from run start
    "source",  # VARCHAR: client | server | gpu | engine
    "name",    # VARCHAR, metric name (vLLM / AIPerf names where they exist)
    "value",   # DOUBLE
    "labels",  # VARCHAR?, JSON object of labels
    "worker_id",  # INTEGER?
)

DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ,
    tool_version VARCHAR, backend VARCHAR, endpoint VARCHAR, model VARCHAR, label VARCHAR,
    clock VARCHAR, target_rate DOUBLE, duration_s DOUBLE, measure_start_s DOUBLE,
    measure_end_s DOUBLE, scenario JSON, host JSON, status VARCHAR, end_reason VARCHAR,
    notes JSON
);
CREATE TABLE IF NOT EXISTS requests (
    run_id VARCHAR NOT NULL, request_id BIGINT NOT NULL, session_id VARCHAR, turn INTEGER,
    tenant VARCHAR, model VARCHAR, phase VARCHAR, scheduled_s DOUBLE, sent_s DOUBLE,
    first_token_s DOUBLE, first_visible_s DOUBLE, last_token_s DOUBLE, end_s DOUBLE,
    input_tokens BIGINT, input_tokens_server BIGINT, output_tokens_target BIGINT,
    output_tokens_server BIGINT, output_tokens_counted BIGINT, reasoning_tokens BIGINT,
    cached_tokens BIGINT, chunk_count INTEGER, status VARCHAR NOT NULL, http_status INTEGER,
    error_class VARCHAR, error_message VARCHAR, worker_id INTEGER,
    PRIMARY KEY (run_id, request_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    run_id VARCHAR NOT NULL, request_id BIGINT NOT NULL, seq INTEGER NOT NULL,
    t_s DOUBLE NOT NULL, tokens INTEGER, reasoning BOOLEAN
);
CREATE TABLE IF NOT EXISTS telemetry (
    run_id VARCHAR NOT NULL, t_s DOUBLE NOT NULL, source VARCHAR, name VARCHAR NOT NULL,
    value DOUBLE, labels VARCHAR, worker_id INTEGER
);
"""


def redact_url(url: str | None) -> str | None:
    """Drop user:password and any query string (keys travel there) from an endpoint URL."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def host_facts() -> dict[str, Any]:
    """What a reader of the results needs to know about the machine that measured them."""
    import os

    import psutil

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "burstbench": __version__,
    }


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunInfo:
    """What a writer says about a run when it starts it."""

    backend: str
    endpoint: str | None = None
    model: str | None = None
    label: str | None = None
    clock: str = "wall"
    target_rate: float | None = None
    scenario: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RequestCounts:
    """A run's requests counted one way for every view of it (``run``'s summary, ``analyze``,
    the report's card and Runs table), so no two of them disagree about the same run.

    Every row is a request that was sent. ``measured`` are those of the measured phase,
    which latency, throughput and SLO attainment use; the rest were sent during warm-up
    or cool-down. A measured request that did not succeed is ``failed``, whatever the
    reason: an error, a timeout, or cancelled when the run was stopped (an aborted run's
    in-flight requests), as SLO attainment counts it.
    """

    total: int
    measured: int
    ok: int
    error: int
    timeout: int
    cancelled: int

    @property
    def failed(self) -> int:
        return self.error + self.timeout + self.cancelled

    @property
    def unmeasured(self) -> int:
        return self.total - self.measured

    def describe(self) -> str:
        """One line: ``1,075 measured (1,074 ok, 1 failed: 1 cancelled); 91 in warm-up/cool-down``."""
        kinds = [f"{n:,} {k}" for k, n in (("error", self.error), ("timeout", self.timeout),
                                            ("cancelled", self.cancelled)) if n]
        failed = f", {self.failed:,} failed" + (f": {', '.join(kinds)}" if kinds else "") if self.failed else ""
        text = f"{self.measured:,} measured ({self.ok:,} ok{failed})"
        return text + (f"; {self.unmeasured:,} in warm-up/cool-down" if self.unmeasured else "")


def request_counts(con: duckdb.DuckDBPyConnection, run_id: str, *, table: str = "requests",
                   cond: str = "", params: Sequence[Any] = ()) -> RequestCounts:
    """Count ``run_id``'s requests (``table``: ``requests`` or a view of it; ``cond``: extra
    ``AND ...`` on alias ``r`` with bound ``params``, such as an analysis selection)."""
    if table not in ("requests", "request_metrics"):
        raise ValueError(f"request_counts: unknown table {table!r}")
    row = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE phase = 'measure'),"
        " count(*) FILTER (WHERE phase = 'measure' AND status = 'ok'),"
        " count(*) FILTER (WHERE phase = 'measure' AND status NOT IN ('ok', 'timeout', 'cancelled')),"
        " count(*) FILTER (WHERE phase = 'measure' AND status = 'timeout'),"
        " count(*) FILTER (WHERE phase = 'measure' AND status = 'cancelled')"
        f" FROM {table} r WHERE r.run_id = ?{cond}", [run_id, *params]).fetchall()[0]
    return RequestCounts(*(int(v or 0) for v in row))


class ResultsStore:
    """A results file opened for reading and writing.

    Use as a context manager. ``append_*`` take sequences of tuples in the column
    order above (fast path: executemany) or any Arrow/Polars frame with those
    columns (bulk path, for simulations and importers).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such results file; create it with 'burstbench run' or 'burstbench simulate'")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open as a results store ({exc})") from exc
        if not read_only:
            self.con.execute(DDL)
            self.con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        else:
            tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "requests" not in tables or "runs" not in tables:
                raise StoreError(f"{self.path}: not a burstbench results store (no runs/requests tables)")

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    # -- runs -------------------------------------------------------------------------
    def create_run(self, info: RunInfo, *, run_id: str | None = None) -> str:
        run_id = run_id or new_run_id()
        self.con.execute(
            "INSERT INTO runs (run_id, started_at, tool_version, backend, endpoint, model, label,"
            " clock, target_rate, scenario, host, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
            [
                run_id,
                dt.datetime.now(dt.UTC),
                __version__,
                info.backend,
                redact_url(info.endpoint),
                info.model,
                info.label,
                info.clock,
                info.target_rate,
                json.dumps(dict(info.scenario or {}), default=str),
                json.dumps(host_facts()),
            ],
        )
        return run_id

    def mark_started(self, run_id: str, wall_s: float) -> None:
        """Set ``started_at`` to the wall clock of the run's t=0, once workers agree on it.

        ``create_run`` stamps the moment the row was made, which is before workers start
        (up to seconds earlier); ``started_at + t_s`` must be the wall time of an event
        for results to line up with server logs and other clocks."""
        self.con.execute("UPDATE runs SET started_at = ? WHERE run_id = ?",
                         [dt.datetime.fromtimestamp(wall_s, dt.UTC), run_id])

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        end_reason: str,
        duration_s: float,
        measure_start_s: float | None = None,
        measure_end_s: float | None = None,
        notes: Sequence[str] | None = None,
    ) -> None:
        self.con.execute(
            "UPDATE runs SET ended_at = ?, status = ?, end_reason = ?, duration_s = ?,"
            " measure_start_s = ?, measure_end_s = ?, notes = ? WHERE run_id = ?",
            [
                dt.datetime.now(dt.UTC),
                status,
                end_reason,
                duration_s,
                measure_start_s if measure_start_s is not None else 0.0,
                measure_end_s if measure_end_s is not None else duration_s,
                json.dumps(list(notes or [])),
                run_id,
            ],
        )

    def run_ids(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT run_id FROM runs ORDER BY started_at, run_id").fetchall()]

    def resolve_run(self, run_id: str | None) -> str:
        """The asked run, or the latest one; a clear error when there is none."""
        ids = self.run_ids()
        if not ids:
            raise StoreError(f"{self.path}: holds no runs")
        if run_id is None:
            return ids[-1]
        matches = [r for r in ids if r == run_id or r.startswith(run_id)]
        if len(matches) != 1:
            raise StoreError(
                f"{self.path}: run '{run_id}' {'is ambiguous' if matches else 'not found'}; runs: {', '.join(ids[-5:])}"
            )
        return matches[0]

    # -- rows -------------------------------------------------------------------------
    def _append(self, table: str, columns: tuple[str, ...], rows: Iterable[Sequence[Any]] | Any) -> None:
        if hasattr(rows, "to_arrow") or hasattr(rows, "schema"):
            frame = rows.to_arrow() if hasattr(rows, "to_arrow") else rows
            self.con.register("_bb_append", frame)
            try:
                cols = ", ".join(columns)
                self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _bb_append")
            finally:
                self.con.unregister("_bb_append")
            return
        rows = list(rows)
        if not rows:
            return
        # DuckDB's executemany costs milliseconds a row; one columnar insert does not.
        import pyarrow as pa

        frame = pa.table({c: list(col) for c, col in zip(columns, zip(*rows, strict=True), strict=True)})
        self._append(table, columns, frame)

    def append_requests(self, rows: Iterable[Sequence[Any]] | Any) -> None:
        self._append("requests", REQUEST_COLUMNS, rows)

    def append_chunks(self, rows: Iterable[Sequence[Any]] | Any) -> None:
        self._append("chunks", CHUNK_COLUMNS, rows)

    def append_telemetry(self, rows: Iterable[Sequence[Any]] | Any) -> None:
        self._append("telemetry", TELEMETRY_COLUMNS, rows)

    def checkpoint(self) -> None:
        """Flush the WAL so a killed process loses nothing already appended."""
        self.con.execute("CHECKPOINT")
