"""Measure this machine: GEMM throughput across token counts and memory bandwidth.

The measured profile has the same form as the datasheet presets, so the reference engine
can "run a model" on the machine at hand. What is measured, and why:

- **GEMM** ``(tokens × k) @ (k × n)`` for token counts from 1 to about a thousand: the
  throughput at each count over the best one is the η_F(tokens) curve (small GEMMs are
  bandwidth- or overhead-bound; large ones approach the compute peak, which is the best
  throughput seen). numpy float32 on the CPU; bf16 with torch on a GPU when one is present.
- **Bandwidth**: copy (read + write), STREAM triad (``a = b + s·c``: 2 reads, 1 write) and a
  GEMV-like read (a matrix far larger than the caches times a vector, which is what a
  decode step does to the weights). The best of copy/triad is the peak ``mem_bandwidth``;
  GEMV's share of it is η_B.

Each kernel repeats until its time slice is spent (at least once), so the whole run is
bounded: about 20 s by default, about 2 s with ``quick``. The per-step and per-layer
overheads are not measurable without an engine, so the profile keeps the preset family's
documented values (``presets.py``) and says so in ``source``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from burstbench.backends.hardware import presets
from burstbench.backends.hardware.profile import EfficiencyCurve, HardwareProfile

Progress = Callable[[str, float], None]
"""``progress(task description, fraction done 0..1)``."""


@dataclass(frozen=True)
class Plan:
    """Sizes and time slices of one profiling run.

    The GEMM weight matrix (k × n float32: 64 MB, 48 MB quick) is larger than the last-level
    cache of common CPUs, so small token counts stream it from memory as a decode step
    streams a model's weights; a cache-resident matrix would flatter them.
    """

    gemm_k: int
    gemm_n: int
    tokens: tuple[int, ...]
    stream_bytes: int
    gemv_bytes: int
    slice_s: float

    @classmethod
    def default(cls) -> Plan:
        return cls(4096, 4096, (1, 4, 16, 64, 256, 1024), 192 * 2**20, 192 * 2**20, 1.0)

    @classmethod
    def quick(cls) -> Plan:
        return cls(4096, 3072, (1, 16, 256), 48 * 2**20, 48 * 2**20, 0.08)


def _time_best(fn: Callable[[], Any], slice_s: float, *, max_reps: int = 10_000) -> float:
    """Best wall time of ``fn`` over repetitions filling ``slice_s`` (at least two runs:
    the first warms caches and page tables)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + slice_s
    reps = 0
    while reps < max_reps:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        reps += 1
        if time.perf_counter() >= deadline:
            break
    return best


def measure_gemm(plan: Plan, progress: Progress | None = None) -> dict[int, float]:
    """FLOP/s of float32 GEMMs per token count (numpy, whatever BLAS it links)."""
    # Constant operands: the timing of a dense GEMM does not depend on the values (and
    # filling 50 MB with random numbers would cost more than the quick plan's GEMMs).
    w = np.full((plan.gemm_k, plan.gemm_n), 0.5, dtype=np.float32)
    out: dict[int, float] = {}
    for i, m in enumerate(plan.tokens):
        x = np.full((m, plan.gemm_k), 0.25, dtype=np.float32)
        y = np.empty((m, plan.gemm_n), dtype=np.float32)
        t = _time_best(lambda x=x, y=y: np.matmul(x, w, out=y), plan.slice_s)
        out[m] = 2.0 * m * plan.gemm_k * plan.gemm_n / t
        if progress:
            progress(f"GEMM {m}×{plan.gemm_k}×{plan.gemm_n}", (i + 1) / len(plan.tokens))
    return out


def measure_bandwidth(plan: Plan, progress: Progress | None = None) -> dict[str, float]:
    """Bytes/s of copy, triad and a GEMV-like read, with arrays far beyond the caches."""
    n = plan.stream_bytes // 4
    a = np.zeros(n, dtype=np.float32)
    b = np.ones(n, dtype=np.float32)
    c = np.full(n, 2.0, dtype=np.float32)
    res: dict[str, float] = {}
    t = _time_best(lambda: np.copyto(a, b), plan.slice_s)
    res["copy"] = 2.0 * n * 4 / t
    if progress:
        progress("bandwidth: copy", 1 / 3)

    def triad() -> None:
        np.multiply(c, 3.0, out=a)
        np.add(a, b, out=a)

    t = _time_best(triad, plan.slice_s)
    # two passes: (read c, write a) + (read a, read b, write a) = 5 array transfers
    res["triad"] = 5.0 * n * 4 / t
    if progress:
        progress("bandwidth: triad", 2 / 3)
    cols = 4096
    rows = max(1, plan.gemv_bytes // (4 * cols))
    mat = np.ones((rows, cols), dtype=np.float32)
    vec = np.ones(cols, dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    t = _time_best(lambda: np.matmul(mat, vec, out=y), plan.slice_s)
    res["gemv"] = rows * cols * 4.0 / t
    if progress:
        progress("bandwidth: GEMV read", 1.0)
    return res


def _torch_gpu(plan: Plan, progress: Progress | None) -> dict[str, Any] | None:
    """Measure the first CUDA GPU with torch (bf16 GEMM, device copy), or None if absent."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return _measure_torch_gpu(torch, plan, progress)


def _measure_torch_gpu(torch: Any, plan: Plan, progress: Progress | None) -> dict[str, Any]:  # pragma: no cover - needs a CUDA GPU
    """bf16 GEMM throughput per token count and device-to-device copy bandwidth."""
    dev = torch.device("cuda:0")
    props = torch.cuda.get_device_properties(dev)
    k = n = 8192
    w = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
    flops: dict[int, float] = {}
    for i, m in enumerate((1, 16, 64, 256, 1024, 4096, 8192)):
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)

        def run(x=x) -> None:
            x @ w
            torch.cuda.synchronize()

        flops[m] = 2.0 * m * k * n / _time_best(run, plan.slice_s)
        if progress:
            progress(f"GPU GEMM {m}×{k}×{n}", (i + 1) / 7)
    buf_a = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    buf_b = torch.empty_like(buf_a)

    def copy() -> None:
        buf_b.copy_(buf_a)
        torch.cuda.synchronize()

    bw = 2.0 * buf_a.numel() / _time_best(copy, plan.slice_s)
    return {
        "name": props.name,
        "memory_bytes": float(props.total_memory),
        "gemm_flops": flops,
        "copy_bandwidth": bw,
    }


def efficiency_curve(flops: dict[int, float]) -> EfficiencyCurve:
    """η_F(tokens) from measured FLOP/s per token count: each over the best, made
    non-decreasing in tokens (a larger GEMM can always be run as the smaller one's tiles,
    so a dip is measurement noise from a shared machine; the raw figures stay in
    ``measured``)."""
    peak = max(flops.values())
    points = []
    best = 0.0
    for m, f in sorted(flops.items()):
        best = max(best, f / peak, 1e-6)
        points.append((float(m), best))
    return EfficiencyCurve(tuple(points))


def profile_machine(
    *, quick: bool = False, name: str | None = None, progress: Progress | None = None
) -> HardwareProfile:
    """Measure this machine (its GPU through torch when there is one) into a profile."""
    plan = Plan.quick() if quick else Plan.default()
    family = (
        f"overheads: preset family values (step {presets.STEP_OVERHEAD_S * 1e3:g} ms, layer "
        f"{presets.LAYER_OVERHEAD_S * 1e6:g} us), not measured"
    )
    gpu = _torch_gpu(plan, progress)
    if gpu is not None:  # pragma: no cover - no GPU on the build machine
        flops = gpu["gemm_flops"]
        copy_bw = gpu["copy_bandwidth"]
        # A 1-token bf16 GEMM streams its 2·k·n weight bytes doing 2·k·n FLOPs: its FLOP/s
        # *is* the weight-streaming bandwidth, as in a decode step.
        gemv_bw = flops[1]
        return HardwareProfile(
            name=name or gpu["name"].lower().replace(" ", "-"),
            peak_flops=max(flops.values()),
            mem_bandwidth=max(copy_bw, gemv_bw),
            memory_bytes=gpu["memory_bytes"],
            link_bandwidth=32e9 * presets.LINK_EFFICIENCY,
            link_latency_s=20e-6,
            flops_efficiency=efficiency_curve(flops),
            bandwidth_efficiency=EfficiencyCurve.constant(gemv_bw / max(copy_bw, gemv_bw)),
            step_overhead_s=presets.STEP_OVERHEAD_S,
            layer_overhead_s=presets.LAYER_OVERHEAD_S,
            source=f"measured by burstbench profile with torch on {gpu['name']}: bf16 GEMM "
            "peak = best measured, mem_bandwidth = device copy, eta_B = 1-token GEMM "
            "(weight streaming) / copy; link not measured (PCIe Gen4 assumed: use a preset's "
            f"link figures for NVLink); {family}",
            kind="gpu",
            measured={
                "gemm_flops": {str(k): v for k, v in flops.items()},
                "bandwidth": {"copy": copy_bw, "gemv": gemv_bw},
            },
        )

    flops = measure_gemm(plan, progress)
    bw = measure_bandwidth(plan, progress)
    peak = max(flops.values())
    peak_bw = max(bw.values())
    eta_b = bw["gemv"] / peak_bw
    curve = efficiency_curve(flops)
    mem = psutil.virtual_memory().total
    cpus = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cpu_name = platform.processor() or platform.machine()
    return HardwareProfile(
        name=name or f"cpu-{platform.machine().lower()}-{cpus}t",
        peak_flops=peak,
        mem_bandwidth=peak_bw,
        memory_bytes=float(mem),
        # No device link on a CPU: tensor parallelism would go through shared memory.
        link_bandwidth=bw["copy"],
        link_latency_s=5e-6,
        flops_efficiency=curve,
        bandwidth_efficiency=EfficiencyCurve.constant(eta_b),
        step_overhead_s=presets.STEP_OVERHEAD_S,
        layer_overhead_s=presets.LAYER_OVERHEAD_S,
        fp8_flops_multiplier=1.0,
        int8_flops_multiplier=1.0,
        source=(
            f"measured by burstbench profile ({'quick' if quick else 'default'} plan) on "
            f"{cpu_name}, {cpus} logical CPUs: numpy float32 GEMM (peak = best of "
            f"{len(plan.tokens)} token counts at k=n={plan.gemm_k}), copy/triad/GEMV-read "
            f"bandwidth (peak = best of the three; BLAS GEMV is multithreaded, numpy copy is "
            f"not), eta_B = GEMV read / peak; {family}; no GPU found (torch "
            "not importable or no CUDA device)"
        ),
        kind="cpu",
        measured={
            "gemm_flops": {str(k): v for k, v in flops.items()},
            "bandwidth": bw,
            "cpu_count_logical": cpus,
            "cpu_count_physical": psutil.cpu_count(logical=False),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "plan": {"k": plan.gemm_k, "n": plan.gemm_n, "slice_s": plan.slice_s},
        },
    )
