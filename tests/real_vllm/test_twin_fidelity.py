"""The twin predicts a real vLLM (issue 12): calibrate with the probe, predict a held-out run.

The twin is fitted on ``calibrate --probe``'s designed phases against the session's real
``vllm serve`` (single requests over prompt lengths, decode batches of 1, 4 and 16, a
mixed phase; ~150 short requests), then predicts a closed-loop run of the issue's length
mix (prompts of 40/300/900 tokens, answers of 16/64/160) at 2 users that it never saw,
simulated as a closed loop of 2 users. Two identical runs of that mix first: their
difference is the machine's noise. The probe, not runs of the mix, because it identified
the engine better on the idle machine (benchmarks/bench_fidelity.py --probe, 4 layers:
held-out MAPE at p50/p90 TTFT 23%, TPOT 12%, E2EL 14% against 25%, 26%, 26% for a twin
fitted on runs at 1 and 4 users) and takes about a minute.

The twin starts from the idle machine's profile (tests/data/cpu-x86_64-2t-idle-profile.json)
with the server's own scheduler limits (vLLM's CPU defaults for the API server: 128
sequences, 2048 batched tokens; block size 128), and must predict the held-out run's
TTFT, TPOT, ITL and E2EL within 10% at p50 and 20% at p90 (``twin.fidelity``). Where the two
identical runs differ by more than a bound, that metric is reported with its figures and
not asserted (a shared machine moves more than the bounds); every other one is asserted.
When no metric can be asserted the test skips with the figures, so a noisy machine never
shows as a pass.

Measured by hand (idle machine, load 2.7-3.4 from the server and the client themselves,
224 s): noise TTFT 12.7% / 12.9%, TPOT 8.1% / 9.5%, E2EL 4.4% / 15.0%; the twin was within
on TPOT p90 (-14.4%), E2EL p50 (-6.6%) and p90 (-15.5%) and missed TTFT p90 (-21.7%) and
TPOT p50 (-18.9%), with TTFT p50 +17.2% beside noise above its bound.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench.testing.vllm_cpu import BLOCK_SIZE, model_dir
from burstbench.traces.schema import Trace, conform, write_trace
from burstbench.twin.calibrate import calibrate, read_run
from burstbench.twin.fidelity import judge, run_to_run
from burstbench.twin.probe import phases, run_probe
from burstbench.twin.vsim import Sched

# Issue 12's acceptance, not met yet (above): an asserting test that fails is kept out of
# CI; run it by hand with `pytest -m fidelity -rs`.
pytestmark = pytest.mark.fidelity

HW = Path(__file__).resolve().parents[1] / "data" / "cpu-x86_64-2t-idle-profile.json"
N = 40


def _record(url: str, trace: Path, out: Path, label: str, users: int, n: int, seed: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "burstbench", "run", "--url", url, "--trace", str(trace),
                           "-o", str(out), "--concurrency", str(users), "--requests", str(n), "--seed", str(seed),
                           "--label", label, "--tokenizer", str(model_dir()), "--quiet", "--timeout", "300"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(900)  # ~150 probe requests and four runs of <= 40: ~3 min on a quiet 2-core machine
def test_the_twin_predicts_a_held_out_run(vllm_server, tmp_path):
    rng = np.random.default_rng(7)
    trace = write_trace(Trace(conform(pl.DataFrame({
        "arrival_s": np.arange(N, dtype=np.float64),
        "input_tokens": np.array([40, 300, 900])[rng.integers(0, 3, N)],
        "output_tokens": np.array([16, 64, 160])[rng.integers(0, 3, N)]}))), tmp_path / "mix.parquet")
    out = tmp_path / "r.duckdb"
    # own seeds everywhere: the same prompt text twice would hit vLLM's prefix cache
    for label, users, n, seed in (("warmup", 2, 8, 90), ("noise-a", 2, N, 11), ("noise-b", 2, N, 12),
                                  ("hold-2", 2, N, 3)):
        _record(vllm_server.url, trace, out, label, users, n, seed)
    probe = run_probe(vllm_server.url, out, tokenizer=str(model_dir()), max_context=4096, progress=False)
    assert [label for label, _ in probe] == [label for label, *_ in phases(4096)]
    cal = calibrate(out, [rid for _, rid in probe], model=str(model_dir() / "config.json"), hardware=str(HW),
                    sched=Sched(max_num_seqs=128, max_num_batched_tokens=2048, block_size=BLOCK_SIZE),
                    holdout="hold-2")
    assert read_run(out, "hold-2").users == 2  # predicted as the closed loop it was
    verdicts = judge(cal.spec.errors["holdout"]["percentiles"], run_to_run(out, "noise-a", "noise-b"))
    assert len(verdicts) == 8, verdicts  # TTFT, TPOT, ITL, E2EL at p50 and p90
    table = "\n".join(map(str, verdicts))
    print(table)  # with -s; the assertion and the skip carry it too
    for v in verdicts:
        if not v.checkable:
            warnings.warn(f"twin fidelity: {v}", stacklevel=1)
    checked = [v for v in verdicts if v.checkable]
    assert all(v.ok for v in checked), f"the twin missed a held-out bound:\n{table}\ntwin: {cal.spec.uncertainty}"
    if not checked:
        pytest.skip(f"every metric's run-to-run noise is above its bound, nothing asserted:\n{table}")
