"""Run a scenario: plan, start workers, record every row, end the run row honestly.

``run_scenario`` is the public entry point (the CLI, ``sweep`` and ``demo`` call
it). It is synchronous: the worker loops run in their own thread or processes
and this thread supervises them, so it works from a plain thread with no event
loop. The supervisor is the only writer of the results file: it creates the
``runs`` row (status ``running``) before the first request, commits rows at
least every half second, samples client CPU/RSS and the server's ``/metrics``,
draws progress, watches for a client bottleneck, handles Ctrl-C, and finally
sets ``status`` (``done`` or ``aborted``) and ``end_reason``.

Ctrl-C policy: the first SIGINT stops sending and gives in-flight requests
``grace_s`` to finish; those still running then become rows with status
``cancelled``. A second SIGINT cancels them at once. Requests that were never
sent are not rows. Either way what was measured is committed.
"""

from __future__ import annotations

import inspect
import json
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from burstbench.backends.base import get_backend
from burstbench.errors import BackendError
from burstbench.loadgen.progress import BottleneckWatch, ProgressView, Totals
from burstbench.loadgen.recorder import Recorder
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.schedule import Plan, build_plan, partition
from burstbench.loadgen.telemetry import ClientSampler, MetricsScraper
from burstbench.loadgen.workers import ProcessWorkers, ThreadWorkers
from burstbench.store import ResultsStore, RunInfo, redact_url
from burstbench.traces.schema import Trace

COMMIT_INTERVAL_S = 0.5
READY_TIMEOUT_S = 120.0


@dataclass
class BackendFactory:
    """Builds the scenario's backend inside a worker (picklable for worker processes).

    Only the constructor arguments the backend class accepts are passed, so a
    third-party backend with a smaller signature works too.
    """

    scenario: Scenario

    def __call__(self) -> Any:
        sc = self.scenario
        cls = get_backend(sc.backend)
        wanted: dict[str, Any] = {
            "base_url": sc.url, "url": sc.url, "api": sc.api, "model": sc.model,
            "timeout_s": sc.timeout_s, "stall_timeout_s": sc.stall_timeout_s,
            "ignore_eos": sc.ignore_eos, "prompt_seed": sc.seed, "tokenizer_json": sc.tokenizer,
        }
        if sc.api_key_env:
            wanted["api_key_env"] = sc.api_key_env
        params = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in wanted.items() if k in params}
        return cls(**kwargs)


@dataclass
class RunControl:
    """Stop a run from another thread (what SIGINT does, for callers such as sweep)."""

    stop_reason: str | None = None
    now: bool = False
    _event: threading.Event = field(default_factory=threading.Event)

    def stop(self, reason: str = "stopped by caller", *, now: bool = False) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.now = self.now or now
        self._event.set()


@dataclass
class RunResult:
    """What the supervisor knows when a run ends."""

    run_id: str
    status: str
    end_reason: str
    duration_s: float
    notes: list[str]
    requests_written: int
    chunks_written: int


def _end_reason(sc: Scenario, plan: Plan, trace: Trace) -> str:
    if sc.mode == "closed":
        if sc.duration_s is not None:
            return "duration limit"
        return "request limit"
    if sc.max_requests is not None and plan.df.height >= sc.max_requests:
        return "request limit"
    if sc.duration_s is not None:
        return "duration limit"
    return "schedule completed"


def preflight(url: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, before a run row exists, when nothing listens at ``url``."""
    import socket
    from urllib.parse import urlsplit

    from burstbench.store import redact_url

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendError(f"{redact_url(url)}: cannot connect ({exc.strerror or exc}); "
                           "is the server running and is --url right?") from None


def run_scenario(trace: Trace, scenario: Scenario, out: str | Path, *, label: str | None = None,
                 progress: bool = True, backend_factory: Any = None,
                 control: RunControl | None = None, worker_process: bool | None = None) -> str:
    """Send ``trace`` as ``scenario`` says, record into ``out``; returns the run id.

    Ctrl-C ends the run as described above (rows committed, status 'aborted') and is
    then re-raised as KeyboardInterrupt, so a caller looping over runs (sweep) stops
    too instead of starting the next one.
    """
    res = execute(trace, scenario, out, label=label, progress=progress,
                  backend_factory=backend_factory, control=control, worker_process=worker_process)
    if res.status == "aborted" and "SIGINT" in res.end_reason:
        raise KeyboardInterrupt(f"run {res.run_id} stopped by Ctrl-C (rows kept, status aborted)")
    return res.run_id


def execute(trace: Trace, scenario: Scenario, out: str | Path, *, label: str | None = None,
            progress: bool = True, backend_factory: Any = None,
            control: RunControl | None = None, worker_process: bool | None = None) -> RunResult:
    """``run_scenario`` returning the full RunResult.

    ``worker_process``: run even a single worker loop in its own process (default:
    yes, unless a custom ``backend_factory`` is given, which may not be picklable).
    Measured with 200 streams at 10k chunks/s on a 2-core host, a worker thread that
    shares the GIL and the CPU with the supervisor (Arrow batches, DuckDB inserts,
    progress) had a chunk-gap error p99 of 21-49 ms; the same worker in its own
    process 2.3-2.6 ms (benchmarks/bench_loadgen.py accuracy). Start-up costs about
    a second.
    """
    sc = scenario.validate()
    plan = build_plan(trace, sc)
    parts = partition(plan, sc.workers)
    if backend_factory is None:
        preflight(sc.url)
    factory = backend_factory or BackendFactory(sc)
    control = control or RunControl()
    opts = {"grace_s": sc.grace_s, "ignore_eos": sc.ignore_eos, "flush_interval_s": 0.2}
    if worker_process is None:
        worker_process = backend_factory is None
    use_processes = len(parts) > 1 or worker_process
    transport = ProcessWorkers(parts, factory, opts) if use_processes else ThreadWorkers(parts, factory, opts)

    with ResultsStore(out) as store:
        run_id = store.create_run(RunInfo(backend=sc.backend, endpoint=sc.url, model=sc.model, label=label,
                                          target_rate=plan.target_rate, scenario=sc.to_json()))
        recorder = Recorder(store, run_id)
        sup = _Supervisor(sc, plan, transport, recorder, control, progress)
        return supervise(store, run_id, sc, plan, trace, transport, sup)


def supervise(store: ResultsStore, run_id: str, sc: Scenario, plan: Plan, trace: Trace, transport: Any,
              sup: _Supervisor, *, on_close: Any = None) -> RunResult:
    """Run ``sup`` to the end, then close the run row whatever happened.

    Shared by local workers and Ray actors: the run row always ends with a status and
    a reason, everything recorded is committed, and workers a transport reports as
    ``lost`` are named in the reason instead of failing the run. ``on_close(sup)`` runs
    after the workers are shut down and before the final commit."""
    recorder = sup.recorder
    try:
        sup.run()
    except BaseException as exc:  # a bug or an interrupt in the supervisor: still close the run row
        sup.errors.append(f"supervisor: {type(exc).__name__}: {exc}")
        sup.control.stop("supervisor failed", now=True)
        transport.send(("now", "supervisor failed"))
        raise
    finally:
        sup.shutdown()
        if on_close is not None:
            on_close(sup)
        recorder.flush(checkpoint=True)
        duration = sup.duration_s()
        lost = list(getattr(transport, "lost", ()))
        lost_errors = {f"worker {w} exited unexpectedly" for w in lost}
        errors = [e for e in sup.errors if e not in lost_errors]
        if errors:
            status, reason = "aborted", f"error: {errors[0]}"
        elif sup.stop_reason is not None:
            status, reason = "aborted", sup.stop_reason
        else:
            status, reason = "done", _end_reason(sc, plan, trace)
        if lost:
            reason += f" ({len(lost)} of {sup.n} Ray workers lost: {', '.join(map(str, lost))})"
        measure_end = plan.measure_end_s if plan.measure_end_s is not None else duration
        store.finish_run(run_id, status=status, end_reason=reason, duration_s=duration,
                         measure_start_s=min(plan.measure_start_s, duration),
                         measure_end_s=min(measure_end, duration), notes=sup.notes)
        store.checkpoint()
        sup.restore_signals()  # only now: a Ctrl-C during the final commit changes nothing
    if errors and not sup.ready_all:
        raise BackendError(f"{redact_url(sc.url)}: the backend could not start: {errors[0]}")
    return RunResult(run_id, status, reason, duration, sup.notes, recorder.requests_written,
                     recorder.chunks_written)


class _Supervisor:
    """The main-thread loop: messages in, rows out, signals, progress, telemetry."""

    def __init__(self, sc: Scenario, plan: Plan, transport: Any, recorder: Recorder,
                 control: RunControl, progress: bool) -> None:
        self.sc = sc
        self.plan = plan
        self.transport = transport
        self.recorder = recorder
        self.control = control
        self.n = len(transport.alive())
        self.totals = Totals()
        self.watch = BottleneckWatch()
        self.view = ProgressView(target_rate=plan.target_rate,
                                 total=plan.df.height if plan.mode != "closed" else plan.max_requests,
                                 enabled=progress, send_end_s=plan.end_s if plan.mode != "closed" else None)
        self.notes: list[str] = list(plan.notes)
        self.errors: list[str] = []
        self.stop_reason: str | None = None
        self.ready_all = False
        self.t0: float | None = None  # monotonic run start
        self.end_t: list[float] = []
        self.scraper: MetricsScraper | None = None
        self.sampler: ClientSampler | None = None
        self._sigints = 0
        self._old_handler: Any = None
        self._old_term: Any = None
        self._switch: float | None = None
        self._stop_sent = self._now_sent = False

    # -- signals ----------------------------------------------------------------------
    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._sigints += 1
        if self._sigints == 1:
            self.control.stop(f"SIGINT (in-flight requests given {self.sc.grace_s:g}s grace)")
        else:
            self.control.stop("SIGINT", now=True)
            self.control.stop_reason = "SIGINT twice (in-flight requests cancelled at once)"

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.control.stop("SIGTERM (in-flight requests cancelled)", now=True)

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            self._old_term = signal.signal(signal.SIGTERM, self._on_sigterm)

    def shutdown(self) -> None:
        """Stop the scraper and join the workers (they have sent 'done' or were told to stop)."""
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
            self._switch = None
        if self.scraper is not None:
            self.scraper.stop()
        self.transport.join(5.0)
        # rows a worker sent after the loop stopped listening (only on an abnormal exit)
        done: set[int] = set(range(self.n))
        for _ in range(100_000):
            try:
                msg = self.transport.out.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if msg["kind"] == "batch":
                self._handle(msg, {}, done)

    def restore_signals(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_handler = None

    def clock(self) -> float:
        return time.monotonic() - self.t0 if self.t0 is not None else 0.0

    def duration_s(self) -> float:
        ends = [t for t in self.end_t if t is not None]
        return max(ends) if ends else max(self.clock(), 0.0)

    # -- messages ---------------------------------------------------------------------
    def _handle(self, msg: dict[str, Any], ready: dict[int, int], done: set[int]) -> None:
        kind = msg["kind"]
        if kind == "batch":
            self.recorder.add_batch(msg)
            self.totals.update(msg["worker"], msg["stats"])
            if len(msg["lags"]):
                self.watch.add_lags(np.frombuffer(msg["lags"], dtype=np.float64),
                                    np.frombuffer(msg["client_lags"], dtype=np.float64))
        elif kind == "ready":
            ready[msg["worker"]] = msg["pid"]
        elif kind == "done":
            done.add(msg["worker"])
            self.end_t.append(msg.get("end_t"))
            if "cpu_s" in msg:
                t, labels = msg.get("end_t") or self.clock(), json.dumps({"pid": msg["pid"]})
                self.recorder.add_telemetry([
                    (t, "client", "process_cpu_seconds_total", msg["cpu_s"], labels, msg["worker"]),
                    (t, "client", "process_max_rss_bytes", float(msg["maxrss_bytes"]), labels, msg["worker"]),
                ])
        elif kind == "error":
            self.errors.append(msg["message"])
            self.notes.append(f"worker {msg['worker']} failed: {msg['message']}")
            self.control.stop(f"worker {msg['worker']} failed", now=True)

    def _drain(self, ready: dict[int, int], done: set[int], timeout: float) -> None:
        try:
            msg = self.transport.out.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(msg, ready, done)
        for _ in range(10_000):
            try:
                msg = self.transport.out.get_nowait()
            except queue.Empty:
                return
            self._handle(msg, ready, done)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        self._install_signals()
        if not self.transport.process:
            # The worker loop shares this process's GIL with the supervisor (progress
            # drawing, Arrow batches). A shorter switch interval bounds how long a chunk
            # waits for the GIL before it is timestamped (default 5 ms; restored in close).
            self._switch = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch, 0.0005))
        self.transport.start()
        ready: dict[int, int] = {}
        done: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) + len(done) < self.n:
            self._drain(ready, done, 0.05)
            if self.control.stop_reason is not None or time.monotonic() > deadline:
                if time.monotonic() > deadline:
                    self.errors.append(f"workers not ready after {READY_TIMEOUT_S:.0f}s")
                self.stop_reason = self.control.stop_reason or "workers not ready"
                self.transport.send(("stop", self.stop_reason))
                self._wait_done(done)
                return
            if not all(self.transport.alive()) and len(ready) + len(done) < self.n:
                self._drain(ready, done, 0.5)
                if len(ready) + len(done) < self.n:
                    self.errors.append("a worker exited before it was ready")
                    self.transport.send(("stop", "worker exited"))
                    self._wait_done(done)
                    return
        if done:  # a worker failed while starting (its backend could not start)
            self.transport.send(("stop", "a worker failed to start"))
            self._wait_done(done)
            return
        self.ready_all = True
        import os

        pids: dict[int | None, int] = {None: os.getpid()}
        if self.transport.process:
            pids.update(ready)
        start_wall = time.time() + (0.3 if self.transport.process else 0.05)
        self.t0 = time.monotonic() + (start_wall - time.time())
        self.transport.send(("start", start_wall))
        self.recorder.mark_started(start_wall)
        self.sampler = ClientSampler(pids)
        if self.sc.scrape_metrics:
            self.scraper = MetricsScraper(self.sc.url, self.clock, self.recorder.add_telemetry,
                                          interval_s=self.sc.scrape_interval_s, api_key_env=self.sc.api_key_env)
            self.scraper.start()
        with self.view:
            self._main(ready, done)

    def _main(self, ready: dict[int, int], done: set[int]) -> None:
        last_commit = last_tick = last_draw = time.monotonic()
        while len(done) < self.n:
            self._drain(ready, done, 0.05)
            now = time.monotonic()
            if self.control.stop_reason is not None:
                if not self._stop_sent:
                    self._stop_sent = True
                    self.stop_reason = self.control.stop_reason
                    self.transport.send(("stop", self.stop_reason))
                    self.view.warn(f"stopping: {self.stop_reason}; Ctrl-C again to cancel in-flight requests")
                if self.control.now and not self._now_sent:
                    self._now_sent = True
                    self.stop_reason = self.control.stop_reason
                    self.transport.send(("now", self.stop_reason))
            if not all(self.transport.alive()) and len(done) < self.n:
                self._drain(ready, done, 0.5)
                if len(done) < self.n and not all(self.transport.alive()):
                    dead = [i for i, a in enumerate(self.transport.alive()) if not a]
                    for w in dead:
                        if w not in done:
                            done.add(w)
                            self.errors.append(f"worker {w} exited unexpectedly")
                            self.notes.append(f"worker {w} exited unexpectedly; its unsent rows are lost")
                    self.control.stop("a worker died", now=True)
            if now - last_commit >= COMMIT_INTERVAL_S:
                last_commit = now
                self.recorder.flush()
            if now - last_tick >= 1.0:
                last_tick = now
                t = self.clock()
                assert self.sampler is not None
                self.recorder.add_telemetry(self.sampler.sample(t))
                for w in self.watch.tick(t, self.sampler.max_cpu()):
                    self.notes.append(w)
                    self.view.warn(w)
            if now - last_draw >= 0.5:
                last_draw = now
                cpu = self.sampler.max_cpu() if self.sampler else 0.0
                self.view.update(self.clock(), self.totals, self.watch.lag_p99_ms, cpu)
        # final tick so short runs get a lag figure and the last telemetry sample
        if self.sampler is not None:
            self.recorder.add_telemetry(self.sampler.sample(self.clock()))
        self.view.update(self.clock(), self.totals, self.watch.lag_p99_ms,
                         self.sampler.max_cpu() if self.sampler else 0.0)

    def _wait_done(self, done: set[int]) -> None:
        deadline = time.monotonic() + 30.0
        ready: dict[int, int] = {}
        while len(done) < self.n and time.monotonic() < deadline and any(self.transport.alive()):
            self._drain(ready, done, 0.1)
