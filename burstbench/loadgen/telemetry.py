"""Telemetry while a run goes: the client's own CPU and memory, the host's load, the server's /metrics.

The client's CPU is sampled because a saturated client produces wrong latencies
(the progress view turns it into a bottleneck warning). The host's CPU (busy and
stolen by a hypervisor, over all cores) is sampled beside it, because a client
delayed by *other* processes shows the same lag at 1% CPU, and the cure differs:
more ``--workers`` help a saturated client with idle cores, not a saturated host. The server's Prometheus
endpoint is scraped in a background thread, so a slow scrape never delays a
request; only vLLM-named series (``vllm:...``) are kept, histogram buckets are
dropped (their ``_sum`` and ``_count`` stay) to keep the table small. An endpoint
without ``/metrics`` is noticed on the first scrape and not asked again.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psutil

Row = tuple[float, str, str, float, str | None, int | None]
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class HostLoad:
    """One sample of the whole host: CPU busy and stolen (percent of all cores), and the client's share."""

    busy_percent: float  # 100 - idle - iowait, over all cores (steal included: it is not ours)
    steal_percent: float  # taken by the hypervisor for other guests
    cores: int
    client_cores: float  # CPU the client processes used, in cores

    @property
    def idle_cores(self) -> float:
        return self.cores * max(0.0, 100.0 - self.busy_percent) / 100.0

    @property
    def other_cores(self) -> float:
        """Cores busy with something other than this client (other processes, steal)."""
        return max(0.0, self.cores * self.busy_percent / 100.0 - self.client_cores)


class ClientSampler:
    """CPU percent (of one core) and RSS of the client processes, and the host's load."""

    def __init__(self, pids: dict[int | None, int]) -> None:
        self.cores = psutil.cpu_count() or 1
        psutil.cpu_times_percent(None)  # prime the interval
        self.host: HostLoad | None = None
        # worker_id -> pid; worker_id None is the supervisor (or the in-process worker)
        self.procs: dict[int | None, psutil.Process] = {}
        for wid, pid in pids.items():
            try:
                p = psutil.Process(pid)
                p.cpu_percent(None)
                self.procs[wid] = p
            except psutil.Error:
                continue
        self.last_cpu: dict[int | None, float] = {}

    def sample(self, t: float) -> list[Row]:
        rows: list[Row] = []
        for wid, p in list(self.procs.items()):
            try:
                with p.oneshot():
                    cpu = p.cpu_percent(None)
                    rss = p.memory_info().rss
            except psutil.Error:
                self.procs.pop(wid, None)
                continue
            self.last_cpu[wid] = cpu
            labels = json.dumps({"pid": p.pid})
            rows.append((t, "client", "process_cpu_percent", cpu, labels, wid))
            rows.append((t, "client", "process_rss_bytes", float(rss), labels, wid))
        ct = psutil.cpu_times_percent(None)
        busy = max(0.0, 100.0 - ct.idle - getattr(ct, "iowait", 0.0))
        steal = float(getattr(ct, "steal", 0.0))
        client = sum(r[3] for r in rows if r[2] == "process_cpu_percent") / 100.0
        self.host = HostLoad(busy, steal, self.cores, client)
        rows.append((t, "client", "host_cpu_busy_percent", busy, None, None))
        rows.append((t, "client", "host_cpu_steal_percent", steal, None, None))
        return rows

    def max_cpu(self) -> float:
        return max(self.last_cpu.values(), default=0.0)


def metrics_url(url: str) -> str:
    """http://host:port/metrics for an endpoint URL (whatever path it had)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


def parse_prometheus(text: str, *, prefix: str = "vllm:") -> list[tuple[str, float, str | None]]:
    """(name, value, labels JSON) of the samples whose name starts with ``prefix``."""
    out: list[tuple[str, float, str | None]] = []
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(prefix):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        if name.endswith("_bucket"):
            continue
        try:
            v = float(value)
        except ValueError:
            continue
        lab = {k: v.replace('\\"', '"') for k, v in _LABEL.findall(labels)} if labels else {}
        out.append((name, v, json.dumps(lab) if lab else None))
    return out


class MetricsScraper:
    """Scrapes ``/metrics`` every ``interval_s`` in a daemon thread until stopped."""

    def __init__(self, url: str, clock: Callable[[], float], emit: Callable[[list[Row]], None], *,
                 interval_s: float = 1.0, api_key_env: str | None = None, timeout_s: float = 2.0) -> None:
        self.url = metrics_url(url)
        self.clock = clock
        self.emit = emit
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.headers = {}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.available: bool | None = None  # None until the first scrape answered
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="burstbench-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)

    def scrape_once(self) -> list[Row]:
        req = urllib.request.Request(self.url, headers=self.headers)
        t = self.clock()
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            text = resp.read().decode("utf-8", "replace")
        return [(t, "server", name, value, labels, None) for name, value, labels in parse_prometheus(text)]

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                rows = self.scrape_once()
            except (urllib.error.URLError, OSError, ValueError):
                rows = None
            if rows is None or (not rows and self.available is None):
                if self.available is None:
                    self.available = False  # no /metrics or no vLLM series: stop asking
                    return
            else:
                self.available = True
                self.scrapes += 1
                if rows:
                    self.emit(rows)
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))
