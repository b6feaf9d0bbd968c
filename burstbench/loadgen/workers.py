"""Where worker loops run: worker processes (the default, one or ``--workers N``), or
one thread in this process (for in-process backends that cannot be pickled).

Both transports run the same ``worker_main``: build the backend, report ready,
wait for the shared start instant (a wall-clock time the supervisor picks after
every worker is ready, converted by each worker to its own monotonic clock),
dispatch, and send batches back through a queue. Only the supervisor writes the
results file, so N processes never contend for DuckDB's single writer.

Commands go the other way on a per-worker control queue: ``("start", wall)``,
``("stop", reason)`` (stop sending, finish in-flight within the grace period),
``("now", reason)`` (cancel in-flight). Worker processes ignore SIGINT (the
supervisor owns Ctrl-C) and exit on their own once the supervisor is gone
(``_exit_when_orphaned``): whatever they would measure next has no writer, and a worker
blocked on its control queue would otherwise live forever, with multiprocessing's
resource tracker beside it.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from burstbench.loadgen.dispatch import WorkerCore
from burstbench.loadgen.schedule import Plan

BackendFactory = Callable[[], Any]


def worker_main(plan: Plan, factory: BackendFactory, out_q: Any, ctl_q: Any, opts: dict[str, Any]) -> None:
    """Body of a worker thread or process."""
    if opts.get("process"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_when_orphaned(opts["parent_pid"])
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_worker_async(plan, factory, out_q, ctl_q, opts))
    except BaseException as exc:  # report, never die silently
        out_q.put({"kind": "error", "worker": plan.worker_id,
                   "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        out_q.put({"kind": "done", "worker": plan.worker_id, "stopped": True,
                   "stop_reason": f"worker {plan.worker_id} failed", "end_t": None})


MAX_WARM_CONNECTIONS = 256


def connections_needed(plan: Plan) -> int:
    """How many connections to open before the start (``Backend.warm``), at most 256.

    Closed loop: one per user. Open loop: the most sends due within any one second
    (answer lengths are unknown here, so this covers the first second's sends at least),
    or the concurrency cap when that is lower."""
    if plan.mode == "closed":
        n = plan.users
    else:
        t = np.sort(plan.df["scheduled_s"].to_numpy())
        n = int((np.searchsorted(t, t + 1.0) - np.arange(t.size)).max()) if t.size else 0
    if plan.max_concurrency:
        n = min(n, plan.max_concurrency)
    return min(n, MAX_WARM_CONNECTIONS)


LOOP_ENV = "BURSTBENCH_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (``$BURSTBENCH_LOOP=asyncio``: the stdlib one).

    Why: with ~200 open streams a worker's time went a fifth each to asyncio's own loop
    and task machinery, the transports' read callbacks and the send path (profiled with
    py-spy under ``benchmarks/bench_loadgen.py accuracy``); uvloop runs the first two in C,
    which is what bounds how long a due send waits behind chunk reads. Its clock ticks in
    whole milliseconds, so a timer may fire up to a millisecond early:
    ``WorkerCore.sleep_until`` waits out the rest."""
    if os.environ.get(LOOP_ENV, "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _worker_async(plan: Plan, factory: BackendFactory, out_q: Any, ctl_q: Any, opts: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    backend = factory()
    await backend.start()
    try:
        warm = getattr(backend, "warm", None)
        if warm is not None:
            await warm(connections_needed(plan))
        out_q.put({"kind": "ready", "worker": plan.worker_id, "pid": os.getpid()})
        cmd = await loop.run_in_executor(None, ctl_q.get)
        if cmd[0] != "start":
            out_q.put({"kind": "done", "worker": plan.worker_id, "stopped": True,
                       "stop_reason": cmd[1] if len(cmd) > 1 else "stopped", "end_t": 0.0})
            return
        t0 = time.monotonic() + (cmd[1] - time.time())
        core = WorkerCore(plan, backend, out_q.put, t0=t0, flush_interval_s=opts.get("flush_interval_s", 0.25),
                          drain_timeout_s=opts.get("grace_s", 10.0), ignore_eos=opts.get("ignore_eos", True),
                          trace_run_id=opts.get("trace_run_id"))
        finished = threading.Event()

        def watch() -> None:
            while not finished.is_set():
                try:
                    cmd = ctl_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if cmd[0] in ("stop", "now"):
                    loop.call_soon_threadsafe(lambda c=cmd: core.request_stop(c[1], now=c[0] == "now"))

        watcher = threading.Thread(target=watch, name=f"burstbench-ctl-{plan.worker_id}", daemon=True)
        watcher.start()
        info = await core.run()
        finished.set()
    finally:
        await backend.close()
    if opts.get("process"):  # the worker's own totals: a short run may end before any sample
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        info["cpu_s"] = ru.ru_utime + ru.ru_stime
        info["maxrss_bytes"] = ru.ru_maxrss * 1024  # Linux reports KiB
        info["pid"] = os.getpid()
    out_q.put(info)


ORPHAN_POLL_S = 0.2


def _exit_when_orphaned(parent_pid: int) -> None:
    """Exit this worker process (status 70) within ``ORPHAN_POLL_S`` of its supervisor's death.

    A daemon thread, so it acts wherever the worker is: starting its backend, blocked
    on the control queue before the start instant, sending, or flushing its queue at
    exit. The supervisor's pid is passed in rather than read here, so a supervisor that
    died before this process started is noticed too (``getppid`` is then already init's).
    ``os._exit``: the only writer of the results is gone, nothing is left to flush."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(ORPHAN_POLL_S)
        os._exit(70)

    threading.Thread(target=watch, name="burstbench-orphan-watch", daemon=True).start()


class ThreadWorkers:
    """One worker loop in a thread of this process (custom, unpicklable backend factories)."""

    process = False

    def __init__(self, parts: list[Plan], factory: BackendFactory, opts: dict[str, Any]) -> None:
        assert len(parts) == 1
        self.out: queue.Queue = queue.Queue()
        self.ctl: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=worker_main, args=(parts[0], factory, self.out, self.ctl, opts),
                                       name="burstbench-worker-0", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def send(self, cmd: tuple) -> None:
        self.ctl.put(cmd)

    def alive(self) -> list[bool]:
        return [self.thread.is_alive()]

    def describe_exit(self, worker: int) -> str:
        return "its thread ended without reporting" if not self.thread.is_alive() else "running"

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


class ProcessWorkers:
    """N worker processes (spawned: no inherited DuckDB handles or threads)."""

    process = True

    def __init__(self, parts: list[Plan], factory: BackendFactory, opts: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.ctls = [ctx.Queue() for _ in parts]
        popts = dict(opts, process=True, parent_pid=os.getpid())
        self.procs = [ctx.Process(target=worker_main, args=(part, factory, self.out, ctl, popts),
                                  name=f"burstbench-worker-{part.worker_id}", daemon=True)
                      for part, ctl in zip(parts, self.ctls, strict=True)]

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def send(self, cmd: tuple) -> None:
        for c in self.ctls:
            c.put(cmd)

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self.procs]

    def describe_exit(self, worker: int) -> str:
        """Why worker process ``worker`` ended, for the run's notes: its pid and exit code or signal."""
        p = self.procs[worker]
        code = p.exitcode
        if code is None:
            return f"pid {p.pid}, still running"
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
            if -code == signal.SIGKILL:
                how += " (out of memory, or killed from outside)"
            return f"pid {p.pid}, {how}"
        return f"pid {p.pid}, exit code {code}"

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(1.0)
