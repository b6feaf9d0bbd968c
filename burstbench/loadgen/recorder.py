"""Batches worker rows into the results store, committing at least every second.

Workers hand over batches (request tuples and chunk columns in ``array``
buffers); the recorder turns them into Arrow tables in the store's column order
and appends them in one INSERT per table, so per-chunk rows cost a memcpy, not a
Python object each. Each ``flush`` is a committed transaction (DuckDB autocommit,
durable in the WAL), and a CHECKPOINT folds the WAL into the file every two
seconds (readers replay a long WAL on every open), so a killed process loses at
most the rows of the last flush interval.

When the store stops taking rows (a full disk: DuckDB fails the commit, or the
checkpoint, with "No space left on device"), ``flush`` does not raise: it records why
in ``failed`` and from then on counts the rows it drops, so the supervisor can stop
sending and still close the run row with the reason (see ``runner.supervise``).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from burstbench.store import CHUNK_COLUMNS, REQUEST_COLUMNS, TELEMETRY_COLUMNS, ResultsStore

# Arrow types of REQUEST_COLUMNS after run_id, in order.
_REQUEST_TYPES = (
    pa.int64(), pa.string(), pa.int32(), pa.string(), pa.string(), pa.string(),
    pa.float64(), pa.float64(), pa.float64(), pa.float64(), pa.float64(), pa.float64(),
    pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.int64(),
    pa.int32(), pa.string(), pa.int32(), pa.string(), pa.string(), pa.int32(),
)
assert len(_REQUEST_TYPES) == len(REQUEST_COLUMNS) - 1


def _const(value: str, n: int) -> pa.Array:
    """A column repeating ``value``; dictionary-encoded so it costs n int32s."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))


class Recorder:
    """Thread-safe buffer in front of a ResultsStore for one run."""

    def __init__(self, store: ResultsStore, run_id: str, *, checkpoint_every_s: float = 2.0) -> None:
        self.store = store
        self.run_id = run_id
        self.checkpoint_every_s = checkpoint_every_s
        self._lock = threading.Lock()
        self._requests: list[tuple] = []
        self._chunks: list[tuple[array, array, array, array, array]] = []
        self._telemetry: list[tuple] = []
        self._last_checkpoint = time.monotonic()
        self.requests_written = 0
        self.chunks_written = 0
        self.seen_ids: set[tuple[int, int]] | None = None
        self.failed: str | None = None  # why the store stopped taking rows
        self.rows_dropped = 0
        self.start_wall: float | None = None  # unix time of the run's t=0
        self._spans: list[tuple[int, Any, float]] = []
        self.spans_written = 0
        self.completed_ids: set[int] | None = None  # kept only when spans are joined
        self.on_requests: Any = None  # called with each batch's request tuples (client span export)

    def mark_started(self, wall_s: float) -> None:
        """Record the run's t=0 on the wall clock (see ``ResultsStore.mark_started``)."""
        with self._lock:
            self.store.mark_started(self.run_id, wall_s)
            self.start_wall = wall_s

    def add_server_spans(self, items: Sequence[tuple[int, Any, float]]) -> None:
        """Joined server spans: (request id, ``SpanData``, received unix time)."""
        with self._lock:
            self._spans.extend(items)

    def add_batch(self, batch: dict[str, Any]) -> None:
        """Take a worker batch (see ``WorkerCore.take_batch``)."""
        with self._lock:
            if batch["requests"]:
                self._requests.extend(batch["requests"])
                if self.completed_ids is not None:
                    self.completed_ids.update(r[0] for r in batch["requests"] if r[20] == "ok")
            if len(batch["chunk_t"]):
                self._chunks.append((batch["chunk_rid"], batch["chunk_seq"], batch["chunk_t"],
                                     batch["chunk_tokens"], batch["chunk_reasoning"]))

    def add_telemetry(self, rows: Sequence[tuple]) -> None:
        """Rows of (t_s, source, name, value, labels_json, worker_id)."""
        with self._lock:
            self._telemetry.extend(rows)

    def pending(self) -> int:
        with self._lock:
            return len(self._requests) + sum(len(c[2]) for c in self._chunks) + len(self._telemetry) + len(self._spans)

    def _request_table(self, rows: list[tuple]) -> pa.Table:
        n = len(rows)
        columns = list(zip(*rows, strict=True))
        arrays = [_const(self.run_id, n)]
        arrays += [pa.array(col, type=typ) for col, typ in zip(columns, _REQUEST_TYPES, strict=True)]
        return pa.Table.from_arrays(arrays, names=list(REQUEST_COLUMNS))

    def _chunk_table(self, parts: list[tuple[array, array, array, array, array]]) -> pa.Table:
        rid = np.concatenate([np.frombuffer(p[0], dtype=np.int64) for p in parts])
        seq = np.concatenate([np.frombuffer(p[1], dtype=np.int32) for p in parts])
        t = np.concatenate([np.frombuffer(p[2], dtype=np.float64) for p in parts])
        tok = np.concatenate([np.frombuffer(p[3], dtype=np.int32) for p in parts])
        rs = np.concatenate([np.frombuffer(p[4], dtype=np.int8) for p in parts])
        n = t.size
        return pa.Table.from_arrays(
            [_const(self.run_id, n), pa.array(rid), pa.array(seq), pa.array(t),
             pa.array(tok, mask=tok < 0), pa.array(rs != 0)],
            names=list(CHUNK_COLUMNS))

    def _telemetry_table(self, rows: list[tuple]) -> pa.Table:
        cols = list(zip(*rows, strict=True))
        types = (pa.float64(), pa.string(), pa.string(), pa.float64(), pa.string(), pa.int32())
        arrays = [_const(self.run_id, len(rows))] + [pa.array(c, type=t) for c, t in zip(cols, types, strict=True)]
        return pa.Table.from_arrays(arrays, names=list(TELEMETRY_COLUMNS))

    def flush(self, *, checkpoint: bool | None = None) -> None:
        """Write and commit everything buffered; CHECKPOINT when due (or asked)."""
        with self._lock:
            reqs, self._requests = self._requests, []
            chunks, self._chunks = self._chunks, []
            tele, self._telemetry = self._telemetry, []
            spans = self._spans if self.start_wall is not None else []
            if spans:
                self._spans = []
        if reqs and self.on_requests is not None:
            self.on_requests(reqs)
        pending = [len(reqs), sum(len(c[2]) for c in chunks), len(tele), len(spans)]
        if self.failed is not None:
            self.rows_dropped += sum(pending)
            return
        try:
            if spans:
                from burstbench.loadgen.spans import span_row

                assert self.start_wall is not None
                self.store.append_server_spans([span_row(self.run_id, rid, sp, self.start_wall, got)
                                                for rid, sp, got in spans])
                self.spans_written += len(spans)
                pending[3] = 0
            if reqs:
                self.store.append_requests(self._request_table(reqs))
                self.requests_written += len(reqs)
                pending[0] = 0
            if chunks:
                table = self._chunk_table(chunks)
                self.store.append_chunks(table)
                self.chunks_written += table.num_rows
                pending[1] = 0
            if tele:
                self.store.append_telemetry(self._telemetry_table(tele))
                pending[2] = 0
            now = time.monotonic()
            if checkpoint or (checkpoint is None and now - self._last_checkpoint >= self.checkpoint_every_s):
                self.store.checkpoint()
                self._last_checkpoint = now
        except duckdb.Error as exc:  # committed rows stay; what this flush held is lost
            self.failed = " ".join(str(exc).split())
            self.rows_dropped += sum(pending)
