"""``burstbench run --ray ADDRESS|auto``: the same load generator on Ray actors, one results file.

Why Ray: one host runs out of sockets, cores or NIC before a large deployment
runs out of capacity. Each Ray actor runs exactly the per-worker code path of
``--workers N`` (``workers.worker_main`` in a thread of the actor: its own event
loop, the shared start instant, batched rows), so a distributed run measures
what a local run measures. The driver stays the only writer of the results file:
it is an ordinary ``_Supervisor`` whose transport is ``RayWorkers`` instead of
``ProcessWorkers``.

What Ray adds over local processes:

* clocks: hosts disagree about wall time. Before the start the driver measures
  each actor's clock offset NTP-style (several round trips, the one with the
  shortest round trip wins: offset = actor_time - midpoint, error <= rtt/2) and
  hands every actor the start instant *in its own clock*, so all start together
  in the driver's time. Offsets, round trips and the resulting start skew are
  written to ``runs.notes`` and as telemetry (``clock_offset_ms``,
  ``clock_rtt_ms``, ``start_late_ms``, ``start_skew_ms``; per-worker
  ``schedule_lag_p99_ms`` every poll), so a report can show them.
* client CPU/RSS: actors may be on other hosts, so each actor samples its own
  process and the rows arrive with its batches (``source='client'``, worker id).
* credentials: the API key variable named by the scenario is read on the driver
  and handed to each actor as a constructor argument (set in the actor's
  environment only if its host lacks it), never through Ray's ``runtime_env``.
* a lost actor (node died, ``ray.kill``): the run goes on with the others. The
  driver knows the lost actor's share of the plan and which of its requests it
  has rows for; every other request of that share becomes a row with
  ``error_class='worker_lost'`` -- status ``error`` if it was already due (it may
  have been in flight; its outcome is unknown) and ``cancelled`` if it was not
  due yet (never sent). ``runs.notes`` and ``end_reason`` say so. In closed-loop
  mode requests are not known in advance, so only the note is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from burstbench.errors import BackendError, UsageError
from burstbench.loadgen.recorder import Recorder
from burstbench.loadgen.runner import (
    STORE_RESERVE_BYTES,
    BackendFactory,
    RunControl,
    RunResult,
    _Supervisor,
    preflight,
    supervise,
    with_served_model,
)
from burstbench.loadgen.scenario import Scenario
from burstbench.loadgen.schedule import Plan, build_plan, partition
from burstbench.loadgen.workers import worker_main
from burstbench.store import ResultsStore, RunInfo, redact_url
from burstbench.traces.schema import Trace

CLOCK_ROUNDS = 7
POLL_TIMEOUT_S = 0.2
RPC_TIMEOUT_S = 60.0
START_MARGIN_S = 1.0  # extra time before the start instant: Ray calls are slower than pipes
NO_PID = 2**31 - 1  # a pid that cannot exist: the supervisor must not sample actors itself
LOST = "worker_lost"
LAG_EVERY_S = 0.5  # per-worker schedule-lag p99 telemetry interval (and once at the end)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageError("--ray needs Ray: pip install 'burstbench[distributed]'") from exc
    return ray


class LoadActor:
    """Runs one worker of the plan inside a Ray actor (threaded: poll and commands overlap)."""

    def __init__(self, plan: Plan, factory: Any, opts: dict[str, Any], env: dict[str, str] | None = None) -> None:
        for name, value in (env or {}).items():  # the API key, when this host's environment lacks it
            os.environ.setdefault(name, value)
        self.out: queue.Queue = queue.Queue()
        self.ctl: queue.Queue = queue.Queue()
        self.worker_id = plan.worker_id
        self.thread = threading.Thread(target=worker_main, args=(plan, factory, self.out, self.ctl, dict(opts)),
                                       name=f"burstbench-ray-worker-{plan.worker_id}", daemon=True)
        self.start_received: float | None = None
        self.start_at: float | None = None
        import psutil

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self._last_sample = 0.0

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "host": socket.gethostname(), "worker": self.worker_id,
                "node": ray.get_runtime_context().get_node_id()}

    def clock(self) -> float:
        return time.time()

    def start(self) -> bool:
        self.thread.start()
        return True

    def command(self, cmd: tuple) -> float:
        """Forward a control command; returns this actor's wall clock on receipt."""
        now = time.time()
        if cmd[0] == "start":
            self.start_received, self.start_at = now, cmd[1]
        self.ctl.put(cmd)
        return now

    def poll(self, timeout: float) -> tuple[list[dict[str, Any]], list[tuple], dict[str, Any]]:
        """Messages from the worker (waits up to ``timeout`` for the first), telemetry, start facts."""
        msgs: list[dict[str, Any]] = []
        try:
            msgs.append(self.out.get(timeout=timeout))
            for _ in range(10_000):
                msgs.append(self.out.get_nowait())
        except queue.Empty:
            pass
        tele: list[tuple] = []
        now = time.time()
        if now - self._last_sample >= 1.0:
            self._last_sample = now
            with self._proc.oneshot():
                labels = json.dumps({"pid": self._proc.pid, "host": socket.gethostname(), "via": "ray"})
                tele.append((now, "process_cpu_percent", self._proc.cpu_percent(None), labels))
                tele.append((now, "process_rss_bytes", float(self._proc.memory_info().rss), labels))
        return msgs, tele, {"start_received": self.start_received, "start_at": self.start_at}


@dataclass
class ActorClock:
    """One actor's clock relative to the driver's: actor_time = driver_time + offset_s."""

    offset_s: float
    rtt_s: float
    host: str
    pid: int
    node: str = ""


def measure_clock(ray: Any, actor: Any, rounds: int = CLOCK_ROUNDS) -> tuple[float, float]:
    """(offset_s, rtt_s) from the round trip with the shortest rtt (NTP's best-sample rule)."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        t1 = time.time()
        ta = ray.get(actor.clock.remote(), timeout=RPC_TIMEOUT_S)
        t2 = time.time()
        rtt = t2 - t1
        if best is None or rtt < best[1]:
            best = (ta - (t1 + t2) / 2.0, rtt)
    assert best is not None
    return best


@dataclass
class _Slot:
    """What the driver tracks about one actor."""

    plan: Plan
    actor: Any
    clock: ActorClock | None = None
    seen: set[int] = field(default_factory=set)
    done: bool = False
    lost: bool = False
    start_facts: dict[str, Any] = field(default_factory=dict)
    last_lag_t: float = 0.0
    last_stats: dict[str, Any] = field(default_factory=dict)
    lags: list[np.ndarray] = field(default_factory=list)


class RayWorkers:
    """A worker transport (same interface as ``ProcessWorkers``) over Ray actors.

    ``alive()`` is False only for an actor that is gone *and not yet accounted
    for*; once its loss is turned into rows and a ``done`` message, it counts as
    finished, so the supervisor carries on with the other actors.
    """

    process = True

    def __init__(self, parts: list[Plan], factory: Any, opts: dict[str, Any], *,
                 nodes: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.ray = _ray()
        self.parts = parts
        self.factory = factory
        self.opts = dict(opts, process=False)
        self.nodes = nodes or []
        self.env = dict(env or {})
        self.out: queue.Queue = queue.Queue()
        self.slots: list[_Slot] = []
        self.notes: list[str] = []
        self.lost: list[int] = []
        self.telemetry_sink: Any = None
        self.start_wall: float | None = None  # driver wall clock of run time 0
        self._stop = threading.Event()
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.started = threading.Event()  # set once every actor has the start command

    # -- transport interface ----------------------------------------------------------
    def start(self) -> None:
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(max_concurrency=4, num_cpus=0)(LoadActor)
        for i, part in enumerate(self.parts):
            options: dict[str, Any] = {"name": None}
            if self.nodes:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.nodes[i % len(self.nodes)],
                                                                                soft=False)
            actor = remote.options(**{k: v for k, v in options.items() if v is not None}).remote(
                part, self.factory, self.opts, self.env)
            self.slots.append(_Slot(plan=part, actor=actor))
        for slot in self.slots:
            info = ray.get(slot.actor.info.remote(), timeout=RPC_TIMEOUT_S)
            offset, rtt = measure_clock(ray, slot.actor)
            slot.clock = ActorClock(offset, rtt, info["host"], info["pid"], info["node"])
            ray.get(slot.actor.start.remote(), timeout=RPC_TIMEOUT_S)
        for w, slot in enumerate(self.slots):
            t = threading.Thread(target=self._pump, args=(w, slot), name=f"burstbench-ray-pump-{w}", daemon=True)
            t.start()
            self._pumps.append(t)

    def send(self, cmd: tuple) -> None:
        if cmd[0] == "start":
            # the supervisor's instant is in the driver's clock; give each actor its own
            self.start_wall = cmd[1]
            refs = [(s, s.actor.command.remote(("start", cmd[1] + (s.clock.offset_s if s.clock else 0.0))))
                    for s in self.slots if not s.lost]
            for _s, ref in refs:
                try:
                    self.ray.get(ref, timeout=RPC_TIMEOUT_S)
                except Exception:  # a dead actor is handled by its pump
                    continue
            self.started.set()
            return
        for s in self.slots:
            if not s.lost and not s.done:
                s.actor.command.remote(cmd)

    def alive(self) -> list[bool]:
        # one entry per worker even before start(): the supervisor counts its workers by it
        with self._lock:
            if len(self.slots) < len(self.parts):
                return [True] * len(self.parts)
            return [not (s.lost and not s.done) for s in self.slots]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._pumps:
            t.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for t in self._pumps:
            t.join(1.0)
        for s in self.slots:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(s.actor)

    def kill(self, worker: int) -> None:
        """Kill one actor (tests, and what a dead node looks like)."""
        self.ray.kill(self.slots[worker].actor, no_restart=True)

    # -- pumping ----------------------------------------------------------------------
    def _run_clock(self, actor_wall: float, slot: _Slot) -> float:
        off = slot.clock.offset_s if slot.clock else 0.0
        return actor_wall - off - (self.start_wall or actor_wall - off)

    def _pump(self, w: int, slot: _Slot) -> None:
        ray = self.ray
        while not self._stop.is_set() and not slot.done:
            try:
                msgs, tele, facts = ray.get(slot.actor.poll.remote(POLL_TIMEOUT_S), timeout=RPC_TIMEOUT_S)
            except BaseException as exc:  # RayActorError, GetTimeoutError, node death, ray shutdown
                if self._stop.is_set() or isinstance(exc, SystemExit | KeyboardInterrupt):
                    return
                self._lose(w, slot, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                return
            slot.start_facts = facts
            for msg in msgs:
                if msg.get("kind") == "batch":
                    for row in msg["requests"]:
                        slot.seen.add(row[0])
                    slot.last_stats = msg["stats"]
                    if len(msg["lags"]):
                        slot.lags.append(np.frombuffer(msg["lags"], dtype=np.float64).copy())
                elif msg.get("kind") == "done":
                    slot.done = True
                self.out.put(msg)
            if self.telemetry_sink is not None and self.start_wall is not None:
                rows = [(self._run_clock(t, slot), "client", name, value, labels, w) for t, name, value, labels in tele]
                now_t = time.time() - self.start_wall
                if slot.lags and (now_t - slot.last_lag_t >= LAG_EVERY_S or slot.done):
                    slot.last_lag_t = now_t
                    lags = np.concatenate(slot.lags)
                    slot.lags.clear()
                    rows.append((now_t, "client", "schedule_lag_p99_ms", float(np.percentile(lags, 99)) * 1e3,
                                 None, w))
                if rows:
                    self.telemetry_sink(rows)

    def _lose(self, w: int, slot: _Slot, why: str) -> None:
        """Turn a lost actor's unfinished share of the plan into rows, then report it done."""
        t_lost = time.time() - self.start_wall if self.start_wall is not None else 0.0
        plan = slot.plan
        rows: list[tuple] = []
        if plan.mode != "closed":
            df = plan.df
            cols = {c: df[c].to_list() for c in ("request_id", "session_id", "turn", "tenant", "model",
                                                 "scheduled_s", "input_tokens", "output_tokens")}
            for i, rid in enumerate(cols["request_id"]):
                if rid in slot.seen:
                    continue
                sched = cols["scheduled_s"][i]
                due = sched <= t_lost
                status = "error" if due else "cancelled"
                msg = ("its worker was lost while the request was due or in flight; outcome unknown" if due
                       else "never sent: its worker was lost before the request was due")
                rows.append((rid, cols["session_id"][i], cols["turn"][i], cols["tenant"][i], cols["model"][i],
                             plan.phase(sched), sched, None, None, None, None, t_lost if due else None,
                             cols["input_tokens"][i], None, cols["output_tokens"][i], None, None, None, None, 0,
                             status, None, LOST, f"worker {w} lost ({why}): {msg}"[:500], w))
        note = (f"worker {w} (Ray actor on {slot.clock.host if slot.clock else '?'}) lost at t={t_lost:.2f}s: "
                f"{why}; {len(rows)} of its {plan.df.height if plan.mode != 'closed' else '?'} requests "
                f"marked error_class='{LOST}'; the other workers carried on")
        if plan.mode == "closed":
            note += " (closed loop: its in-flight requests are not known and have no rows)"
        self.notes.append(note)
        self.lost.append(w)
        if rows:
            stats = dict(slot.last_stats, in_flight=0, t=t_lost)
            stats["failed"] = stats.get("failed", 0) + sum(r[20] == "error" for r in rows)
            stats["cancelled"] = stats.get("cancelled", 0) + sum(r[20] == "cancelled" for r in rows)
            self.out.put({"kind": "batch", "worker": w, "requests": rows, "chunk_rid": [], "chunk_seq": [],
                          "chunk_t": [], "chunk_tokens": [], "chunk_reasoning": [], "lags": b"", "stats": stats})
        self.out.put({"kind": "done", "worker": w, "stopped": True, "stop_reason": f"worker {w} lost",
                      "end_t": None})
        with self._lock:  # lost and done together: alive() never shows an unaccounted loss
            slot.lost = slot.done = True

    # -- clock facts --------------------------------------------------------------------
    def clock_report(self) -> tuple[list[str], list[tuple]]:
        """Notes and telemetry rows (t=0) about clock offsets and start skew."""
        notes: list[str] = []
        rows: list[tuple] = []
        starts: list[float] = []
        parts = []
        for w, s in enumerate(self.slots):
            if s.clock is None:
                continue
            c = s.clock
            rows.append((0.0, "client", "clock_offset_ms", c.offset_s * 1e3, json.dumps({"host": c.host}), w))
            rows.append((0.0, "client", "clock_rtt_ms", c.rtt_s * 1e3, json.dumps({"host": c.host}), w))
            recv, at = s.start_facts.get("start_received"), s.start_facts.get("start_at")
            late_ms = None
            if recv is not None and at is not None:
                # the worker starts at max(receipt, instant) in its clock; in the driver's clock:
                start_driver = max(recv, at) - c.offset_s
                starts.append(start_driver)
                late_ms = max(0.0, recv - at) * 1e3
                rows.append((0.0, "client", "start_late_ms", late_ms, None, w))
            parts.append(f"w{w}@{c.host} offset {c.offset_s * 1e3:+.3f} ms (rtt {c.rtt_s * 1e3:.2f} ms"
                         + (f", start late {late_ms:.2f} ms" if late_ms else "") + ")")
        skew_ms = (max(starts) - min(starts)) * 1e3 if len(starts) > 1 else 0.0
        # each start is known to within its actor's rtt/2 -> the skew's uncertainty
        err_ms = max((s.clock.rtt_s / 2 for s in self.slots if s.clock), default=0.0) * 1e3
        rows.append((0.0, "client", "start_skew_ms", skew_ms, json.dumps({"uncertainty_ms": err_ms}), None))
        hosts = {s.clock.host for s in self.slots if s.clock}
        notes.append(f"ray: {len(self.slots)} actor(s) on {len(hosts)} host(s); clocks vs driver: "
                     + "; ".join(parts) + f"; start skew {skew_ms:.3f} ms (+/- {err_ms:.3f} ms)")
        return notes, rows


class _RaySupervisor(_Supervisor):
    """The local supervisor, except that it never samples actor pids itself.

    Ready messages carry the actors' pids, which may live on other hosts; the
    supervisor samples only the driver and the actors send their own CPU/RSS rows.
    """

    def _handle(self, msg: dict[str, Any], ready: dict[int, int], done: set[int]) -> None:
        if msg.get("kind") == "ready":
            msg = dict(msg, pid=NO_PID)
        super()._handle(msg, ready, done)


def _alive_nodes(ray: Any) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A plain HOST:PORT must accept a TCP connection: Ray itself retries for minutes."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise BackendError(f"--ray {address}: no Ray head answers there ({getattr(exc, 'strerror', None) or exc}); "
                           "start one with 'ray start --head' or pass its GCS address (HOST:6379) or 'auto'") from None


def connect(address: str) -> Any:
    """Attach to a Ray cluster (``auto``, ``host:port``, ``ray://...``) unless already attached."""
    ray = _ray()
    if not ray.is_initialized():
        _reachable(address)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            # a cluster started here (address 'local') listens on loopback only, never on the
            # host's network interface
            local = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"} if address == "local" else {}
            ray.init(address=None if address == "local" else address, log_to_driver=False,
                     logging_level="WARNING", **local)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError...
            raise BackendError(f"--ray {redact_url(address) if '://' in address else address}: "
                               f"cannot connect to the Ray cluster ({str(exc).splitlines()[0]}); "
                               "start one with 'ray start --head' or pass its address") from None
    return ray


def execute_ray(trace: Trace, scenario: Scenario, out: str | Path, *, address: str = "auto",
                actors_per_node: int = 1, label: str | None = None, progress: bool = True,
                backend_factory: Any = None, control: RunControl | None = None,
                on_transport: Any = None) -> RunResult:
    """Run ``scenario`` on Ray actors and record into ``out`` (see the module docstring).

    Actors: ``scenario.workers`` when it is > 1, else ``actors_per_node`` per alive
    node; they are spread over the nodes round-robin. ``on_transport`` is called
    with the ``RayWorkers`` before the run starts (tests use it to kill an actor).
    """
    sc = scenario.validate()
    ray = connect(address)
    nodes = _alive_nodes(ray)
    n = sc.workers if sc.workers > 1 else max(1, len(nodes) * max(1, actors_per_node))
    plan = build_plan(trace, sc)
    parts = partition(plan, n)
    if backend_factory is None:
        preflight(sc.url)
        sc = with_served_model(sc)
    factory = backend_factory or BackendFactory.for_trace(sc, trace)
    control = control or RunControl()
    opts = {"grace_s": sc.grace_s, "ignore_eos": sc.ignore_eos, "flush_interval_s": 0.2}
    # The key travels as an actor constructor argument (never in runtime_env, which Ray
    # shows in its dashboard and logs), so remote hosts need no copy of the variable.
    key_var = sc.api_key_env or "OPENAI_API_KEY"
    env = {key_var: os.environ[key_var]} if os.environ.get(key_var) else {}
    transport = RayWorkers(parts, factory, opts, nodes=nodes, env=env)
    if on_transport is not None:
        on_transport(transport)
    scen = dict(sc.to_json(), workers=n, ray={"address": address if "://" not in address else redact_url(address),
                                              "actors": n, "nodes": len(nodes)})
    with ResultsStore(out) as store, store.reserve(STORE_RESERVE_BYTES):
        run_id = store.create_run(RunInfo(backend=sc.backend, endpoint=sc.url, model=sc.model, label=label,
                                          target_rate=plan.target_rate, scenario=scen))
        recorder = Recorder(store, run_id)
        transport.telemetry_sink = recorder.add_telemetry
        sup = _RaySupervisor(sc, plan, transport, recorder, control, progress)

        def add_clock_report(sup: _RaySupervisor) -> None:
            clock_notes, clock_rows = transport.clock_report()
            recorder.add_telemetry(clock_rows)
            sup.notes[:0] = clock_notes
            sup.notes.extend(transport.notes)

        return supervise(store, run_id, sc, plan, trace, transport, sup, on_close=add_clock_report)
