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

import contextlib
import datetime as dt
import json
import os
import platform
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb

from burstbench import __version__
from burstbench.errors import StoreError

SCHEMA_VERSION = 2
# 2: server_spans (per-request server phases from OpenTelemetry spans, joined by trace id)

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

SERVER_SPAN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "request_id",        # BIGINT, the request the span's trace id names
    "trace_id",          # VARCHAR, 32 hex digits
    "span_id",           # VARCHAR, 16 hex digits
    "name",              # VARCHAR, span name ('llm_request' in vLLM)
    "service",           # VARCHAR?, resource service.name
    "arrival_s",         # DOUBLE?, span start (server arrival) in seconds from run start
    "received_s",        # DOUBLE?, when the span reached the receiver (run clock; NULL if simulated)
    "queue_s",           # DOUBLE?, gen_ai.latency.time_in_queue
    "prefill_s",         # DOUBLE?, gen_ai.latency.time_in_model_prefill
    "decode_s",          # DOUBLE?, gen_ai.latency.time_in_model_decode
    "inference_s",       # DOUBLE?, gen_ai.latency.time_in_model_inference
    "ttft_s",            # DOUBLE?, gen_ai.latency.time_to_first_token (server side)
    "e2e_s",             # DOUBLE?, gen_ai.latency.e2e (server side)
    "prompt_tokens",     # BIGINT?, gen_ai.usage.prompt_tokens
    "completion_tokens", # BIGINT?, gen_ai.usage.completion_tokens
    "attributes",        # JSON, every attribute as received
)

META_COLUMNS: tuple[str, ...] = ("key", "value")

# Every table of a results store and its columns (what ``ResultsStore`` accepts to write to).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": META_COLUMNS, "runs": RUN_COLUMNS, "requests": REQUEST_COLUMNS,
    "chunks": CHUNK_COLUMNS, "telemetry": TELEMETRY_COLUMNS, "server_spans": SERVER_SPAN_COLUMNS,
}

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
CREATE TABLE IF NOT EXISTS server_spans (
    run_id VARCHAR NOT NULL, request_id BIGINT NOT NULL, trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL, name VARCHAR, service VARCHAR, arrival_s DOUBLE, received_s DOUBLE,
    queue_s DOUBLE, prefill_s DOUBLE, decode_s DOUBLE, inference_s DOUBLE, ttft_s DOUBLE,
    e2e_s DOUBLE, prompt_tokens BIGINT, completion_tokens BIGINT, attributes JSON
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


def _run_name(run_id: str, label: str | None) -> str:
    return f"{run_id} ({label})" if label else run_id


def resolve_run(con: duckdb.DuckDBPyConnection, ref: str | None, *, where: str | None = None) -> str:
    """The run ``ref`` names: a run id, a unique prefix of one, or a label; None is the latest run.

    The one place every command (analyze, report, calibrate, compare, ...) turns what a
    user typed after ``--run`` into a run id, so a label works wherever an id does. An
    exact id wins; otherwise every run whose id starts with ``ref`` or whose label is
    ``ref`` is a candidate, and more than one is an error that names them all (a label
    reused by two runs must be told apart by id, not silently resolved to one of them).
    """
    rows = con.execute("SELECT run_id, label FROM runs ORDER BY started_at, run_id").fetchall()
    at = f"{where}: " if where else ""
    if not rows:
        raise StoreError(f"{at}the results store holds no runs; record one with 'burstbench run' or 'burstbench simulate'")
    if ref is None:
        return rows[-1][0]
    if any(rid == ref for rid, _ in rows):
        return ref
    matches = [(rid, label) for rid, label in rows if rid.startswith(ref) or label == ref]
    if len(matches) == 1:
        return matches[0][0]
    if matches:
        names = ", ".join(_run_name(*m) for m in matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise StoreError(f"{at}run '{ref}' is ambiguous: it names {names}; give a longer id")
    latest = ", ".join(_run_name(*r) for r in rows[-5:])
    raise StoreError(f"{at}run '{ref}' not found (neither a run id nor a label); latest runs: {latest}")


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


def check_schema_version(con: duckdb.DuckDBPyConnection, path: str | Path, *, write: bool = False) -> None:
    """Refuse a store whose ``meta.schema_version`` is newer than this code's, or not one of ours.

    Every open of a store goes through here (``ResultsStore`` and the analysis reader):
    reading a newer layout with this code's SQL could give wrong numbers silently, and
    writing to it used to re-stamp it as ours. A store without the stamp is older than
    the stamp and is ours."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.Error:  # no meta table (or not ours): other checks judge the tables
        return
    version = str(row[0]) if row and row[0] is not None else None
    if version is None or (version.isdigit() and 1 <= int(version) <= SCHEMA_VERSION):
        return  # older layouts only lack tables that a writer adds (2: server_spans)
    newer = version.isdigit() and int(version) > SCHEMA_VERSION
    raise StoreError(
        f"{path}: results schema {version!r} is {'newer than' if newer else 'not'} the one this "
        f"burstbench {__version__} knows ({SCHEMA_VERSION}); "
        + ("upgrade burstbench to use it" if newer else "it was not written by burstbench")
        + (", or write to a new file" if write else "")
    )


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
        if not read_only:
            # before DuckDB opens it: a FIFO would hang the open, a device would be written,
            # and DuckDB opens a Parquet or CSV file as an empty in-memory database
            from burstbench.outfile import check_output

            check_output(self.path, kind="duckdb")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open as a results store ({exc})") from exc
        try:
            tables = self._check_schema(write=not read_only)
        except BaseException:
            self.con.close()
            raise
        if not read_only:
            self.con.execute(DDL)
            # the file now has every table of this layout; the check above refused newer ones
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif "requests" not in tables or "runs" not in tables:
            self.con.close()
            raise StoreError(f"{self.path}: not a burstbench results store (no runs/requests tables)")

    def _check_schema(self, *, write: bool) -> set[str]:
        """The file's table names, once it is known to be a store this code can use.

        Runs before anything is written, so a refused file is left exactly as it was (a
        foreign ``requests`` table once got our other tables and a ``running`` row before
        the first insert failed, and a newer store was re-stamped as schema 1). Reading
        refuses only a newer or unknown schema; writing also refuses tables that are not
        ours or that have other columns than ours."""
        columns: dict[str, set[str]] = {}
        for table, column in self.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
        ).fetchall():
            columns.setdefault(table, set()).add(column)
        check_schema_version(self.con, self.path, write=write)
        if write:
            foreign = sorted(t for t, cols in columns.items()
                             if t not in TABLE_COLUMNS or cols != set(TABLE_COLUMNS[t]))
            if foreign:
                raise StoreError(
                    f"{self.path}: holds tables that are not a burstbench results store's "
                    f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); write results to a new file"
                )
        return set(columns)

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of disk in a hidden file beside the store while a run writes.

        When the disk fills, ``release_reserve`` frees it so the run row can still be
        closed ('aborted', with the reason): on a full disk even that one-row UPDATE
        cannot be committed. The bytes are written, not allocated sparsely, so the
        blocks are really held. No room for the reserve at all is not an error."""
        path = self.path.with_name(f".{self.path.name}.reserve")
        try:
            with open(path, "wb") as f:
                f.write(bytes(nbytes))
                f.flush()
                os.fsync(f.fileno())
            self._reserve: Path | None = path
        except OSError:
            path.unlink(missing_ok=True)
            self._reserve = None
        try:
            yield
        finally:
            self.release_reserve()

    def release_reserve(self) -> None:
        """Free the space ``reserve`` holds (a no-op without one)."""
        path = getattr(self, "_reserve", None)
        if path is not None:
            path.unlink(missing_ok=True)
            self._reserve = None

    def reopen(self) -> None:
        """A fresh connection to the same file (after a fatal DuckDB error invalidated this one)."""
        with contextlib.suppress(duckdb.Error):
            self.con.close()
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot reopen the results store ({exc})") from exc

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

    def resolve_run(self, ref: str | None) -> str:
        """The asked run (id, unique id prefix or label), or the latest one."""
        return resolve_run(self.con, ref, where=str(self.path))

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

    def append_server_spans(self, rows: Iterable[Sequence[Any]] | Any) -> None:
        self._append("server_spans", SERVER_SPAN_COLUMNS, rows)

    def checkpoint(self) -> None:
        """Flush the WAL so a killed process loses nothing already appended."""
        self.con.execute("CHECKPOINT")
