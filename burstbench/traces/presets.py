"""Named workloads, each a WorkloadSpec with its source stated, for ``trace synth --preset``.

* ``burstgpt``: the BurstGPT generator's recipe (Wang et al., *BurstGPT*, KDD'25, and the
  HPMLL/BurstGPT repository): Gamma inter-arrivals with shape 0.5 and scale 2 s (mean
  1 request/s, gap CV 1.41) and Zipf(1.1) request and response lengths on 1..1023
  (below 1024 tokens).
* ``reasoning-gamma``: reasoning-model traffic. Gamma arrivals in vLLM's
  parameterisation (``rate`` 1 req/s, ``burstiness`` 0.5 by default; both overridable),
  short math-style prompts (lognormal, median 110 tokens), long outputs (lognormal,
  median 3,000 tokens, s 1.0) clipped at a 32,768-token context, so the tail piles up at
  the limit; each request's reasoning share of its output is Beta(7.4, 2.6) (mean 0.74,
  the share reported for DeepSeek-R1 traffic in issue 2's brief) and lands in the
  ``reasoning_share`` column so an engine can split reasoning from visible tokens.
* ``azure-conv``: the Azure LLM inference trace 2023, conversation service (Patel et al.,
  *Splitwise*, ISCA'24), as fitted by ``burstbench trace fit`` on the shipped
  ``azure_llm_2023_conv.csv``: Gamma arrivals with shape 0.871 and scale 0.2076 s
  (5.53 req/s); input and output lengths as that file's empirical quantiles (medians 1020
  and 129 tokens); their weak but significant rank correlation (Spearman 0.073) as a
  Gaussian copula.
* ``azure-code``: the 2023 coding service of the same paper, from its published
  characteristics only (no coding trace ships here): median prompt 1,500 tokens and
  median output 13 tokens (Splitwise, section 3); the spreads (lognormal s 0.9 and 1.2)
  and the arrival process (the conversation trace's Gamma shape 0.871 at 2 req/s) are
  assumptions, stated so they can be overridden.
* ``mooncake-prefix``: shared-prefix traffic shaped like the Mooncake FAST'25 synthetic
  trace shipped here (``mooncake_synthetic.jsonl``: 3.9 req/s, gap CV 1.01, median input
  11.6k and output 69 tokens, 45 % of requests reuse a cached prefix of median 34
  512-token blocks): Poisson arrivals at 3.9 req/s; 47 % of requests start with one of
  50 shared prefixes (lognormal, median 17,408 tokens), so over the source's 1,000 s about
  45 % reuse a prefix seen before; new input lognormal median 6,000; output lognormal
  median 69, s 1.8; 131,072-token context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from burstbench.errors import UsageError
from burstbench.traces.spec import (
    ArrivalSpec,
    Dist,
    JointSpec,
    LengthSpec,
    PrefixSpec,
    ReasoningSpec,
    WorkloadSpec,
)


def _burstgpt() -> WorkloadSpec:
    zipf = Dist("zipf", {"a": 1.1, "max": 1023})
    return WorkloadSpec(
        arrivals=ArrivalSpec("gamma", {"shape": 0.5, "scale": 2.0}),
        lengths=LengthSpec(zipf, Dist("zipf", {"a": 1.1, "max": 1023})),
        duration_s=600.0,
        provenance={"preset": "burstgpt", "source": "BurstGPT generator recipe (Wang et al., KDD'25; HPMLL/BurstGPT)"},
    )


def _reasoning_gamma() -> WorkloadSpec:
    return WorkloadSpec(
        arrivals=ArrivalSpec("gamma", {"rate": 1.0, "burstiness": 0.5}),
        lengths=LengthSpec(
            Dist("lognormal", {"s": 0.6, "scale": 110.0}),
            Dist("lognormal", {"s": 1.0, "scale": 3000.0}),
        ),
        context_limit=32768,
        reasoning=ReasoningSpec(Dist("beta", {"a": 7.4, "b": 2.6})),
        duration_s=600.0,
        provenance={
            "preset": "reasoning-gamma",
            "source": "reasoning traffic: reasoning share ~0.74 of output as reported for DeepSeek-R1; lengths assumed",
        },
    )


_P = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
_AZ_IN = [2, 181, 207, 387, 403, 703, 1020, 1071, 1130, 1315, 2735, 4083, 4142, 14050]
_AZ_OUT = [7, 41, 54, 77, 91, 103, 129, 177, 384, 400, 424, 451, 601, 1000]


def _azure_conv() -> WorkloadSpec:
    return WorkloadSpec(
        arrivals=ArrivalSpec("gamma", {"shape": 0.871, "scale": 0.2076}),
        lengths=LengthSpec(
            Dist("empirical", {"probs": list(_P), "quantiles": [float(q) for q in _AZ_IN]}),
            Dist("empirical", {"probs": list(_P), "quantiles": [float(q) for q in _AZ_OUT]}),
            JointSpec("gaussian-copula", 0.0762),
        ),
        context_limit=16384,
        duration_s=600.0,
        provenance={
            "preset": "azure-conv",
            "source": "burstbench trace fit on azure_llm_2023_conv.csv (Azure LLM inference trace 2023; Splitwise, ISCA'24)",
        },
    )


def _azure_code() -> WorkloadSpec:
    return WorkloadSpec(
        arrivals=ArrivalSpec("gamma", {"rate": 2.0, "burstiness": 0.871}),
        lengths=LengthSpec(
            Dist("lognormal", {"s": 0.9, "scale": 1500.0}),
            Dist("lognormal", {"s": 1.2, "scale": 13.0}),
        ),
        context_limit=8192,
        duration_s=600.0,
        provenance={
            "preset": "azure-code",
            "source": "Splitwise (ISCA'24) published medians: prompt 1500, output 13 tokens; spreads and rate assumed",
        },
    )


def _mooncake_prefix() -> WorkloadSpec:
    return WorkloadSpec(
        arrivals=ArrivalSpec("poisson", {"rate": 3.9}),
        lengths=LengthSpec(
            Dist("lognormal", {"s": 1.2, "scale": 6000.0}),
            Dist("lognormal", {"s": 1.8, "scale": 69.0}),
        ),
        context_limit=131072,
        prefix=PrefixSpec(groups=50, tokens=Dist("lognormal", {"s": 1.0, "scale": 17408.0}), share=0.47),
        duration_s=600.0,
        provenance={
            "preset": "mooncake-prefix",
            "source": "shaped on Mooncake FAST'25 synthetic_trace.jsonl (kvcache-ai/Mooncake) as shipped here",
        },
    )


PRESETS: dict[str, Callable[[], WorkloadSpec]] = {
    "burstgpt": _burstgpt,
    "reasoning-gamma": _reasoning_gamma,
    "azure-conv": _azure_conv,
    "azure-code": _azure_code,
    "mooncake-prefix": _mooncake_prefix,
}
OVERRIDES = ("rate", "burstiness", "context_limit", "duration_s", "requests", "block_size")


def preset(name: str, **overrides: Any) -> WorkloadSpec:
    """The named preset's spec; ``rate`` keeps the burst shape, ``burstiness`` needs gamma arrivals."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise UsageError(f"preset override {bad[0]!r} is not supported; use one of {', '.join(OVERRIDES)}")
    from burstbench.traces.processes import with_burstiness, with_rate

    spec = PRESETS[name]()
    if overrides.get("burstiness") is not None:
        spec.arrivals = with_burstiness(spec.arrivals, overrides["burstiness"])
    if overrides.get("rate") is not None:
        spec.arrivals = with_rate(spec.arrivals, overrides["rate"])
    for key in ("context_limit", "duration_s", "requests", "block_size"):
        if overrides.get(key) is not None:
            setattr(spec, key, overrides[key])
    if overrides:
        spec.provenance["overrides"] = {k: v for k, v in overrides.items() if v is not None}
    return spec
