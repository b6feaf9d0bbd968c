"""``vllm bench serve`` (shipped with the same install) against the same server, side by side.

1. Its ``--save-result --save-detailed`` file, imported with ``analyze --import``,
   gives the summary vLLM printed (same formulas, DESIGN section 4).
2. burstbench replays the same schedule (vLLM's own start times and lengths) and
   agrees with it within the machine's noise, measured here as the run-to-run
   difference of each tool: the runs alternate vLLM, burstbench, vLLM, burstbench.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from burstbench.testing.vllm_cpu import SERVED_NAME
from burstbench.traces.schema import Trace, conform, write_trace

N, RATE, IN_LEN, OUT_LEN = 40, 4.0, 256, 64
# vLLM's printed label -> (its JSON key, burstbench's analyze --json key, statistic)
PRINTED = {
    "Successful requests": ("completed", "completed", None),
    "Mean TTFT (ms)": ("mean_ttft_ms", "ttft_ms", "mean"),
    "Median TTFT (ms)": ("median_ttft_ms", "ttft_ms", "median"),
    "P99 TTFT (ms)": ("p99_ttft_ms", "ttft_ms", "p99"),
    "Mean TPOT (ms)": ("mean_tpot_ms", "tpot_ms", "mean"),
    "Median TPOT (ms)": ("median_tpot_ms", "tpot_ms", "median"),
    "P99 TPOT (ms)": ("p99_tpot_ms", "tpot_ms", "p99"),
    "Mean ITL (ms)": ("mean_itl_ms", "itl_ms", "mean"),
    "Median ITL (ms)": ("median_itl_ms", "itl_ms", "median"),
    "P99 ITL (ms)": ("p99_itl_ms", "itl_ms", "p99"),
    "Mean E2EL (ms)": ("mean_e2el_ms", "e2el_ms", "mean"),
    "Median E2EL (ms)": ("median_e2el_ms", "e2el_ms", "median"),
    "Request throughput (req/s)": ("request_throughput", "request_throughput", None),
    "Output token throughput (tok/s)": ("output_throughput", "output_throughput", None),
}


def vllm_bench(srv, out_dir: Path, name: str) -> tuple[dict, str]:
    cmd = [str(srv.env / "bin" / "vllm"), "bench", "serve", "--backend", "openai", "--base-url", srv.url,
           "--model", SERVED_NAME, "--tokenizer", str(srv.model), "--dataset-name", "random",
           "--random-input-len", str(IN_LEN), "--random-output-len", str(OUT_LEN), "--random-range-ratio", "0",
           "--num-prompts", str(N), "--request-rate", str(RATE), "--seed", "0", "--ignore-eos",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--save-detailed",
           "--result-dir", str(out_dir), "--result-filename", name, "--disable-tqdm"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / name).read_text()), proc.stdout


def printed(stdout: str) -> dict[str, float]:
    out = {}
    for label in PRINTED:
        m = re.search(re.escape(label) + r":\s+([0-9.]+)", stdout)
        assert m, f"vllm bench serve did not print {label!r}"
        out[label] = float(m.group(1))
    return out


def bb(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "burstbench", *args, "--json"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(summary: dict, key: str, stat: str | None) -> float:
    return summary[key] if stat is None else summary[key][stat]


def same_schedule(result: dict, path: Path) -> Path:
    """vLLM's own send times and lengths as a trace, so burstbench replays its schedule."""
    t0 = min(result["start_times"])
    df = pl.DataFrame({"arrival_s": [t - t0 for t in result["start_times"]],
                       "input_tokens": result["input_lens"], "output_tokens": result["output_lens"]})
    return write_trace(Trace(conform(df.sort("arrival_s")), {"source": "vllm bench serve"}), path)


def test_vllm_bench_serve_imports_as_printed_and_burstbench_agrees(vllm_server, tmp_path):
    results, outputs, ours_runs = [], [], []
    for i in range(2):
        res, stdout = vllm_bench(vllm_server, tmp_path, f"vllm{i}.json")
        results.append(res)
        outputs.append(stdout)
        trace = same_schedule(res, tmp_path / f"t{i}.parquet")
        ours_runs.append(bb("run", "--url", vllm_server.url, "--trace", str(trace), "--tokenizer",
                            str(vllm_server.model), "-o", str(tmp_path / "bb.duckdb"), "--quiet"))
    # 1. the import equals what vLLM printed (to its two decimals) and saved
    for i, (res, stdout) in enumerate(zip(results, outputs, strict=True)):
        imported = bb("analyze", "--import", str(tmp_path / f"vllm{i}.json"), "-o", str(tmp_path / "imp.duckdb"))
        shown = printed(stdout)
        assert res["completed"] == N and res["failed"] == 0
        for label, (vkey, key, stat) in PRINTED.items():
            got = ours(imported, key, stat)
            assert got == pytest.approx(res[vkey], rel=1e-6, abs=1e-6), (label, got, res[vkey])
            assert round(got, 2) == pytest.approx(shown[label], abs=0.0051), (label, got, shown[label])
    # 2. side by side on the same schedule: the gap between the tools within the run-to-run noise
    report = {}
    for label in ("Mean TTFT (ms)", "Mean TPOT (ms)", "Mean ITL (ms)", "Mean E2EL (ms)"):
        vkey, key, stat = PRINTED[label]
        v = [r[vkey] for r in results]
        b = [ours(s, key, stat) for s in ours_runs]
        noise = max(abs(v[0] - v[1]), abs(b[0] - b[1]))
        gap = abs(sum(v) / 2 - sum(b) / 2)
        report[label] = {"vllm": v, "burstbench": b, "noise": noise, "gap": gap}
        # 1 ms floor: both clients time the same stream on one loaded 2-core machine
        assert gap <= 2 * noise + 1.0, report[label]
    (tmp_path / "side_by_side.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    assert all(s["completed"] == N for s in ours_runs)
