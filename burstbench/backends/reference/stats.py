"""The reference server's own measurements: Prometheus text (vLLM's metric names) and ``/stats``.

Separate from ``server`` so the HTTP face only records; what is exported, and
under which names, is decided here.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any

from burstbench.backends.reference.engine import EngineCore

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
LATENESS_KEEP = 200_000


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {acc}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class ServerStats:
    """Counters and histograms the handlers and replica loops update."""

    def __init__(self) -> None:
        self.iterations = 0
        self.tokens_written = 0
        self.lateness = array("d")
        self.lateness_hist = Histogram(LATENESS_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.success: dict[str, int] = {}
        self.rejected = 0
        self.aborted = 0

    def late(self, v: float) -> None:
        self.lateness_hist.observe(v)
        if len(self.lateness) < LATENESS_KEEP:
            self.lateness.append(v)

    def to_json(self, engines: list[EngineCore], faults: dict[str, int], kv_blocks: int) -> dict[str, Any]:
        """``/stats``: what benchmarks read (lateness quantiles, engine counters)."""
        lat = sorted(self.lateness)

        def q(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))]

        return {
            "iterations": self.iterations,
            "tokens_written": self.tokens_written,
            "lateness_s": {"n": len(lat), "p50": q(0.5), "p99": q(0.99), "max": lat[-1] if lat else None},
            "preemptions": sum(e.num_preemptions for e in engines),
            "generation_tokens": sum(e.generation_tokens for e in engines),
            "rejected": self.rejected,
            "aborted": self.aborted,
            "faults": faults,
            "kv_blocks_per_replica": kv_blocks,
        }

    def prometheus(self, model_name: str, engines: list[EngineCore]) -> str:
        """``/metrics``: Prometheus text with vLLM's metric names, one label set per replica."""
        lines: list[str] = []
        name = model_name.replace('"', "")

        def family(metric: str, kind: str, doc: str, rows: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} {kind}")
            for labels, v in rows:
                lines.append(f"{metric}{{{labels}}} {v}")

        per = [(f'model_name="{name}",engine="{i}"', e) for i, e in enumerate(engines)]
        family("vllm:num_requests_running", "gauge", "Requests in model execution batches.", [(lab, e.num_running) for lab, e in per])
        family("vllm:num_requests_waiting", "gauge", "Requests waiting to be processed.", [(lab, e.num_waiting) for lab, e in per])
        family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", [(lab, e.kv_usage()) for lab, e in per])
        family("vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage (older name).", [(lab, e.kv_usage()) for lab, e in per])
        family("vllm:num_preemptions_total", "counter", "Cumulative number of preemptions.", [(lab, e.preemptions_reported) for lab, e in per])
        family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", [(lab, e.prompt_tokens_reported) for lab, e in per])
        family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", [(lab, e.generation_tokens) for lab, e in per])
        family("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in tokens.", [(lab, e.prefix_queries) for lab, e in per])
        family("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in tokens.", [(lab, e.prefix_hits) for lab, e in per])
        # vLLM's cache_config_info (an info gauge of value 1): the KV size a replay of a run needs
        # (``simulate --replay-run --num-gpu-blocks auto``); vLLM's count includes its null block
        family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig.", [
            (f'{lab},block_size="{e.block_size}",num_gpu_blocks="{e.pool.num_blocks}",'
             f'enable_prefix_caching="{e.pool.enable_caching}"', 1.0) for lab, e in per])
        base = f'model_name="{name}"'
        family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [(f'{base},finished_reason="{k}"', v) for k, v in sorted(self.success.items())] or [(f'{base},finished_reason="length"', 0)],
        )
        for metric, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", self.e2e),
            ("burstbench:token_emission_lateness_seconds", "How late token writes are against the model's schedule.", self.lateness_hist),
        ):
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} histogram")
            lines.extend(hist.render(metric, base))
        return "\n".join(lines) + "\n"
