"""How fast ``simulate`` replays the Azure 2023 conversation trace, beside Vidur.

Usage:
    python benchmarks/bench_simulate.py                      # burstbench only
    python benchmarks/bench_simulate.py --vidur-src DIR --vidur-python PY

burstbench: ``simulate(azure_llm_2023_conv.csv)`` (19,366 requests, ~1 h) on
Llama-3.1-8B / H100 (the issue's bar: under 10 s wall), plus Llama-3-8B / A100
(the configuration Vidur ships compute profiles for), each run twice, with the
results store written (chunks included) and without it.

Vidur (microsoft/vidur) runs in its own virtual environment, from a source
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
import os
import shutil
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


def run_burstbench(model: str, hardware: str, out: Path | None) -> tuple[float, object]:
    from burstbench.backends.reference.simulator import simulate

    t = time.perf_counter()
    res = simulate(TRACE, model=model, hardware=hardware, out=out)
    return time.perf_counter() - t, res


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
    ap.add_argument("--vidur-src", type=Path, default=None, help="a Vidur source checkout (not in this repository)")
    ap.add_argument("--vidur-python", default=None, help="python of a venv with Vidur's requirements")
    ap.add_argument("--synthesize-attention", action="store_true")
    ap.add_argument("--vidur-timeout", type=float, default=1800)
    ap.add_argument("--vidur-small-grid", action="store_true", help="train one predictor configuration (faster cold start)")
    ap.add_argument("--skip-burstbench", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    print(f"trace: {TRACE.name}; load average at start: {load_avg()} on {os.cpu_count()} CPUs")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, hw in (("llama-3.1-8b", "h100-sxm"), ("llama-3-8b", "a100-80g")):
            for store in (False, True):
                best = None
                for i in range(args.repeat):
                    out = Path(tmp) / f"{model}-{hw}-{i}.duckdb" if store else None
                    wall, res = run_burstbench(model, hw, out)
                    best = wall if best is None else min(best, wall)
                key = f"{model}/{hw} {'with store' if store else 'no store'}"
                results[key] = best
                print(
                    f"burstbench {key}: best of {args.repeat}: {best:.2f} s wall "
                    f"({res.requests} requests, {res.iterations} iterations, {res.duration_s:.0f} virtual s, "
                    f"{res.duration_s / best:.0f}x real time, {res.iterations / best / 1e3:.0f}k iterations/s)"
                )
    bar = results["llama-3.1-8b/h100-sxm with store"]
    print(f"issue bar (< 10 s, Llama-3.1-8B / H100, store written): {'met' if bar < 10 else 'NOT met'} ({bar:.2f} s)")
    if args.vidur_src and args.vidur_python:
        lines = run_vidur(args.vidur_src, args.vidur_python, args.synthesize_attention, args.vidur_timeout, args.vidur_small_grid)
        for line in lines:
            print(line)
        for line in lines:
            if line.startswith("vidur cached predictors:"):
                v = float(line.split(" in ")[1].split(" s")[0])
                ours = results["llama-3-8b/a100-80g no store"]
                print(f"ratio vidur / burstbench (a100, Llama-3-8B, no store, cached predictors): {v / ours:.1f}x")
    else:
        print("vidur: not run (pass --vidur-src and --vidur-python; see the module docstring)")
    print(f"load average at end: {load_avg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
