"""Cost-model evaluation speed: the simulator's hot path, against a naive baseline.

Baseline: ``CostModel.step_time_reference`` (the same formula evaluated sequence by
sequence, no caches: what a straightforward implementation does). Measured side by side in
the same process on the same step shapes: ``step_time`` (lists in, sums inside) and
``step_time_sums`` (running sums in, cached per batch shape: what the engine calls).

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--hardware", default="h100-sxm")
    args = ap.parse_args()
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
