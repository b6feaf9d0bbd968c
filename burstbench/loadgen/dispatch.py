"""One worker's event loop: send a Plan's requests at their deadlines and batch the rows.

Every wait is for an absolute deadline on the run clock (``loop.call_at`` on
``t0 + scheduled_s``), never a relative sleep after the previous send, so lateness
does not accumulate. The stdlib loop rounds its epoll timeout up to whole
milliseconds, so a wake-up is 0-1 ms late; uvloop's millisecond clock may instead
fire up to a millisecond early, and only that remainder is busy-waited (a busy-wait
for lateness, measured on a shared 2-core host, made p99 lag worse: it spends the
CPU share the sends need). Rows leave as picklable batches (request tuples plus chunk
columns in ``array`` buffers) through a sink callable: the same code serves an
in-process worker thread and a worker process, and only the supervisor writes DuckDB.

Stopping: ``request_stop(now=False)`` stops new sends, lets in-flight requests
finish (the supervisor bounds this by the grace period) and wakes every sleeper;
``request_stop(now=True)`` cancels in-flight requests, which become rows with
status ``cancelled``. Requests never sent are not rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Callable
from typing import Any

from burstbench.backends.base import Backend, Outcome, Request
from burstbench.loadgen.schedule import Plan
from burstbench.otlp import traceparent

Sink = Callable[[dict[str, Any]], None]

_SEQ = array("i", range(4096))

# An open-loop request's task starts this long before its deadline and builds the
# request (and, with a backend's ``prepare``, its encoded body) then, so at the
# deadline only the write is left: each step after it waits a loop turn behind the
# chunk reads of every open stream.
SEND_LEAD_S = 0.02


def _seq(n: int) -> array:
    global _SEQ
    if n > len(_SEQ):
        _SEQ = array("i", range(max(n, 2 * len(_SEQ))))
    return _SEQ[:n]


class WorkerCore:
    """Dispatches one worker's share of a plan on the running loop."""

    def __init__(self, plan: Plan, backend: Backend, sink: Sink, *, t0: float,
                 flush_interval_s: float = 0.25, drain_timeout_s: float = 600.0,
                 ignore_eos: bool = True, trace_run_id: str | None = None) -> None:
        self.plan = plan
        self.trace_run_id = trace_run_id  # set: every request carries a traceparent derived from it
        self.backend = backend
        self.sink = sink
        self.t0 = t0  # time.monotonic() value of run time 0
        self.flush_interval_s = flush_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.ignore_eos = ignore_eos
        self.worker_id = plan.worker_id
        self.stopping = False
        self.stop_reason: str | None = None
        self._stop_now = False
        self._sleepers: set[asyncio.Future] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()  # set when the task set empties or a stop arrives
        self._sem = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
        self._prepare: Callable[[Request], None] | None = getattr(backend, "prepare", None)
        self._top_up: Callable[[], None] | None = getattr(backend, "top_up", None)
        self._reset_buffers()
        self.sent = self.completed = self.failed = self.cancelled = self.in_flight = 0
        self.last_scheduled_s = 0.0
        self._next_closed = 0

    # -- clock ------------------------------------------------------------------------
    def clock(self) -> float:
        return time.monotonic() - self.t0

    async def sleep_until(self, t: float) -> bool:
        """Wait for run time ``t``; False when the run was stopped meanwhile."""
        if self.stopping:
            return False
        loop = asyncio.get_running_loop()
        when = self.t0 + t
        if when <= loop.time():
            return True
        fut = loop.create_future()
        handle = loop.call_at(when, _resolve, fut, True)
        self._sleepers.add(fut)
        try:
            woke = await fut
        finally:
            handle.cancel()
            self._sleepers.discard(fut)
        # a loop whose clock ticks in milliseconds (uvloop) may fire up to 1 ms early
        while woke and time.monotonic() < when:
            pass
        return woke

    # -- buffers ----------------------------------------------------------------------
    def _reset_buffers(self) -> None:
        self._rows: list[tuple] = []
        self._c_rid = array("q")
        self._c_seq = array("i")
        self._c_t = array("d")
        self._c_tok = array("i")
        self._c_rs = array("b")
        self._lags = array("d")  # sent - scheduled (what the progress view shows)
        self._client_lags = array("d")  # the part a concurrency cap does not explain

    def take_batch(self) -> dict[str, Any]:
        batch = {
            "kind": "batch", "worker": self.worker_id, "requests": self._rows,
            "chunk_rid": self._c_rid, "chunk_seq": self._c_seq, "chunk_t": self._c_t,
            "chunk_tokens": self._c_tok, "chunk_reasoning": self._c_rs, "lags": self._lags,
            "client_lags": self._client_lags,
            "stats": {"sent": self.sent, "completed": self.completed, "failed": self.failed,
                      "cancelled": self.cancelled, "in_flight": self.in_flight,
                      "t": self.clock(), "last_scheduled_s": self.last_scheduled_s},
        }
        self._reset_buffers()
        return batch

    def record(self, req: Request, phase: str, out: Outcome, ready_s: float | None = None) -> None:
        """Append one request's row and its chunks to the current batch.

        ``ready_s``: when a concurrency slot became free (None without a cap); lateness
        after that is the client's own, which is what the bottleneck watch needs.
        """
        n = len(out.chunk_t)
        self._rows.append((
            req.request_id, req.session_id, req.turn, req.tenant, req.model, phase,
            req.scheduled_s, out.sent_s, out.first_token_s, out.first_visible_s, out.last_token_s,
            out.end_s, req.input_tokens, out.input_tokens_server, req.output_tokens,
            out.output_tokens_server, out.output_tokens_counted, out.reasoning_tokens,
            out.cached_tokens, n, out.status, out.http_status, out.error_class, out.error_message,
            self.worker_id,
        ))
        if out.sent_s is not None:
            self._lags.append(out.sent_s - req.scheduled_s)
            start = req.scheduled_s if ready_s is None else max(req.scheduled_s, ready_s)
            self._client_lags.append(out.sent_s - start)
        if n:
            self._c_rid.extend(array("q", (req.request_id,)) * n)
            self._c_seq.extend(_seq(n))
            self._c_t.extend(out.chunk_t)
            tok, rs = out.chunk_tokens, out.chunk_reasoning
            self._c_tok.extend(tok if len(tok) == n else array("i", (-1,)) * n)
            self._c_rs.extend(rs if len(rs) == n else array("b", (0,)) * n)
        if out.status == "ok":
            self.completed += 1
        elif out.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    # -- one request ------------------------------------------------------------------
    async def send_one(self, req: Request) -> Outcome | None:
        """Send (after a concurrency slot frees up), record and return the outcome.

        None when the run stopped before the request was sent (it is not a row).
        """
        phase = self.plan.phase(req.scheduled_s)
        self.last_scheduled_s = req.scheduled_s
        sem = self._sem
        ready: float | None = None
        if sem is not None:
            await sem.acquire()
            if self.stopping:
                sem.release()
                return None
            ready = self.clock()
        self.sent += 1
        self.in_flight += 1
        if self.trace_run_id is not None:
            req.traceparent = traceparent(self.trace_run_id, req.request_id)
        dispatched = self.clock()
        try:
            out = await self.backend.send(req, self.clock)
        except asyncio.CancelledError:
            out = Outcome(request_id=req.request_id, sent_s=dispatched, status="cancelled",
                          end_s=self.clock(), error_class="cancelled",
                          error_message=f"stopped before the answer completed ({self.stop_reason or 'cancelled'})")
            self.record(req, phase, out, ready)
            raise
        except Exception as exc:  # a backend bug must not lose the request
            out = Outcome(request_id=req.request_id, sent_s=dispatched, status="error",
                          end_s=self.clock(), error_class="client",
                          error_message=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.in_flight -= 1
            if sem is not None:
                sem.release()
        self.record(req, phase, out, ready)
        return out

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._wake.set()

    # -- drivers ----------------------------------------------------------------------
    async def _open_loop(self, cols: dict[str, list]) -> None:
        df = self.plan.df
        sessions: dict[str, list[int]] = {}
        sess_col = df["session_id"].to_list() if self.plan.sessions else [None] * df.height
        starts: list[int] = []
        for i, s in enumerate(sess_col):
            if s is None:
                starts.append(i)
            elif s in sessions:
                sessions[s].append(i)
            else:
                sessions[s] = [i]
                starts.append(i)
        sched = cols["scheduled_s"]
        if sessions:
            for idx in sessions.values():
                turns = cols["turn"]
                idx.sort(key=lambda i: (turns[i] if turns[i] is not None else 0, sched[i]))
        starts.sort(key=lambda i: sched[i])
        for i in starts:
            t = sched[i]
            if not await self.sleep_until(t - SEND_LEAD_S):
                return
            s = sess_col[i]
            if s is None:
                self._spawn(self._send_at(self._request(cols, i, t)))
            else:
                self._spawn(self._session(cols, sessions[s]))

    async def _send_at(self, req: Request) -> Outcome | None:
        """Prepare ``req`` now, send it at its ``scheduled_s`` (None: stopped before that)."""
        if self._prepare is not None:
            self._prepare(req)
        if self._top_up is not None:  # replace the pooled connection this send will take
            self._top_up()
        if not await self.sleep_until(req.scheduled_s):
            return None
        return await self.send_one(req)

    async def _session(self, cols: dict[str, list], idx: list[int]) -> None:
        """Turns of one conversation: each waits for the previous answer plus think time.

        Only the timing depends on the previous turn; the prompt of each turn is the
        trace's (its ``input_tokens`` already count the conversation so far).
        """
        ready = 0.0
        end = self.plan.end_s
        for k, i in enumerate(idx):
            t = max(cols["scheduled_s"][i], ready) if k else cols["scheduled_s"][i]
            if k and end is not None and t >= end:
                return
            out = await self._send_at(self._request(cols, i, t))
            if out is None or self.stopping:
                return
            ready = (out.end_s if out.end_s is not None else self.clock()) + self.plan.think_time_s

    async def _user(self, cols: dict[str, list]) -> None:
        """One closed-loop user: send, wait for the answer, think, repeat."""
        plan = self.plan
        n = plan.df.height
        t = 0.0  # every user's first request is due at the run's start
        while not self.stopping:
            rid = plan.worker_id + plan.workers * self._next_closed
            if plan.max_requests is not None and rid >= plan.max_requests:
                return
            if plan.end_s is not None and t >= plan.end_s:
                return
            self._next_closed += 1
            req = self._request(cols, rid % n, t)
            req.request_id = rid
            out = await self.send_one(req)
            if out is None:
                return
            t = (out.end_s if out.end_s is not None else self.clock()) + plan.think_time_s
            if plan.end_s is not None and t >= plan.end_s:
                return
            if not await self.sleep_until(t):
                return

    def _request(self, cols: dict[str, list], i: int, t: float) -> Request:
        hashes = cols["prefix_hashes"][i]
        return Request(
            request_id=cols["request_id"][i], input_tokens=cols["input_tokens"][i],
            output_tokens=cols["output_tokens"][i], scheduled_s=t, prompt=cols["prompt"][i],
            prefix_hashes=tuple(hashes) if hashes is not None else None, model=cols["model"][i],
            session_id=cols["session_id"][i], turn=cols["turn"][i], tenant=cols["tenant"][i],
            ignore_eos=self.ignore_eos,
        )

    # -- the run ----------------------------------------------------------------------
    def request_stop(self, reason: str, *, now: bool = False) -> None:
        """Stop sending (and, with ``now``, cancel what is in flight). Loop thread only."""
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
        self._wake.set()
        for fut in list(self._sleepers):
            _resolve(fut, False)
        if now and not self._stop_now:
            self._stop_now = True
            for task in list(self._tasks):
                task.cancel()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.sink(self.take_batch())

    async def run(self) -> dict[str, Any]:
        """Send everything (or until stopped); returns how it ended."""
        df = self.plan.df
        cols = {c: df[c].to_list() for c in df.columns}  # once, shared by the closed loop's users
        flusher = asyncio.get_running_loop().create_task(self._flusher())
        try:
            await self.sleep_until(0.0)  # the shared start instant
            if self.plan.mode == "closed":
                for _ in range(self.plan.users):
                    self._spawn(self._user(cols))
            else:
                self._spawn(self._open_loop(cols))
            deadline: float | None = None
            while self._tasks:
                self._wake.clear()
                if self.stopping and deadline is None:
                    deadline = time.monotonic() + self.drain_timeout_s
                if self._stop_now or (deadline is not None and time.monotonic() >= deadline):
                    self.request_stop(self.stop_reason or "grace period over", now=True)
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                    break
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            flusher.cancel()
            self.sink(self.take_batch())
        return {"kind": "done", "worker": self.worker_id, "stopped": self.stopping,
                "stop_reason": self.stop_reason, "end_t": self.clock()}


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
