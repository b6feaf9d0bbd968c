"""Hardware telemetry during a load run: host CPU and memory always, GPUs through NVML.

Rows have the shape of the results store's ``telemetry`` table, ``(t_s, source, name,
value, labels_json, worker_id)``, so a recorder appends them as they come. GPU series use
the names (and units) AIPerf gives the DCGM fields it records, so a burstbench run and an
AIPerf run can be read side by side:

==========================  =========================================  =========
name                        NVML source                                unit
==========================  =========================================  =========
``gpu_utilization``         ``nvmlDeviceGetUtilizationRates().gpu``    %
``gpu_memory_used``         ``nvmlDeviceGetMemoryInfo().used``         GB
``total_gpu_memory``        ``nvmlDeviceGetMemoryInfo().total``        GB
``gpu_power_usage``         ``nvmlDeviceGetPowerUsage`` (mW → W)       W
``energy_consumption``      ``nvmlDeviceGetTotalEnergyConsumption``    MJ
``gpu_temperature``         ``nvmlDeviceGetTemperature(GPU)``          °C
``sm_clock_frequency``      ``nvmlDeviceGetClockInfo(SM)``             MHz
``memory_clock_frequency``  ``nvmlDeviceGetClockInfo(MEM)``            MHz
==========================  =========================================  =========

(AIPerf's ``aiperf/gpu_telemetry/constants.py`` maps ``DCGM_FI_DEV_POWER_USAGE`` →
``gpu_power_usage``, ``DCGM_FI_DEV_GPU_UTIL`` → ``gpu_utilization``, ``DCGM_FI_DEV_FB_USED``
→ ``gpu_memory_used`` in GB, and so on.) Host series, source ``client``:
``cpu_utilization`` (% of all CPUs), ``cpu_utilization_per_core`` (labels ``{"cpu": i}``),
``memory_used`` and ``memory_total`` (GB, same unit as the GPU memory), ``load_average_1m``.

NVML is used only when ``nvidia-ml-py`` (module ``pynvml``) imports *and* a GPU answers;
otherwise ``GpuSampler.available`` is False with the reason in ``GpuSampler.reason``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

Row = tuple[float, str, str, float, str | None, int | None]
GB = 1e9


class HostSampler:
    """CPU utilisation (over the interval since the previous sample) and memory in use."""

    def __init__(self, *, per_core: bool = True) -> None:
        self.per_core = per_core
        psutil.cpu_percent(None, percpu=True)  # prime the interval counters

    def sample(self, t: float) -> list[Row]:
        cores = psutil.cpu_percent(None, percpu=True)
        rows: list[Row] = [
            (t, "client", "cpu_utilization", sum(cores) / max(1, len(cores)), None, None)
        ]
        if self.per_core:
            rows.extend(
                (t, "client", "cpu_utilization_per_core", float(v), json.dumps({"cpu": i}), None)
                for i, v in enumerate(cores)
            )
        vm = psutil.virtual_memory()
        rows.append((t, "client", "memory_used", (vm.total - vm.available) / GB, None, None))
        rows.append((t, "client", "memory_total", vm.total / GB, None, None))
        if hasattr(os, "getloadavg"):
            rows.append((t, "client", "load_average_1m", os.getloadavg()[0], None, None))
        return rows


class GpuSampler:
    """NVML readings per GPU; inert (``available`` False, ``reason`` set) without one."""

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[tuple[int, Any, str]] = []
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:  # pragma: no cover - needs an NVIDIA driver
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:  # pragma: no cover - NVMLError subclasses vary by driver
            self.reason = f"no NVIDIA GPU answered NVML ({exc})"
            return
        if count == 0:  # pragma: no cover
            self.reason = "NVML found no GPU"
            return
        for i in range(count):  # pragma: no cover
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            self._handles.append((i, h, name.decode() if isinstance(name, bytes) else str(name)))
        self._nvml = pynvml  # pragma: no cover
        self.available = True  # pragma: no cover

    def sample(self, t: float) -> list[Row]:
        if not self.available:
            return []
        return self._read(t)  # pragma: no cover

    def _read(self, t: float) -> list[Row]:  # pragma: no cover - needs an NVIDIA GPU
        nv = self._nvml
        rows: list[Row] = []
        for i, h, name in self._handles:
            labels = json.dumps({"gpu_index": i, "gpu_model": name})
            readings: list[tuple[str, Callable[[], float]]] = [
                ("gpu_utilization", lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("gpu_memory_used", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).used / GB),
                ("total_gpu_memory", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).total / GB),
                ("gpu_power_usage", lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ("energy_consumption", lambda h=h: nv.nvmlDeviceGetTotalEnergyConsumption(h) * 1e-9),
                ("gpu_temperature", lambda h=h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ("sm_clock_frequency", lambda h=h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                ("memory_clock_frequency", lambda h=h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ]
            for metric, read in readings:
                try:
                    rows.append((t, "gpu", metric, float(read()), labels, None))
                except Exception:  # a field this GPU or driver does not support
                    continue
        return rows

    def close(self) -> None:
        if self.available:  # pragma: no cover
            self._nvml.nvmlShutdown()
            self.available = False


class TelemetrySampler:
    """Host and GPU samples every ``interval_s`` on ``clock``; iterate or run in a thread.

    ``clock`` gives seconds from the run's start (the recorder's clock), so samples line
    up with request times.
    """

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        *,
        interval_s: float = 1.0,
        gpu: bool = True,
        per_core: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        start = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - start)
        self.interval_s = interval_s
        self.host = HostSampler(per_core=per_core)
        self.gpu = GpuSampler() if gpu else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def gpu_status(self) -> str:
        if self.gpu is None:
            return "GPU telemetry off"
        return "NVML" if self.gpu.available else self.gpu.reason

    def sample(self, t: float | None = None) -> list[Row]:
        """One batch of rows stamped ``t`` (default: now on ``clock``)."""
        t = self.clock() if t is None else t
        rows = self.host.sample(t)
        if self.gpu is not None:
            rows.extend(self.gpu.sample(t))
        return rows

    def iter_samples(self, count: int | None = None) -> Iterator[list[Row]]:
        """Yield one batch of rows per interval (``count`` batches, or until ``stop``)."""
        n = 0
        next_t = time.monotonic()
        while (count is None or n < count) and not self._stop.is_set():
            yield self.sample()
            n += 1
            next_t += self.interval_s
            if count is not None and n >= count:
                break
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self, emit: Callable[[list[Row]], None]) -> None:
        """Sample in a daemon thread, handing each batch to ``emit``, until ``stop``."""

        def loop() -> None:
            for rows in self.iter_samples():
                emit(rows)

        self._thread = threading.Thread(target=loop, name="burstbench-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1.0)
        if self.gpu is not None:
            self.gpu.close()
