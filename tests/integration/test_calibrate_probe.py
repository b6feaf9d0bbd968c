"""``calibrate --probe URL`` against the live reference server with a hidden CPU-like engine.

The hidden engine is the small CPU model of the real-vLLM tests (tests/data) on the
measured CPU profile with a step overhead 5x the preset and a per-sequence cost of 2 ms
(the kind of engine issue 12 is about). The probe's phases are recorded by the real load
generator; the fit on the prefill and decode phases must then predict the mixed phase
(prefills and decodes in the same steps), which it never saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
from url_process import url_process

from burstbench.backends.hardware.profile import load_hardware
from burstbench.twin.probe import BATCHES, PROMPTS
from burstbench.twin.spec import apply_overrides

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL, HW = str(DATA / "tiny-llama-4l-config.json"), str(DATA / "cpu-x86_64-2t-profile.json")


def test_probe_records_its_phases_and_the_fit_predicts_the_mixed_one(tmp_path):
    base = load_hardware(HW)
    hidden = apply_overrides(base, {"step_overhead_s": 5 * base.step_overhead_s,
                                    "layer_overhead_s": 5 * base.layer_overhead_s, "seq_overhead_s": 2e-3})
    hidden.write(tmp_path / "hidden.json")
    out = tmp_path / "probe.duckdb"
    with url_process("burstbench", "serve", "--model", MODEL, "--hardware", str(tmp_path / "hidden.json"),
                     "--port", "0", "--no-prefix-caching") as (url, _):
        proc = subprocess.run([sys.executable, "-m", "burstbench", "calibrate", str(out), "--probe", url,
                               "--model", MODEL, "--hardware", HW, "--holdout", "probe-mixed",
                               "--max-evals", "60", "-o", str(tmp_path / "twin.yaml"), "--json"],
                              capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(out), read_only=True)
    try:
        runs = dict(con.execute("SELECT label, run_id FROM runs").fetchall())
        lengths = con.execute("SELECT DISTINCT input_tokens FROM requests r JOIN runs u USING (run_id) "
                              "WHERE u.label = 'probe-prefill' ORDER BY 1").fetchall()
    finally:
        con.close()
    assert set(runs) == {"probe-prefill", "probe-mixed", *(f"probe-decode-{b}" for b in BATCHES)}
    assert [r[0] for r in lengths] == list(PROMPTS)  # each of them, at least MIN_REQUESTS in all
    doc = json.loads(proc.stdout)
    # the mixed phase, named as --holdout, was recorded but not fitted: the per-sequence
    # cost was found from the others and the unseen phase is predicted
    assert doc["provenance"]["seq_overhead_test"]["kept"], doc["provenance"]["seq_overhead_test"]
    for metric, qs in doc["errors"]["holdout"]["percentiles"].items():
        assert abs(qs["p50"]["rel_err"]) <= 0.10, (metric, qs)
