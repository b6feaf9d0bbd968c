"""Live progress on stderr and the client-bottleneck watch.

A load generator that cannot keep up reports the server as slow; the only honest
thing is to notice and say so. ``BottleneckWatch`` looks at each second's
client lag p99 (send time minus the later of the scheduled time and the moment a
concurrency slot freed up, so waiting for a capped slot, which is the server's
doing, does not count) and the client processes' CPU: client lag p99 above 10 ms
for three seconds and higher at the end than at the start, or a client process
above 90 % of a core for three seconds, raises a warning that is printed at once
(red, on stderr) and stored in ``runs.notes``. The view shows the full schedule
lag p99 (sent - scheduled).

The warning names the cause, because the cure differs. Growing lag with a client
process near a full core is the client's own limit: ``--workers`` helps while the
host has idle cores. Growing lag with the client nearly idle and the host's CPUs
busy (or stolen by a hypervisor) is other load delaying the client: more workers
would compete for the same CPUs. Lag with neither busy is not a CPU shortage at all
(a CPU quota, swap, a blocking call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from rich.live import Live
from rich.table import Table
from rich.text import Text

from burstbench.loadgen.telemetry import HostLoad
from burstbench.output import clean, console

HOST_BUSY_PERCENT = 90.0  # the host's CPUs count as saturated above this (all cores together)
STEAL_PERCENT = 10.0  # a hypervisor taking this much is a saturated host too


@dataclass
class Totals:
    """Counters summed over workers (each worker reports its own running totals)."""

    per_worker: dict[int, dict[str, float]] = field(default_factory=dict)

    def update(self, worker: int, stats: dict[str, float]) -> None:
        self.per_worker[worker] = stats

    def get(self, key: str) -> float:
        return sum(s.get(key, 0) for s in self.per_worker.values())


class BottleneckWatch:
    """Per-second lag p99 and client CPU; warnings when the client is what limits the run."""

    def __init__(self, *, lag_ms: float = 10.0, cpu_percent: float = 90.0, seconds: int = 3) -> None:
        self.lag_ms = lag_ms
        self.cpu_percent = cpu_percent
        self.seconds = seconds
        self._lags: list[np.ndarray] = []
        self._client: list[np.ndarray] = []
        self.window_p99_ms: list[float] = []
        self._cpu_high = 0
        self.warnings: list[str] = []
        self._raised: set[str] = set()
        self.lag_p99_ms = float("nan")
        self._hosts: list[HostLoad] = []

    def add_lags(self, lags: np.ndarray, client_lags: np.ndarray | None = None) -> None:
        """Schedule lags (shown) and client lags (judged; the same when there is no cap)."""
        if lags.size:
            self._lags.append(lags)
            self._client.append(lags if client_lags is None else client_lags)

    def _host(self) -> tuple[HostLoad | None, bool]:
        """The host over the last seconds (mean of the samples) and whether it was saturated."""
        recent = self._hosts[-self.seconds:]
        if not recent:
            return None, False
        h = HostLoad(float(np.mean([x.busy_percent for x in recent])),
                     float(np.mean([x.steal_percent for x in recent])), recent[-1].cores,
                     float(np.mean([x.client_cores for x in recent])))
        return h, h.busy_percent >= HOST_BUSY_PERCENT or h.steal_percent >= STEAL_PERCENT

    def _workers_advice(self, host: HostLoad | None) -> str:
        if host is None:
            return "add --workers"
        if host.idle_cores >= 1.0:
            return f"add --workers: the host has ~{host.idle_cores:.0f} idle core(s)"
        return (f"the host's {host.cores} CPUs are {host.busy_percent:.0f}% busy, so --workers would compete "
                "for the same CPUs: use a larger or quieter client machine")

    @staticmethod
    def _host_words(host: HostLoad) -> str:
        steal = f", {host.steal_percent:.0f}% stolen by the hypervisor" if host.steal_percent >= 1.0 else ""
        return f"the host's {host.cores} CPUs were {host.busy_percent:.0f}% busy{steal}"

    def tick(self, t: float, cpu_max: float, host: HostLoad | None = None) -> list[str]:
        """Close one second's window (``host``: the host's load this second); return new warnings."""
        new: list[str] = []
        if host is not None:
            self._hosts.append(host)
        if self._lags:
            self.lag_p99_ms = float(np.percentile(np.concatenate(self._lags), 99) * 1e3)
            client = np.concatenate(self._client)
            self._lags, self._client = [], []
            self.window_p99_ms.append(float(np.percentile(client, 99) * 1e3) if client.size else 0.0)
        recent = self.window_p99_ms[-self.seconds:]
        self._cpu_high = self._cpu_high + 1 if cpu_max >= self.cpu_percent else 0
        hload, host_busy = self._host()
        if (len(recent) == self.seconds and all(v > self.lag_ms for v in recent)
                and recent[-1] >= recent[0] and "lag" not in self._raised):
            self._raised.add("lag")
            lag = f"client lag p99 {recent[-1]:.1f} ms and growing for {self.seconds}s"
            if cpu_max >= self.cpu_percent or hload is None:
                new.append(f"client bottleneck at t={t:.0f}s: {lag} with a client process at {cpu_max:.0f}% "
                           f"of a core; the client, not the server, limits this run ({self._workers_advice(hload)})")
            elif host_busy:
                new.append(f"host saturated at t={t:.0f}s: {lag} while {self._host_words(hload)} and the client "
                           f"used only {cpu_max:.0f}% of a core: other load (~{hload.other_cores:.1f} cores) delays "
                           "the client, so latencies include that delay; --workers will not help: stop the other "
                           "load or run the client on a quieter machine")
            else:
                new.append(f"client lag at t={t:.0f}s: {lag} with the client at {cpu_max:.0f}% of a core and "
                           f"{self._host_words(hload)}: not a CPU shortage, so --workers is unlikely to help; look "
                           "for a CPU quota (container throttling), swapping, or a blocking call in a backend")
        if self._cpu_high >= self.seconds and "cpu" not in self._raised:
            self._raised.add("cpu")
            new.append(f"client bottleneck at t={t:.0f}s: a client process used {cpu_max:.0f}% of a core "
                       f"for {self.seconds}s; latencies include client delay ({self._workers_advice(hload)})")
        self.warnings += new
        return new


class ProgressView:
    """A rich Live table on stderr, redrawn a few times a second by the supervisor."""

    def __init__(self, *, target_rate: float | None, total: int | None, enabled: bool = True,
                 send_end_s: float | None = None, plain_every_s: float = 5.0) -> None:
        self.target_rate = target_rate
        self.send_end_s = send_end_s  # when sending stops: the achieved rate is over the sending window
        self.total = total
        self.console = console()
        self.enabled = enabled and self.console.is_terminal
        self.plain = enabled and not self.console.is_terminal
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._last_plain: float | None = None

    def __enter__(self) -> ProgressView:
        if self.enabled:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def warn(self, message: str) -> None:
        if self.enabled or self.plain:
            self.console.print(Text(clean(f"WARNING: {message}"), style="bold red"))

    def fields(self, t: float, totals: Totals, lag_p99_ms: float, cpu: float) -> list[tuple[str, str]]:
        """(name, value) of one progress sample; the terminal table and the log line show the same."""
        sent = totals.get("sent")
        window = min(t, self.send_end_s) if self.send_end_s else t
        rate = sent / window if window > 0 else 0.0
        target = f"{self.target_rate:.1f}" if self.target_rate else "-"
        total = f"/{self.total}" if self.total else ""
        return [
            ("elapsed", f"{t:.1f}s"), ("sent", f"{sent:.0f}{total}"), ("completed", f"{totals.get('completed'):.0f}"),
            ("failed", f"{totals.get('failed'):.0f}"), ("in flight", f"{totals.get('in_flight'):.0f}"),
            ("req/s got/target", f"{rate:.1f}/{target}"),
            ("lag p99", f"{lag_p99_ms:.2f} ms" if lag_p99_ms == lag_p99_ms else "-"), ("client CPU", f"{cpu:.0f}%"),
        ]

    def render(self, t: float, totals: Totals, lag_p99_ms: float, cpu: float) -> Table:
        table = Table(show_header=True, header_style="bold", box=None)
        row = self.fields(t, totals, lag_p99_ms, cpu)
        for col, _ in row:
            table.add_column(col, justify="right")
        table.add_row(*(v for _, v in row))
        return table

    def line(self, t: float, totals: Totals, lag_p99_ms: float, cpu: float) -> str:
        """One self-describing line for a log file or CI: no header to repeat, one line per sample."""
        return "progress: " + ", ".join(f"{k} {v}" for k, v in self.fields(t, totals, lag_p99_ms, cpu))

    def update(self, t: float, totals: Totals, lag_p99_ms: float, cpu: float) -> None:
        if self._live is not None:
            self._live.update(self.render(t, totals, lag_p99_ms, cpu), refresh=True)
        elif self.plain and (self._last_plain is None or time.monotonic() - self._last_plain >= self.plain_every_s):
            self._last_plain = time.monotonic()
            self.console.print(Text(self.line(t, totals, lag_p99_ms, cpu)), soft_wrap=True)
