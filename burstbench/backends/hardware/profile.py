"""Hardware profiles: the few numbers a roofline needs, with where each came from.

A profile is datasheet peaks (FLOP/s, memory bandwidth, memory size, interconnect) times
*efficiencies* that say how much of each peak real kernels reach: ``flops_efficiency`` is
a curve over the number of tokens in a GEMM (small GEMMs cannot fill the tensor cores;
tile and wave quantisation), ``bandwidth_efficiency`` the fraction of datasheet bandwidth
a streaming read (GEMV, KV-cache scan) reaches. ``step_overhead_s`` is the fixed cost of
one engine iteration outside the GPU's arithmetic (CPU scheduling, input preparation,
sampling, output processing) and ``layer_overhead_s`` the per-layer gap between kernels;
``seq_overhead_s`` is what each sequence in a step adds outside the arithmetic (its input
preparation, sampling, detokenisation and streamed chunk): 0 in the presets, where it hides
in the step overhead, but on a CPU engine serving a small model it is most of a step's
time growing with the batch, and no roofline term grows that way (issue 12).
``token_overhead_s`` is what each token in a step adds outside the GEMM and attention
rooflines: 0 in the presets, where a token's cost is its arithmetic, but a CPU engine
spends most of a small model's prefill outside it (vLLM's CPU build on a 4-layer,
256-wide Llama: 0.5 ms per prompt token where the profiled GEMMs need 0.03 ms), and a
FLOP/s scale cannot stand in for it: the profile's efficiency curve would then charge a
decode token ~9 times a prefill token's cost (its 1-token GEMM streams a 64 MB matrix).

The same JSON form holds the bundled presets (``burstbench/data/hardware``) and what
``burstbench profile`` measures on this machine, so ``--hardware`` accepts either.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from burstbench.errors import InputError, UsageError

FORMAT = "burstbench.hardware/1"


@dataclass(frozen=True)
class EfficiencyCurve:
    """A fraction of peak as a function of a size (tokens), piecewise linear in log(size).

    Points are ``(size, efficiency)``; outside them the end values hold. A single point is a
    constant. Evaluation is a bisect over a handful of points, and integer sizes up to
    ``_TABLE`` are served from a precomputed table because the cost model asks millions of
    times.
    """

    points: tuple[tuple[float, float], ...]
    _xs: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _table: tuple[float, ...] = field(init=False, repr=False, compare=False)

    _TABLE = 16384

    def __post_init__(self) -> None:
        pts = tuple(sorted((float(x), float(y)) for x, y in self.points))
        if not pts:
            raise ValueError("an efficiency curve needs at least one point")
        for x, y in pts:
            if not (x > 0 and math.isfinite(x)):
                raise ValueError(f"curve size must be positive, got {x}")
            if not (0 < y <= 1):
                raise ValueError(f"efficiency must be in (0, 1], got {y}")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "_xs", tuple(math.log(x) for x, _ in pts))
        sizes = np.log(np.maximum(np.arange(self._TABLE + 1, dtype=np.float64), 1.0))
        table = np.interp(sizes, self._xs, [y for _, y in pts])  # clamps like _interp
        object.__setattr__(self, "_table", tuple(table.tolist()))

    @classmethod
    def constant(cls, value: float) -> EfficiencyCurve:
        return cls(((1.0, float(value)),))

    def _interp(self, size: float) -> float:
        pts = self.points
        lx = math.log(size)
        i = bisect_right(self._xs, lx)
        if i == 0:
            return pts[0][1]
        if i >= len(pts):
            return pts[-1][1]
        x0, x1 = self._xs[i - 1], self._xs[i]
        y0, y1 = pts[i - 1][1], pts[i][1]
        return y0 + (y1 - y0) * (lx - x0) / (x1 - x0)

    def __call__(self, size: float) -> float:
        if size <= 0:
            return self.points[0][1]
        n = int(size)
        if n == size and n <= self._TABLE:
            return self._table[n]
        return self._interp(float(size))

    def to_json(self) -> list[list[float]] | float:
        if len(self.points) == 1:
            return self.points[0][1]
        return [[x, y] for x, y in self.points]


@dataclass(frozen=True)
class HardwareProfile:
    """One accelerator (or this CPU) as the cost model sees it; all units SI.

    ``peak_flops`` is dense bf16 FLOP/s (fp32 for a measured CPU); ``mem_bandwidth`` and
    ``link_bandwidth`` are bytes/s (link: one direction, as a ring all-reduce uses it);
    ``memory_bytes`` is device memory as the driver reports it. ``fp8_flops_multiplier``
    and ``int8_flops_multiplier`` scale the peak for fp8/int8 weight-and-activation GEMMs
    (1.0 where the hardware has no such tensor cores and runs them as weight-only).
    """

    name: str
    peak_flops: float
    mem_bandwidth: float
    memory_bytes: float
    link_bandwidth: float
    link_latency_s: float
    flops_efficiency: EfficiencyCurve
    bandwidth_efficiency: EfficiencyCurve
    step_overhead_s: float
    layer_overhead_s: float
    fp8_flops_multiplier: float = 2.0
    int8_flops_multiplier: float = 2.0
    seq_overhead_s: float = 0.0
    token_overhead_s: float = 0.0
    source: str = ""
    kind: str = "gpu"
    measured: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Accept a plain number or [[tokens, eta], ...] too (dataclasses.replace, tests).
        for key in ("flops_efficiency", "bandwidth_efficiency"):
            value = getattr(self, key)
            if not isinstance(value, EfficiencyCurve):
                if isinstance(value, int | float):
                    curve = EfficiencyCurve.constant(float(value))
                else:
                    curve = EfficiencyCurve(tuple((float(x), float(y)) for x, y in value))
                object.__setattr__(self, key, curve)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flops_efficiency"] = self.flops_efficiency.to_json()
        out["bandwidth_efficiency"] = self.bandwidth_efficiency.to_json()
        return {"format": FORMAT, **out}

    def write(self, path: str | Path) -> Path:
        from burstbench.outfile import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


_NUMBERS = {
    "peak_flops": (True, None),
    "mem_bandwidth": (True, None),
    "memory_bytes": (True, None),
    "link_bandwidth": (True, None),
    "link_latency_s": (False, 0.0),
    "step_overhead_s": (False, 0.0),
    "layer_overhead_s": (False, 0.0),
    "seq_overhead_s": (False, 0.0),
    "token_overhead_s": (False, 0.0),
    "fp8_flops_multiplier": (True, 2.0),
    "int8_flops_multiplier": (True, 2.0),
}


def _curve(value: Any, key: str, path: str) -> EfficiencyCurve:
    try:
        if isinstance(value, bool):
            raise ValueError("expected a number or a list of [tokens, efficiency] pairs")
        if isinstance(value, int | float):
            return EfficiencyCurve.constant(float(value))
        if isinstance(value, Sequence) and not isinstance(value, str):
            pts = []
            for item in value:
                if (
                    not isinstance(item, Sequence)
                    or isinstance(item, str)
                    or len(item) != 2
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)
                ):
                    raise ValueError(f"each point must be [tokens, efficiency], got {item!r}")
                pts.append((float(item[0]), float(item[1])))
            return EfficiencyCurve(tuple(pts))
        raise ValueError("expected a number or a list of [tokens, efficiency] pairs")
    except ValueError as exc:
        raise InputError(str(exc), path=path, field=key) from exc


def profile_from_dict(raw: dict[str, Any], *, path: str = "<profile>") -> HardwareProfile:
    """Validate a parsed profile JSON; errors name the file and the field."""
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object (a hardware profile)", path=path)
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise InputError(f"unsupported format {fmt!r}; expected {FORMAT!r}", path=path, field="format")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("missing or not a string", path=path, field="name")
    nums: dict[str, float] = {}
    for key, (positive, default) in _NUMBERS.items():
        value = raw.get(key, default)
        if value is None:
            raise InputError("missing; a hardware profile must give it", path=path, field=key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"must be a number, got {value!r}", path=path, field=key)
        if value < 0 or (positive and value == 0):
            kind = "positive" if positive else "non-negative"
            raise InputError(f"must be {kind}, got {value}", path=path, field=key)
        nums[key] = float(value)
    for key in ("flops_efficiency", "bandwidth_efficiency"):
        if key not in raw:
            raise InputError("missing; a hardware profile must give it", path=path, field=key)
    measured = raw.get("measured") or {}
    if not isinstance(measured, dict):
        raise InputError("must be an object", path=path, field="measured")
    return HardwareProfile(
        name=name,
        flops_efficiency=_curve(raw["flops_efficiency"], "flops_efficiency", path),
        bandwidth_efficiency=_curve(raw["bandwidth_efficiency"], "bandwidth_efficiency", path),
        source=str(raw.get("source", "")),
        kind=str(raw.get("kind", "gpu")),
        measured=measured,
        **nums,
    )


def _presets_dir() -> Path:
    return Path(str(resources.files("burstbench") / "data" / "hardware"))


def list_hardware() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in _presets_dir().glob("*.json"))


def load_hardware(name_or_path: str | Path) -> HardwareProfile:
    """A preset by name (``list_hardware``) or a JSON file written by ``burstbench profile``."""
    text = str(name_or_path)
    preset = _presets_dir() / f"{text.lower()}.json"
    path = Path(text).expanduser()
    if preset.is_file() and not path.is_file():
        path = preset
    elif not path.is_file():
        if path.suffix == ".json" or "/" in text:
            raise InputError("no such hardware profile file; run `burstbench profile -o FILE`", path=text)
        raise UsageError(
            f"unknown hardware '{text}'; use a profile JSON path or one of: "
            + ", ".join(list_hardware())
        )
    return profile_from_dict(read_json_file(path), path=str(path))


def read_json_file(path: Path) -> Any:
    """A JSON file's value; bad text or JSON is an InputError naming the file and line."""
    from burstbench.infile import loads_json, read_text

    return loads_json(read_text(path, expected="a hardware profile JSON"), path=path)
