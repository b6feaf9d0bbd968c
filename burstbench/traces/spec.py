"""WorkloadSpec: the YAML description of a workload that ``trace fit`` writes and ``trace synth`` reads.

A spec is plain data (dataclasses of numbers, strings, lists) so it round-trips through
YAML unchanged: ``WorkloadSpec.from_dict(spec.to_dict()) == spec``. Validation happens in
``from_dict`` and names the field path (``arrivals.windows[2].params.rate``) and what to
do, because a user edits these files by hand.

Layout (every section but ``arrivals`` and ``lengths`` is optional)::

    version: 1
    arrivals:                       # the request (or session-start) arrival process
      process: gamma                # see ARRIVAL_PARAMS for every process and its parameters
      params: {rate: 2.0, burstiness: 0.5}
      windows:                      # only for process: piecewise
        - {start_s: 0, end_s: 600, process: poisson, params: {rate: 1}, fill: false}
    lengths:
      input:  {family: lognormal, params: {s: 1.0, scale: 300}}
      output: {family: empirical, params: {probs: [...], quantiles: [...]}}
      joint:  {method: gaussian-copula, rho: 0.4}   # or {method: independent}
    context_limit: 8192             # input + output never exceed it
    sessions:                       # multi-turn: each arrival starts a session
      turns: {family: geometric, params: {p: 0.4}}
      think_time_s: {family: lognormal, params: {s: 1.0, scale: 20}}
    prefix:                         # shared prefixes (system prompts, documents)
      groups: 8
      tokens: {family: constant, params: {value: 2048}}
      share: 0.9
    block_size: 16                  # tokens per prefix-hash block
    reasoning:                      # share of each output that is reasoning
      share: {family: beta, params: {a: 7.4, b: 2.6}}
    tenants: {chat: 0.7, api: 0.3}
    models: {llama-3-8b: 1.0}
    duration_s: 600                 # default length of a synthesised trace
    requests: null
    provenance: {...}               # free-form: source trace, fit method, scores, preset
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burstbench.errors import SpecError

SPEC_VERSION = 1

# process -> (required params, optional params). Gamma takes vLLM's (rate, burstiness)
# or SciPy's (shape, scale); renewal families otherwise use SciPy's names.
ARRIVAL_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": (("rate",), ()),
    "poisson": (("rate",), ()),
    "exponential": (("scale",), ()),
    "gamma": ((), ("rate", "burstiness", "shape", "scale")),
    "weibull": (("shape", "scale"), ()),
    "lognormal": (("s", "scale"), ()),
    "mmpp": (("rate_on", "rate_off", "mean_on_s", "mean_off_s"), ()),
    "diurnal": (("mean_rate",), ("amplitude", "period_s", "peak_s")),
    "ramp": (("start_rate", "end_rate", "ramp_s"), ("shape",)),
    "piecewise": ((), ()),
}
WINDOW_PROCESSES = ("constant", "poisson", "exponential", "gamma", "weibull", "lognormal")

# family -> required params (SciPy names; ``shape`` is gamma's ``a`` / weibull_min's ``c``).
DIST_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("scale",),
    "lognormal": ("s", "scale"),
    "gamma": ("shape", "scale"),
    "weibull": ("shape", "scale"),
    "zipf": ("a", "max"),
    "geometric": ("p",),
    "beta": ("a", "b"),
    "empirical": ("probs", "quantiles"),
}
JOINT_METHODS = ("independent", "gaussian-copula")


@dataclass
class Dist:
    """A named distribution with SciPy-named parameters (or empirical quantiles)."""

    family: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params)}


@dataclass
class WindowSpec:
    """One window of a piecewise process; ``fill`` rescales its arrivals to span it exactly."""

    start_s: float
    end_s: float
    process: str
    params: dict[str, Any]
    fill: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "process": self.process,
            "params": dict(self.params),
            "fill": self.fill,
        }


@dataclass
class ArrivalSpec:
    process: str
    params: dict[str, Any]
    windows: list[WindowSpec] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"process": self.process, "params": dict(self.params)}
        if self.windows is not None:
            out["windows"] = [w.to_dict() for w in self.windows]
        return out


@dataclass
class JointSpec:
    method: str = "independent"
    rho: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "rho": self.rho}


@dataclass
class LengthSpec:
    input: Dist
    output: Dist
    joint: JointSpec = field(default_factory=JointSpec)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input.to_dict(), "output": self.output.to_dict(), "joint": self.joint.to_dict()}


@dataclass
class SessionSpec:
    turns: Dist
    think_time_s: Dist

    def to_dict(self) -> dict[str, Any]:
        return {"turns": self.turns.to_dict(), "think_time_s": self.think_time_s.to_dict()}


@dataclass
class PrefixSpec:
    groups: int
    tokens: Dist
    share: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "tokens": self.tokens.to_dict(), "share": self.share}


@dataclass
class ReasoningSpec:
    share: Dist

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share.to_dict()}


@dataclass
class WorkloadSpec:
    """A workload: arrivals, lengths, and optional sessions, prefixes, reasoning, mixes."""

    arrivals: ArrivalSpec
    lengths: LengthSpec
    context_limit: int | None = None
    sessions: SessionSpec | None = None
    prefix: PrefixSpec | None = None
    block_size: int = 16
    reasoning: ReasoningSpec | None = None
    tenants: dict[str, float] | None = None
    models: dict[str, float] | None = None
    duration_s: float | None = None
    requests: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ dict / YAML

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "arrivals": self.arrivals.to_dict(),
            "lengths": self.lengths.to_dict(),
            "context_limit": self.context_limit,
            "sessions": self.sessions.to_dict() if self.sessions else None,
            "prefix": self.prefix.to_dict() if self.prefix else None,
            "block_size": self.block_size,
            "reasoning": self.reasoning.to_dict() if self.reasoning else None,
            "tenants": dict(self.tenants) if self.tenants else None,
            "models": dict(self.models) if self.models else None,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "provenance": self.provenance,
        }

    def to_yaml_text(self) -> str:
        import yaml

        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False, default_flow_style=None, width=100)

    def to_yaml(self, path: str | Path) -> Path:
        from burstbench.outfile import write_text_atomic

        return write_text_atomic(path, self.to_yaml_text())

    @classmethod
    def from_yaml_text(cls, text: str, *, path: str | Path | None = None) -> WorkloadSpec:
        from burstbench.infile import load_yaml

        return cls.from_dict(load_yaml(text, path=path, error=SpecError), path=path)

    @classmethod
    def from_yaml(cls, path: str | Path) -> WorkloadSpec:
        path = Path(path)
        if not path.exists():
            raise SpecError("no such spec file; write one with `burstbench trace fit T -o spec.yaml`", path=path)
        from burstbench.infile import read_text

        text = read_text(path, expected="a WorkloadSpec YAML", error=SpecError)
        if not text.strip():
            raise SpecError("spec file is empty; it needs at least 'arrivals' and 'lengths'", path=path)
        return cls.from_yaml_text(text, path=path)

    @classmethod
    def from_dict(cls, data: Any, *, path: str | Path | None = None) -> WorkloadSpec:
        v = _Validator(path)
        d = v.mapping(data, "")
        known = {
            "version", "arrivals", "lengths", "context_limit", "sessions", "prefix", "block_size",
            "reasoning", "tenants", "models", "duration_s", "requests", "provenance",
        }  # fmt: skip
        v.no_unknown(d, known, "")
        version = d.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            v.fail("version", f"unsupported version {version!r}; this burstbench reads version {SPEC_VERSION}")
        arrivals = v.arrivals(v.required(d, "arrivals", ""), "arrivals")
        lengths_d = v.mapping(v.required(d, "lengths", ""), "lengths")
        v.no_unknown(lengths_d, {"input", "output", "joint"}, "lengths")
        joint_d = lengths_d.get("joint") or {"method": "independent"}
        joint_d = v.mapping(joint_d, "lengths.joint")
        v.no_unknown(joint_d, {"method", "rho"}, "lengths.joint")
        method = joint_d.get("method", "independent")
        if method not in JOINT_METHODS:
            v.fail("lengths.joint.method", f"unknown method {method!r}; use one of {', '.join(JOINT_METHODS)}")
        rho = joint_d.get("rho")
        if method == "gaussian-copula":
            rho = v.number(rho, "lengths.joint.rho", lo=-1, hi=1)
        lengths = LengthSpec(
            input=v.dist(v.required(lengths_d, "input", "lengths"), "lengths.input"),
            output=v.dist(v.required(lengths_d, "output", "lengths"), "lengths.output"),
            joint=JointSpec(method, rho),
        )
        sessions = None
        if d.get("sessions") is not None:
            s = v.mapping(d["sessions"], "sessions")
            v.no_unknown(s, {"turns", "think_time_s"}, "sessions")
            sessions = SessionSpec(
                turns=v.dist(v.required(s, "turns", "sessions"), "sessions.turns"),
                think_time_s=v.dist(v.required(s, "think_time_s", "sessions"), "sessions.think_time_s"),
            )
        prefix = None
        if d.get("prefix") is not None:
            p = v.mapping(d["prefix"], "prefix")
            v.no_unknown(p, {"groups", "tokens", "share"}, "prefix")
            prefix = PrefixSpec(
                groups=v.integer(v.required(p, "groups", "prefix"), "prefix.groups", lo=1),
                tokens=v.dist(v.required(p, "tokens", "prefix"), "prefix.tokens"),
                share=v.number(p.get("share", 1.0), "prefix.share", lo=0, hi=1),
            )
        reasoning = None
        if d.get("reasoning") is not None:
            r = v.mapping(d["reasoning"], "reasoning")
            v.no_unknown(r, {"share"}, "reasoning")
            reasoning = ReasoningSpec(v.dist(v.required(r, "share", "reasoning"), "reasoning.share"))
        ctx = d.get("context_limit")
        return cls(
            arrivals=arrivals,
            lengths=lengths,
            context_limit=None if ctx is None else v.integer(ctx, "context_limit", lo=2),
            sessions=sessions,
            prefix=prefix,
            block_size=v.integer(d.get("block_size", 16), "block_size", lo=1),
            reasoning=reasoning,
            tenants=v.mix(d.get("tenants"), "tenants"),
            models=v.mix(d.get("models"), "models"),
            duration_s=None if d.get("duration_s") is None else v.number(d["duration_s"], "duration_s", lo=0, open_lo=True),
            requests=None if d.get("requests") is None else v.integer(d["requests"], "requests", lo=1),
            provenance=dict(v.mapping(d.get("provenance") or {}, "provenance")),
        )


def _plain(obj: Any) -> Any:
    """Only YAML-safe builtins (NumPy scalars become floats/ints)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item"):
        return _plain(obj.item())
    return obj


class _Validator:
    """Checks one spec dict, raising SpecError with the failing field path."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path

    def fail(self, fieldpath: str, msg: str) -> None:
        raise SpecError(msg, path=self.path, field=fieldpath or "(top level)")

    def mapping(self, x: Any, where: str) -> dict[str, Any]:
        if not isinstance(x, dict):
            self.fail(where, f"expected a mapping (key: value), got {type(x).__name__}")
        return x

    def required(self, d: dict[str, Any], key: str, where: str) -> Any:
        if d.get(key) is None:
            self.fail(_join(where, key), "is required")
        return d[key]

    def no_unknown(self, d: dict[str, Any], known: set[str], where: str) -> None:
        extra = sorted(set(d) - known)
        if extra:
            self.fail(_join(where, extra[0]), f"unknown key; expected one of {', '.join(sorted(known))}")

    def number(self, x: Any, where: str, *, lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> float:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            self.fail(where, f"expected a finite number, got {x!r}")
        if lo is not None and (x < lo or (open_lo and x == lo)):
            self.fail(where, f"must be {'>' if open_lo else '>='} {lo}, got {x!r}")
        if hi is not None and x > hi:
            self.fail(where, f"must be <= {hi}, got {x!r}")
        return x

    def integer(self, x: Any, where: str, *, lo: int | None = None) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            self.fail(where, f"expected an integer, got {x!r}")
        if lo is not None and x < lo:
            self.fail(where, f"must be >= {lo}, got {x!r}")
        return x

    def params(self, p: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        p = self.mapping(p if p is not None else {}, where)
        self.no_unknown(p, set(required) | set(optional), where)
        for k in required:
            if k not in p:
                self.fail(_join(where, k), "is required")
        return p

    def dist(self, x: Any, where: str) -> Dist:
        d = self.mapping(x, where)
        self.no_unknown(d, {"family", "params"}, where)
        fam = self.required(d, "family", where)
        if not isinstance(fam, str) or fam not in DIST_PARAMS:  # a list/dict here is not hashable
            self.fail(_join(where, "family"), f"unknown family {fam!r}; use one of {', '.join(DIST_PARAMS)}")
        p = self.params(d.get("params"), _join(where, "params"), DIST_PARAMS[fam])
        pw = _join(where, "params")
        if fam == "empirical":
            probs, qs = p["probs"], p["quantiles"]
            if not isinstance(probs, list) or not isinstance(qs, list) or len(probs) != len(qs) or len(probs) < 2:
                self.fail(pw, "probs and quantiles must be lists of the same length (>= 2)")
            for i, (a, b) in enumerate(zip(probs, qs, strict=True)):
                self.number(a, f"{pw}.probs[{i}]", lo=0, hi=1)
                self.number(b, f"{pw}.quantiles[{i}]")
            if any(b < a for a, b in itertools.pairwise(probs)) or any(
                b < a for a, b in itertools.pairwise(qs)
            ):
                self.fail(pw, "probs and quantiles must be non-decreasing")
            if probs[0] != 0 or probs[-1] != 1:
                self.fail(f"{pw}.probs", "must start at 0 and end at 1")
        else:
            for k in DIST_PARAMS[fam]:
                lo, open_lo = 0.0, True
                if (fam, k) in {("zipf", "a"), ("uniform", "low"), ("constant", "value")}:
                    lo, open_lo = (-50.0 if k == "a" else 0.0), False
                self.number(p[k], f"{pw}.{k}", lo=lo, open_lo=open_lo)
            if fam == "uniform" and p["high"] < p["low"]:
                self.fail(f"{pw}.high", "must be >= low")
            if fam in ("geometric",) and p["p"] > 1:
                self.fail(f"{pw}.p", "must be <= 1")
            if fam == "zipf" and p["max"] < 1:
                self.fail(f"{pw}.max", "must be >= 1")
        return Dist(fam, dict(p))

    def process(self, name: Any, params: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if name not in allowed:
            self.fail(_join(where, "process"), f"unknown process {name!r}; use one of {', '.join(allowed)}")
        req, opt = ARRIVAL_PARAMS[name]
        pw = _join(where, "params")
        p = self.params(params, pw, req, opt)
        for k, val in p.items():
            if k == "shape" and name == "ramp":
                if val not in ("linear", "exponential"):
                    self.fail(f"{pw}.shape", "must be 'linear' or 'exponential'")
                continue
            zero_ok = k in ("rate_off", "peak_s", "amplitude", "start_rate", "end_rate")
            self.number(val, f"{pw}.{k}", lo=0, open_lo=not zero_ok)
        if name == "gamma":
            has_v = {"rate", "burstiness"} <= set(p)
            has_s = {"shape", "scale"} <= set(p)
            if has_v == has_s or len(p) != 2:
                self.fail(pw, "gamma needs either rate and burstiness (vLLM) or shape and scale (SciPy)")
        if name == "diurnal" and p.get("amplitude", 0.5) > 1:
            self.fail(f"{pw}.amplitude", "must be <= 1 (the rate cannot go negative)")
        if name == "ramp" and p["start_rate"] == 0 and p["end_rate"] == 0:
            self.fail(pw, "a ramp needs a positive start_rate or end_rate")
        if name == "ramp" and p.get("shape") == "exponential" and (p["start_rate"] <= 0 or p["end_rate"] <= 0):
            self.fail(pw, "an exponential ramp needs positive start_rate and end_rate")
        if name == "mmpp" and p["rate_on"] == 0:
            self.fail(f"{pw}.rate_on", "must be > 0")
        return dict(p)

    def arrivals(self, x: Any, where: str) -> ArrivalSpec:
        d = self.mapping(x, where)
        self.no_unknown(d, {"process", "params", "windows"}, where)
        name = self.required(d, "process", where)
        params = self.process(name, d.get("params"), where, tuple(ARRIVAL_PARAMS))
        windows = None
        if name == "piecewise":
            ws = self.required(d, "windows", where)
            if not isinstance(ws, list) or not ws:
                self.fail(_join(where, "windows"), "expected a non-empty list of windows")
            windows = []
            prev_end = 0.0
            for i, w in enumerate(ws):
                ww = f"{where}.windows[{i}]"
                w = self.mapping(w, ww)
                self.no_unknown(w, {"start_s", "end_s", "process", "params", "fill"}, ww)
                a = self.number(self.required(w, "start_s", ww), f"{ww}.start_s", lo=0)
                b = self.number(self.required(w, "end_s", ww), f"{ww}.end_s", lo=0)
                if b <= a:
                    self.fail(f"{ww}.end_s", f"must be > start_s ({a})")
                if a < prev_end:
                    self.fail(f"{ww}.start_s", f"windows must be sorted and not overlap (previous ends at {prev_end})")
                prev_end = b
                proc = self.required(w, "process", ww)
                wp = self.process(proc, w.get("params"), ww, WINDOW_PROCESSES)
                fill = w.get("fill", False)
                if not isinstance(fill, bool):
                    self.fail(f"{ww}.fill", "must be true or false")
                windows.append(WindowSpec(a, b, proc, wp, fill))
        elif d.get("windows") is not None:
            self.fail(_join(where, "windows"), "only process: piecewise takes windows")
        return ArrivalSpec(name, params, windows)

    def mix(self, x: Any, where: str) -> dict[str, float] | None:
        if x is None:
            return None
        m = self.mapping(x, where)
        if not m:
            return None
        for k, val in m.items():
            self.number(val, f"{where}.{k}", lo=0)
        if sum(m.values()) <= 0:
            self.fail(where, "weights must sum to more than 0")
        return {str(k): val for k, val in m.items()}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
