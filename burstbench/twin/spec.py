"""``twin.yaml``: a calibrated engine configuration, and how to build its cost model.

A twin is the reference engine's model on a *base* hardware profile plus the fitted
corrections (``overrides``): scales on the preset's efficiency curves and the absolute
per-step / per-layer / per-sequence overheads. Efficiency *scales* (not absolute values) are what a
what-if carries to other hardware: "this deployment reaches 80% of what the preset
assumes" transfers from an A100 to an H200 better than an absolute 0.6 would, and the
overheads are CPU- and software-side, so they transfer as they are.

Every field is validated on load; a mistake raises ``SpecError`` naming the file and
the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burstbench.backends.reference.jitter import check_table
from burstbench.errors import SpecError, UsageError
from burstbench.twin.vsim import Sched

FORMAT = "burstbench.twin/1"
OVERRIDE_KEYS = ("bandwidth_efficiency_scale", "flops_efficiency_scale", "step_overhead_s", "layer_overhead_s",
                 "seq_overhead_s", "token_overhead_s", "frontend_latency_s")
SCHED_KEYS = {f.name for f in dataclasses.fields(Sched)}


@dataclass
class TwinSpec:
    """What ``calibrate`` writes and ``whatif`` reads (see module doc)."""

    model: str
    hardware: str
    tp: int = 1
    replicas: int = 1
    overrides: dict[str, float] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)

    @property
    def frontend_s(self) -> float:
        """Fixed client-visible time outside the engine (HTTP, API server); 0 when not fitted."""
        return float(self.overrides.get("frontend_latency_s", 0.0))

    def sched(self, **changes: Any) -> Sched:
        vals = {**self.scheduler, **{k: v for k, v in changes.items() if v is not None}}
        return Sched(**vals)

    def draws(self, n: int, seed: int = 0) -> list[TwinSpec]:
        """``n`` twins with coefficients drawn from the calibration's uncertainty.

        The three engine scales come from the fitted covariance (log space, so they stay
        positive and keep their correlation: a faster bandwidth with a larger overhead);
        the frontend latency from its own interval, cut at 0. What ``whatif --band``
        runs to say how much an answer depends on what one run could tell."""
        import numpy as np

        covariance = self.provenance.get("covariance") or {}
        cov = covariance.get("log_cov")
        fe = self.uncertainty.get("frontend_latency_s") or {}
        if cov is None:
            raise UsageError("this twin carries no covariance of its coefficients; write it with "
                             "'burstbench calibrate' to use --band")
        rng = np.random.default_rng(seed)
        cov = np.asarray(cov, dtype=float)  # 3 scales, then the per-sequence and per-token costs (newer twins)
        z = rng.multivariate_normal(np.zeros(len(cov)), cov, size=n, method="eigh")
        e = rng.standard_normal(n) * float(fe.get("std") or 0.0)
        out = []
        for k in range(n):
            f = np.exp(z[k])
            ov = dict(self.overrides)
            for key, scale in (("bandwidth_efficiency_scale", f[0]), ("flops_efficiency_scale", f[1]),
                               ("step_overhead_s", f[2]), ("layer_overhead_s", f[2])):
                if key in ov:
                    ov[key] = float(ov[key] * scale)
            # the additive terms are linear, in their units (older twins: no per-token term)
            for i, key, unit in ((3, "seq_overhead_s", "seq_unit_s"), (4, "token_overhead_s", "token_unit_s")):
                if len(z[k]) > i and key in ov and unit in covariance:
                    ov[key] = max(ov[key] + float(z[k][i]) * float(covariance[unit]), 0.0)
            ov["frontend_latency_s"] = max(self.frontend_s + float(e[k]), 0.0)
            out.append(dataclasses.replace(self, overrides=ov))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def write(self, path: str | Path) -> Path:
        import yaml

        from burstbench.outfile import write_text_atomic

        return write_text_atomic(path, yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))


def _plain(x: Any) -> Any:
    """numpy scalars and tuples to plain YAML types."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str):
        return x.item()
    return x


def apply_overrides(hw: Any, overrides: dict[str, float]) -> Any:
    """``hw`` with the twin's corrections: efficiency curves scaled (capped at 1), overheads set."""
    changes: dict[str, Any] = {}
    for key, curve_name in (("bandwidth_efficiency_scale", "bandwidth_efficiency"),
                            ("flops_efficiency_scale", "flops_efficiency")):
        if key in overrides:
            s = float(overrides[key])
            curve = getattr(hw, curve_name)
            changes[curve_name] = [[x, min(1.0, y * s)] for x, y in curve.points]
    for key in ("step_overhead_s", "layer_overhead_s", "seq_overhead_s", "token_overhead_s"):
        if key in overrides:
            changes[key] = float(overrides[key])
    if not changes:
        return hw
    return dataclasses.replace(hw, name=f"{hw.name}+twin", **changes)


def build_cost(model: Any, hardware: Any, tp: int, overrides: dict[str, float]) -> Any:
    """The cost model of ``model`` on ``hardware`` (names or objects) with the overrides."""
    from burstbench.backends.hardware.profile import HardwareProfile, load_hardware
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import ModelConfig, load_model

    m = model if isinstance(model, ModelConfig) else load_model(model)
    hw = hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)
    return CostModel(m, apply_overrides(hw, overrides), tp=tp)


def load_twin(path: str | Path) -> TwinSpec:
    """Read and validate a twin file; errors name the file and the field."""

    p = Path(path)
    if not p.is_file():
        raise SpecError("no such twin file; write one with `burstbench calibrate ... -o twin.yaml`", path=p)
    from burstbench.infile import load_yaml, read_text

    raw = load_yaml(read_text(p, expected="a twin.yaml from calibrate", error=SpecError), path=p, error=SpecError)
    if not isinstance(raw, dict):
        raise SpecError("a twin file must be a mapping (model:, hardware:, overrides:, ...)", path=p)
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise SpecError(f"unsupported format {fmt!r}; expected {FORMAT!r}", path=p, field="format")
    known = {"format", *(f.name for f in dataclasses.fields(TwinSpec))}
    for key in raw:
        if key not in known:
            raise SpecError(f"unknown field; known fields: {', '.join(sorted(known))}", path=p, field=str(key))
    for key in ("model", "hardware"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SpecError("missing or not a name (a preset name or a file path)", path=p, field=key)
    for key in ("tp", "replicas"):
        v = raw.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"must be a positive integer, got {v!r}", path=p, field=key)
    ov = raw.get("overrides") or {}
    if not isinstance(ov, dict):
        raise SpecError("must be a mapping of name: number", path=p, field="overrides")
    for key, v in ov.items():
        if key not in OVERRIDE_KEYS:
            raise SpecError(f"unknown override; use {', '.join(OVERRIDE_KEYS)}", path=p, field=f"overrides.{key}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or (
            key.endswith("_scale") and v == 0
        ):
            raise SpecError(f"must be a {'positive' if key.endswith('_scale') else 'non-negative'} number, got {v!r}",
                            path=p, field=f"overrides.{key}")
    sc = raw.get("scheduler") or {}
    if not isinstance(sc, dict):
        raise SpecError("must be a mapping", path=p, field="scheduler")
    for key, v in sc.items():
        if key not in SCHED_KEYS:
            raise SpecError(f"unknown scheduler setting; use {', '.join(sorted(SCHED_KEYS))}", path=p,
                            field=f"scheduler.{key}")
        if key == "router":
            if v not in ("round_robin", "least_outstanding"):
                raise SpecError(f"must be round_robin or least_outstanding, got {v!r}", path=p, field="scheduler.router")
        elif key == "gpu_memory_utilization":
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                raise SpecError(f"must be in (0, 1], got {v!r}", path=p, field=f"scheduler.{key}")
        elif key == "max_waiting" and v is None:
            continue
        elif key == "step_jitter":
            try:
                check_table(v if isinstance(v, list | tuple) else [v])
            except UsageError as exc:
                raise SpecError(str(exc), path=p, field="scheduler.step_jitter") from None
        elif key == "jitter_seed":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"must be a non-negative integer, got {v!r}", path=p, field="scheduler.jitter_seed")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"must be a positive integer, got {v!r}", path=p, field=f"scheduler.{key}")
    for key in ("uncertainty", "provenance", "errors"):
        if not isinstance(raw.get(key) or {}, dict):
            raise SpecError("must be a mapping", path=p, field=key)
    spec = TwinSpec(
        model=raw["model"], hardware=raw["hardware"], tp=raw.get("tp", 1), replicas=raw.get("replicas", 1),
        overrides={k: float(v) for k, v in ov.items()}, scheduler=dict(sc),
        uncertainty=raw.get("uncertainty") or {}, provenance=raw.get("provenance") or {},
        errors=raw.get("errors") or {},
    )
    # the names must resolve now, not halfway through a what-if
    from burstbench.backends.hardware.profile import load_hardware
    from burstbench.backends.reference.models import load_model
    from burstbench.errors import BurstbenchError

    for key, loader in (("model", load_model), ("hardware", load_hardware)):
        try:
            loader(raw[key])
        except BurstbenchError as exc:
            raise SpecError(str(exc), path=p, field=key) from exc
    try:
        build_cost(spec.model, spec.hardware, spec.tp, spec.overrides)
    except BurstbenchError as exc:
        raise SpecError(str(exc), path=p, field="tp") from exc
    return spec
