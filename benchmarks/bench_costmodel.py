"""Cost-model evaluation speed: the simulator's hot path, against a naive baseline.

Baseline: ``CostModel.step_time_reference`` (the same formula evaluated sequence by
sequence, no caches: what a straightforward implementation does). Measured side by side in
the same process on the same step shapes: ``step_time`` (lists in, sums inside) and
``step_time_sums`` (running sums in, cached per batch shape: what the engine calls).

Before the timing it prints the validation figures: vLLM v0.6 ``benchmark_latency``
(Llama-3.1-8B, batch 8, 32 in / 128 out) against the engine on every preset, and the
Llama-3-8B batch-1 decode step against the weights/bandwidth bound with the gap split into
its parts.

Shapes are drawn like a chunked-prefill engine under load: decode batches of 1-256 with
contexts of a few thousand tokens, a third of the steps also carrying a prefill chunk.

    python benchmarks/bench_costmodel.py [--steps 20000] [--model llama-3.1-8b] [--hardware h100-sxm]
"""

from __future__ import annotations

import argparse
import os
import random
import time

from burstbench.backends.hardware.profile import load_hardware
from burstbench.backends.reference.costmodel import CostModel
from burstbench.backends.reference.models import load_model


def shapes(n: int, seed: int = 0) -> list[tuple[list[tuple[int, int]], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = rng.randint(1, 256)
        decode = [rng.randint(100, 6000) for _ in range(b)]
        prefill = [(rng.randint(16, 2048), rng.choice([0, 0, 512]))] if rng.random() < 1 / 3 else []
        out.append((prefill, decode))
    return out


PUBLISHED_MS = {"a100-80g": 1579.0, "h100-sxm": 998.0, "h200": 834.0}


def validation_table() -> None:
    from burstbench.backends.hardware.profile import list_hardware
    from burstbench.backends.reference.costmodel import estimate_batch_latency

    l31, l3 = load_model("llama-3.1-8b"), load_model("llama-3-8b")
    print("benchmark_latency, Llama-3.1-8B TP1, batch 8, 32 in / 128 out (vLLM v0.6 nightly):")
    for hw in list_hardware():
        ms = estimate_batch_latency(CostModel(l31, load_hardware(hw)), 8, 32, 128) * 1e3
        ref = PUBLISHED_MS.get(hw)
        cmp = f"published {ref:6.0f} ms  {ms / ref - 1:+6.1%}" if ref else "(no published figure)"
        print(f"  {hw:12s} engine {ms:7.1f} ms  {cmp}")
    print("Llama-3-8B decode step at batch 1 (context 512) vs weights/bandwidth bound:")
    for hw in list_hardware():
        prof = load_hardware(hw)
        cost = CostModel(l3, prof)
        step = cost.step_time([], [512]) * 1e3
        bound = l3.weight_bytes / prof.mem_bandwidth * 1e3
        streamed = (l3.total_params - l3.vocab_size * l3.hidden_size) * l3.weight_bytes_per_param
        weights = streamed / (prof.mem_bandwidth * prof.bandwidth_efficiency(1)) * 1e3
        over = (prof.step_overhead_s + l3.num_layers * prof.layer_overhead_s) * 1e3
        print(
            f"  {hw:12s} step {step:6.2f} ms  bound {bound:5.2f} ms ({bound / step:4.0%} of step) = "
            f"weights at eta_B {weights:5.2f} + overheads {over:4.2f} + KV/elementwise {step - weights - over:4.2f}"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--hardware", default="h100-sxm")
    args = ap.parse_args()
    validation_table()
    cost = CostModel(load_model(args.model), load_hardware(args.hardware))
    steps = shapes(args.steps)
    summed = [
        dict(
            prefill_tokens=sum(n for n, _ in p),
            prefill_seqs=len(p),
            prefill_pairs=sum(n * c + n * (n + 1) / 2 for n, c in p),
            prefill_kv_tokens=sum(n + c for n, c in p),
            decode_seqs=len(d),
            decode_context_sum=sum(d),
        )
        for p, d in steps
    ]

    def run_reference() -> float:
        fresh = CostModel(cost.model, cost.hardware, tp=cost.tp)
        return sum(fresh.step_time_reference(p, d) for p, d in steps)

    def run_lists() -> float:
        return sum(cost.step_time(p, d) for p, d in steps)

    def run_sums() -> float:
        f = cost.step_time_sums
        return sum(f(**kw) for kw in summed)

    results = {}
    for name, fn in [("reference (baseline)", run_reference), ("step_time", run_lists), ("step_time_sums", run_sums)]:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            total = fn()
            best = min(best, time.perf_counter() - t0)
        results[name] = (best, total)
    base = results["reference (baseline)"][0]
    print(f"{args.steps} steps, {args.model} on {args.hardware}; load average {os.getloadavg()[0]:.2f}")
    for name, (t, total) in results.items():
        print(f"  {name:22s} {t / args.steps * 1e6:7.2f} us/step  {base / t:5.1f}x baseline  (sum {total:.3f} s)")


if __name__ == "__main__":
    main()
