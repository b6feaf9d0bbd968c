"""A deployment the twin can run: colocated fleets (one or more instance types) or DistServe.

``Deployment`` names what a what-if or a plan changes: which hardware, how much tensor
parallelism, how many instances, which scheduler limits, colocated or disaggregated
prefill/decode. ``run(work)`` gives per-request latencies in virtual time; ``gpus``
counts devices, for goodput per GPU (DistServe's figure of merit) and for prices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from burstbench.backends.reference.router import Router
from burstbench.errors import UsageError
from burstbench.limits import MAX_REPLICAS
from burstbench.twin.spec import TwinSpec, build_cost
from burstbench.twin.vsim import (
    Latencies,
    Sched,
    Workload,
    disaggregated,
    kv_blocks,
    make_engine,
    run_pool,
)

LAYOUTS = ("colocated", "disagg")


@dataclass(frozen=True)
class Group:
    """``count`` instances of ``hardware`` with tensor parallelism ``tp``."""

    hardware: str
    tp: int
    count: int

    @property
    def gpus(self) -> int:
        return self.tp * self.count


@dataclass
class Deployment:
    """What runs the trace (see module doc). For ``disagg``, ``groups`` = [prefill, decode]."""

    model: str
    groups: list[Group]
    sched: Sched = field(default_factory=Sched)
    overrides: dict[str, float] = field(default_factory=dict)
    layout: str = "colocated"
    link_bandwidth: float | None = None  # KV transfer, bytes/s (disagg); default: the hardware's link

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{self.layout}'")
        if not self.groups or any(g.count < 1 or g.tp < 1 for g in self.groups):
            raise UsageError("every instance group needs count >= 1 and tp >= 1")
        instances = sum(g.count for g in self.groups)
        if instances > MAX_REPLICAS:  # before any engine is built: each one holds a KV cache model
            raise UsageError(f"{instances:,} instances (--replicas, --prefill, --decode) is over the limit "
                             f"of {MAX_REPLICAS:,} per deployment")
        if self.layout == "disagg" and len(self.groups) != 2:
            raise UsageError("a disaggregated deployment has exactly a prefill and a decode pool")
        self._costs = [build_cost(self.model, g.hardware, g.tp, _engine_overrides(self.overrides)) for g in self.groups]

    @classmethod
    def from_twin(cls, twin: TwinSpec, **changes: Any) -> Deployment:
        """The twin's own deployment, with what-if ``changes`` (None means unchanged)."""
        c = {k: v for k, v in changes.items() if v is not None}
        sched = twin.sched(**{k: c.pop(k) for k in list(c) if k in Sched.__dataclass_fields__})
        hw = c.pop("hardware", twin.hardware)
        tp = c.pop("tp", twin.tp)
        layout = c.pop("layout", "colocated")
        if layout == "disagg":
            groups = [Group(hw, tp, c.pop("prefill", 1)), Group(c.pop("decode_hardware", None) or hw, tp, c.pop("decode", 1))]
        else:
            groups = [Group(hw, tp, c.pop("replicas", twin.replicas))]
        link = c.pop("link_bandwidth", None)
        for k in ("prefill", "decode", "replicas", "decode_hardware"):
            c.pop(k, None)
        if c:
            raise UsageError(f"unknown what-if change(s): {', '.join(sorted(c))}")
        return cls(twin.model, groups, sched, dict(twin.overrides), layout, link)

    @property
    def gpus(self) -> int:
        return sum(g.gpus for g in self.groups)

    @property
    def frontend_s(self) -> float:
        return float(self.overrides.get("frontend_latency_s", 0.0))

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model, "layout": self.layout, "gpus": self.gpus,
                             "max_num_seqs": self.sched.max_num_seqs,
                             "max_num_batched_tokens": self.sched.max_num_batched_tokens}
        if self.layout == "disagg":
            p, dd = self.groups
            d.update(prefill={"hardware": p.hardware, "tp": p.tp, "instances": p.count},
                     decode={"hardware": dd.hardware, "tp": dd.tp, "instances": dd.count},
                     kv_link_bytes_per_s=self.link_bandwidth or self._costs[1].hardware.link_bandwidth)
        else:
            d["instances"] = [{"hardware": g.hardware, "tp": g.tp, "count": g.count} for g in self.groups]
        return d

    def name(self) -> str:
        if self.layout == "disagg":
            p, d = self.groups
            return f"disagg {p.count}P+{d.count}D x {p.hardware} tp{p.tp}"
        return " + ".join(f"{g.count}x {g.hardware} tp{g.tp}" for g in self.groups)

    def run(self, work: Workload) -> Latencies:
        if self.layout == "disagg":
            p, d = self.groups
            return disaggregated(work, self._costs[0], self._costs[1], self.sched, p.count, d.count,
                                 link_bandwidth=self.link_bandwidth, frontend_s=self.frontend_s)
        engines = []
        for g, cost in zip(self.groups, self._costs, strict=True):
            nb = kv_blocks(cost, self.sched)
            engines += [make_engine(cost, nb, self.sched, max_context=cost.model.max_context, instance=len(engines) + k)
                        for k in range(g.count)]
        # a mixed fleet needs a load-aware router: round robin would overload the slower type
        kind = self.sched.router if len(self.groups) == 1 else "least_outstanding"
        _, first, last, code = run_pool(engines, Router(kind, len(engines)), work.arrival, work.input_tokens,
                                     work.output_tokens)
        f = self.frontend_s
        return Latencies(first - work.arrival + f, last - work.arrival + f, work.output_tokens, code == 0,
                         ["ok" if c == 0 else "error" for c in code])


def _engine_overrides(ov: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in ov.items() if k != "frontend_latency_s"}


def fits(model: str, hardware: str, tp: int, overrides: dict[str, float] | None = None, sched: Sched | None = None) -> str | None:
    """Why ``model`` cannot run on ``hardware`` with ``tp`` (None when it can)."""
    from burstbench.errors import EngineError

    try:
        cost = build_cost(model, hardware, tp, _engine_overrides(overrides or {}))
        kv_blocks(cost, sched or Sched())
    except EngineError as exc:
        return str(exc)
    return None


