"""How fast ``simulate`` replays traces: Azure 2023 conversation beside a baseline and Vidur; the cost curve.

Usage:
    python benchmarks/bench_simulate.py                        # this code, Azure conv
    python benchmarks/bench_simulate.py --baseline-rev REV     # + the code of git revision REV, interleaved
    python benchmarks/bench_simulate.py --curve 10000,100000,300000,1000000
    python benchmarks/bench_simulate.py --vidur-src DIR --vidur-python PY

Every figure comes with its baseline from the same run. Each measurement is a fresh
Python process (so the figures are the simulation, not what a previous run left in
memory), timed inside it around ``simulate()`` (trace parsing included) in wall and
CPU seconds (on a loaded machine the CPU time is the steadier figure), with the
process's peak RSS from ``resource.getrusage``:

- the Azure 2023 conversation trace (19,366 requests, 58 min) on Llama-3.1-8B / H100,
  without a results store and with one (chunks included: ~4M token rows): wall time and
  simulated seconds per wall second (the trace's real-time span is the first baseline);
- ``--baseline-rev``: the same runs on the code of another git revision (exported with
  ``git archive`` into a temporary folder), interleaved A B A B, with the ratio per pair
  and a check that both give the same per-request first/last token times;
- ``--curve``: synthetic traces of N requests from the ``azure-conv`` preset (the same
  workload at its fitted rate; 1M requests is ~50 h of traffic), without a store: wall,
  peak RSS, iterations and simulated seconds per wall second, per N;
- Vidur (microsoft/vidur) as before: llama-3-8b / a100 with and without store.

Vidur runs in its own virtual environment, from a source
checkout you point at with ``--vidur-src`` (nothing of Vidur is in this
repository), on the same trace converted to its ``trace_replay`` format
(``arrived_at, num_prefill_tokens, num_decode_tokens``), with its vLLM
scheduler on a100 / Meta-Llama-3-8B. The snapshot of Vidur available to this
project lacks the attention profiles (``data/profiling/compute/*/*/attention.csv``
are large files not present), without which Vidur cannot start. When they are
missing this script says so and, with ``--synthesize-attention``, writes a
stand-in attention table computed from burstbench's own cost model so that
Vidur's *simulation speed* can still be measured (its latency predictions are
then not Vidur's own and are not compared). Vidur's first run trains its
random-forest predictors (cached afterwards); both the cold and the cached
run are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "burstbench" / "data" / "traces" / "azure_llm_2023_conv.csv"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def worker(trace: str, model: str, hardware: str, out: str | None) -> None:
    """One measurement in this (fresh) process: a JSON line on stdout."""
    import hashlib
    import resource

    import numpy as np

    from burstbench.backends.reference import simulator

    captured = {}
    run_pool = simulator.run_pool

    def keep(*a, **k):  # the per-request outcome, to compare code revisions
        captured["run"] = r = run_pool(*a, **k)
        return r

    simulator.run_pool = keep
    t, c = time.perf_counter(), time.process_time()
    res = simulator.simulate(trace, model=model, hardware=hardware, out=out)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    first, last = captured["run"].token_bounds()
    digest = hashlib.sha256(np.nan_to_num(first, nan=-1).tobytes() + np.nan_to_num(last, nan=-1).tobytes()).hexdigest()
    print(json.dumps({
        "wall": wall, "cpu": cpu, "requests": res.requests, "iterations": res.iterations, "virtual_s": res.duration_s,
        "tokens": res.generated_tokens, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "digest": digest,
    }))


def measure(root: Path, trace: Path, model: str, hardware: str, out: Path | None, timeout: float) -> dict:
    """Run ``worker`` on the code under ``root`` in a fresh process."""
    cmd = [sys.executable, __file__, "--worker", str(trace), "--model", model, "--hardware", hardware]
    if out is not None:
        cmd += ["--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(root))
    # compile the code's modules first, so that no run pays for it inside its timing
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(root) / "burstbench")], check=False,
                   capture_output=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed ({root}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_rev(rev: str, dst: Path) -> Path:
    """The ``burstbench`` package of git revision ``rev`` under ``dst`` (an importable root)."""
    dst.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "burstbench"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True)
    return dst


def line(label: str, r: dict) -> str:
    return (f"{label}: {r['wall']:.2f} s wall ({r['cpu']:.2f} s CPU), peak {r['peak_mib']:.0f} MiB, {r['requests']} requests, "
            f"{r['iterations']} iterations, {r['virtual_s']:.0f} virtual s = "
            f"{r['virtual_s'] / r['wall']:.0f}x real time, {r['iterations'] / r['wall'] / 1e3:.0f}k iterations/s")


def synth(n: int, path: Path) -> None:
    from burstbench.traces.presets import preset
    from burstbench.traces.synth import synthesise

    tr = synthesise(preset("azure-conv"), seed=0, requests=n, label="azure-conv")
    tr.df.select("arrival_s", "input_tokens", "output_tokens").write_parquet(path)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_vidur_trace(path: Path) -> int:
    from burstbench.traces.schema import load_trace

    tr = load_trace(TRACE)
    df = tr.df.select(
        arrived_at="arrival_s", num_prefill_tokens="input_tokens", num_decode_tokens="output_tokens"
    )
    df.write_csv(path)
    return df.height


def synthesize_attention(dst: Path) -> None:
    """A Vidur-format attention table for a100 / Meta-Llama-3-8B from burstbench's cost model.

    Vidur times attention per layer in milliseconds; the roofline here is the
    cost model's attention term divided by the layer count.
    """
    import itertools

    import polars as pl

    from burstbench.backends.hardware.profile import load_hardware
    from burstbench.backends.reference.costmodel import CostModel
    from burstbench.backends.reference.models import load_model

    m = load_model("llama-3-8b")
    hw = load_hardware("a100-80g")
    cm = CostModel(m, hw)
    layers = m.num_layers
    bw = hw.mem_bandwidth * 0.8
    peak = hw.peak_flops
    fpp = m.attention_flops_per_pair
    kvb = cm.kv_bytes_per_token
    rows = []
    for bsz, kv in itertools.product([1, 2, 4, 8, 16, 32, 64, 128, 256, 512], [16, 128, 512, 1024, 2048, 4096, 8192, 16384]):
        ctx = bsz * (kv + 1)
        t = max(fpp * ctx / (peak * 0.5), kvb * ctx / bw) / layers * 1e3 + 0.005
        rows.append((bsz, 0, kv, 0.0, t))
    for chunk, kv in itertools.product([16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384], [0, 512, 1024, 2048, 4096, 8192]):
        pairs = chunk * kv + chunk * (chunk + 1) / 2
        t = max(fpp * pairs / (peak * 0.6), kvb * (kv + chunk) / bw) / layers * 1e3 + 0.005
        rows.append((1, chunk, kv, t, 0.0))
    df = pl.DataFrame(rows, schema=["batch_size", "prefill_chunk_size", "kv_cache_size", "time_stats.attn_prefill.median", "time_stats.attn_decode.median"], orient="row")
    df = df.with_columns(
        pl.lit(m.hidden_size).alias("n_embd"),
        pl.lit(m.num_heads).alias("n_q_head"),
        pl.lit(m.num_kv_heads).alias("n_kv_head"),
        pl.lit(16).alias("block_size"),
        pl.lit(1).alias("num_tensor_parallel_workers"),
        pl.lit(0.002).alias("time_stats.attn_kv_cache_save.median"),
        pl.lit(True).alias("is_synthetic_burstbench"),
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(dst)


def run_vidur(src: Path, python: str, synthesize: bool, timeout: float, small_grid: bool = False) -> list[str]:
    lines: list[str] = []
    model_dir = "meta-llama/Meta-Llama-3-8B"
    with tempfile.TemporaryDirectory(prefix="vidur-bench-") as tmp:
        work = Path(tmp) / "vidur"
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(".git", "simulator_output", "cache"))
        attn = work / "data" / "profiling" / "compute" / "a100" / model_dir / "attention.csv"
        mlp = work / "data" / "profiling" / "compute" / "a100" / model_dir / "mlp.csv"
        if not mlp.exists():
            return [f"vidur: cannot run: {mlp.relative_to(work)} is missing from the Vidur checkout"]
        if not attn.exists():
            msg = (
                f"vidur: {attn.relative_to(work)} is missing from the Vidur snapshot available here "
                "(its profiling CSVs are large files the snapshot does not contain); Vidur cannot start without it"
            )
            if not synthesize:
                return [msg + "; rerun with --synthesize-attention to time Vidur on a stand-in table"]
            synthesize_attention(attn)
            lines.append(msg + "; using a stand-in attention table from burstbench's cost model (speed comparison only)")
        trace = Path(tmp) / "azure_conv_vidur.csv"
        n = write_vidur_trace(trace)
        cmd = [
            python, "-m", "vidur.main",
            "--replica_config_device", "a100",
            "--replica_config_model_name", model_dir,
            "--cluster_config_num_replicas", "1",
            "--replica_config_tensor_parallel_size", "1",
            "--replica_config_num_pipeline_stages", "1",
            "--request_generator_config_type", "trace_replay",
            "--trace_request_generator_config_trace_file", str(trace),
            "--trace_request_generator_config_max_tokens", "16384",
            "--replica_scheduler_config_type", "vllm",
            "--vllm_scheduler_config_batch_size_cap", "256",
            "--vllm_scheduler_config_max_tokens_in_batch", "16384",
            "--random_forrest_execution_time_predictor_config_prediction_max_prefill_chunk_size", "16384",
            "--random_forrest_execution_time_predictor_config_prediction_max_batch_size", "256",
            "--random_forrest_execution_time_predictor_config_prediction_max_tokens_per_request", "16384",
            "--no-metrics_config_enable_chrome_trace",
            "--no-metrics_config_store_plots",
            "--no-metrics_config_write_json_trace",
        ]
        if small_grid:
            # one random-forest configuration and 2-fold CV instead of Vidur's 27 x 5-fold grid
            # search: training fits in minutes on a small machine; simulation unchanged
            cmd += [
                "--random_forrest_execution_time_predictor_config_num_estimators", "50",
                "--random_forrest_execution_time_predictor_config_max_depth", "16",
                "--random_forrest_execution_time_predictor_config_min_samples_split", "2",
                "--random_forrest_execution_time_predictor_config_k_fold_cv_splits", "2",
            ]
            lines.append("vidur: predictor grid search reduced to one configuration (--vidur-small-grid)")
        env = dict(os.environ, WANDB_MODE="disabled", PYTHONHASHSEED="0")
        for label in ("cold (trains predictors)", "cached predictors"):
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                lines.append(f"vidur {label}: did not finish within {timeout:.0f} s")
                return lines
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
                lines.append(f"vidur {label}: failed (exit {proc.returncode}): " + " | ".join(tail))
                return lines
            lines.append(f"vidur {label}: {n} requests in {wall:.2f} s wall")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--hardware", default="h100-sxm")
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-rev", default=None, help="git revision whose code is the baseline (e.g. main)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each configuration (median reported)")
    ap.add_argument("--no-store-runs", action="store_true", help="skip the runs that write a results store")
    ap.add_argument("--curve", default=None, help="comma-separated request counts for the cost curve")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--vidur-src", type=Path, default=None, help="a Vidur source checkout (not in this repository)")
    ap.add_argument("--vidur-python", default=None, help="python of a venv with Vidur's requirements")
    ap.add_argument("--synthesize-attention", action="store_true")
    ap.add_argument("--vidur-timeout", type=float, default=1800)
    ap.add_argument("--vidur-small-grid", action="store_true", help="train one predictor configuration (faster cold start)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.hardware, args.out)
        return

    print(f"trace: {TRACE.name}; model {args.model} on {args.hardware}; "
          f"load average at start: {load_avg()} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp_s:
        tmp = Path(tmp_s)
        codes = {"this code": ROOT}
        if args.baseline_rev:
            codes[f"baseline {args.baseline_rev}"] = export_rev(args.baseline_rev, tmp / "base")
        ours = None
        for store in (False, True) if not args.no_store_runs else (False,):
            runs: dict[str, list[dict]] = {k: [] for k in codes}
            for _ in range(args.repeat):  # interleaved: A B A B ...
                for label, root in codes.items():
                    out = tmp / f"{len(runs[label])}-{label.split()[0]}.duckdb" if store else None
                    runs[label].append(measure(root, TRACE, args.model, args.hardware, out, args.timeout))
                    if out is not None:
                        out.unlink()
            kind = "with store (chunks included)" if store else "no store"
            span = runs["this code"][0]["virtual_s"]
            print(f"-- Azure conv, {kind}: the trace's real-time span is {span:.0f} s (1x); median of {args.repeat}")
            for label, rs in runs.items():
                med = dict(rs[0], **{k: median([r[k] for r in rs]) for k in ("wall", "cpu", "peak_mib")})
                walls = ", ".join(f"{r['wall']:.2f}" for r in rs)
                print(line(f"  {label}", med) + f" [walls {walls}]")
            if not store:
                ours = median([r["wall"] for r in runs["this code"]])
                ours_cpu = median([r["cpu"] for r in runs["this code"]])
            if args.baseline_rev:
                base = runs[f"baseline {args.baseline_rev}"]
                same = all(r["digest"] == runs["this code"][0]["digest"] for rs in runs.values() for r in rs)
                for k in ("wall", "cpu"):
                    ratios = [b[k] / a[k] for a, b in zip(runs["this code"], base, strict=True)]
                    print(f"  speed-up over the baseline in {k} time, pair by pair: median {median(ratios):.2f}x "
                          f"[{min(ratios):.2f}-{max(ratios):.2f}]")
                print(f"  per-request first/last token times {'identical' if same else 'DIFFER'} to the baseline's")
        if ours is not None:
            bar = span / 3000
            print(f"goal >= 3000x real time without store ({bar:.2f} s): wall {span / ours:.0f}x "
                  f"({'met' if ours <= bar else 'NOT met'}), per CPU-second {span / ours_cpu:.0f}x "
                  f"({'met' if ours_cpu <= bar else 'NOT met'}); wall counts only on an idle host "
                  f"(load average now {load_avg()} on {os.cpu_count()} CPUs)")
        if args.curve:
            print("-- cost curve: azure-conv preset, N requests, no store (one run each)")
            for n in (int(x) for x in args.curve.split(",")):
                path = tmp / f"azure-conv-{n}.parquet"
                synth(n, path)
                row = []
                for label, root in codes.items():
                    r = measure(root, path, args.model, args.hardware, None, args.timeout)
                    row.append(r)
                    print(line(f"  N={n:>9,} {label}", r) + f", {r['wall'] / n * 1e6:.0f} us/request")
                if n >= 1_000_000:
                    r0 = row[0]
                    print(f"  goal 1M requests < 60 s: wall {r0['wall']:.1f} s ({'met' if r0['wall'] < 60 else 'NOT met'}), "
                          f"CPU {r0['cpu']:.1f} s ({'met' if r0['cpu'] < 60 else 'NOT met'}); load average now {load_avg()}")
                path.unlink()
    if args.vidur_src and args.vidur_python:
        lines = run_vidur(args.vidur_src, args.vidur_python, args.synthesize_attention, args.vidur_timeout, args.vidur_small_grid)
        for ln in lines:
            print(ln)
        for ln in lines:
            if ln.startswith("vidur cached predictors:") and ours is not None:
                v = float(ln.split(" in ")[1].split(" s")[0])
                print(f"ratio vidur / burstbench ({args.model}/{args.hardware} for burstbench, no store, cached predictors): {v / ours:.1f}x")
    else:
        print("vidur: not run (pass --vidur-src and --vidur-python; see the module docstring)")
    print(f"load average at end: {load_avg()}")


if __name__ == "__main__":
    if "--worker" not in sys.argv:  # a worker imports the code its PYTHONPATH names, nothing else
        sys.path.insert(0, str(ROOT))
    main()
