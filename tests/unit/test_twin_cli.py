"""calibrate / whatif / plan end to end through the CLI on the shipped traces, and bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from burstbench.backends.reference.simulator import simulate
from burstbench.cli import main
from burstbench.traces.schema import Trace, conform, load_trace, write_trace
from burstbench.traces.synth import replay


@pytest.fixture(scope="module")
def measured(azure_conv, tmp_path_factory):
    """A results file with two simulated 'measured' runs on an Azure slice, and the slice as Parquet."""
    d = tmp_path_factory.mktemp("twincli")
    sl = replay(load_trace(azure_conv), window=(0, 60))
    trace = d / "slice.parquet"
    write_trace(sl, trace)
    out = d / "runs.duckdb"
    a = simulate(sl, model="llama-3.1-8b", hardware="l40s", out=out, label="fit", record_chunks=False)
    b = simulate(replay(sl, rate=6.0), model="llama-3.1-8b", hardware="l40s", out=out, label="hold",
                 record_chunks=False)
    return d, out, trace, a.run_id, b.run_id


@pytest.fixture(scope="module")
def twin_file(measured):
    d, out, _, fit, hold = measured
    twin = d / "twin.yaml"
    assert main(["calibrate", str(out), "--run", fit, "--holdout", hold, "--model", "llama-3.1-8b",
                 "--hardware", "l40s", "--max-evals", "40", "-o", str(twin)]) == 0
    return twin


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_calibrate_writes_a_twin_and_json(measured, twin_file, capsys):
    _, out, _, fit, hold = measured
    spec = yaml.safe_load(twin_file.read_text())
    assert spec["format"] == "burstbench.twin/1" and spec["model"] == "llama-3.1-8b"
    assert spec["provenance"]["run_id"] == fit and spec["provenance"]["holdout_run_id"] == hold
    assert set(spec["overrides"]) >= {"bandwidth_efficiency_scale", "flops_efficiency_scale", "step_overhead_s"}
    # the runs came from the l40s preset itself: the fit must stay near the preset (scales ~1)
    assert spec["overrides"]["bandwidth_efficiency_scale"] == pytest.approx(1.0, rel=0.1)
    assert abs(spec["errors"]["fit"]["max_abs_rel_err_p50"]) < 0.05
    # --json prints the same document on stdout
    assert main(["calibrate", str(out), "--run", fit, "--model", "llama-3.1-8b", "--hardware", "l40s",
                 "--max-evals", "10", "-o", str(twin_file.parent / "t2.yaml"), "--json"]) == 0
    doc = _json(capsys)
    assert doc["model"] == "llama-3.1-8b" and "holdout" not in doc["errors"]


def test_whatif_h200_beats_l40s(measured, twin_file, capsys):
    _, _, trace, _, _ = measured
    res_db = twin_file.parent / "whatif.duckdb"
    assert main(["whatif", str(twin_file), "--trace", str(trace), "--hardware", "h200", "--slo",
                 "ttft=300ms,tpot=40ms", "-o", str(res_db), "--json"]) == 0
    doc = _json(capsys)
    b, v = doc["baseline"], doc["variant"]
    assert b["deployment"]["instances"][0]["hardware"] == "l40s"
    assert v["deployment"]["instances"][0]["hardware"] == "h200"
    # 4.8 TB/s vs 0.864 TB/s: decode is bandwidth-bound, so every TPOT percentile drops
    assert v["tpot_ms"]["p50"] < b["tpot_ms"]["p50"] / 2
    assert v["max_goodput_rate"] > b["max_goodput_rate"]
    steps = v["search"]["steps"]
    assert any(s["passed"] for s in steps) and any(not s["passed"] for s in steps)
    # every search step is a run in the results file, readable by analyze
    assert main(["analyze", str(res_db), "--run", v["run_id"], "--json"]) == 0
    assert _json(capsys)["requests"] == v["requests"]


def test_whatif_disagg_reports_goodput_per_gpu(measured, twin_file, capsys):
    _, _, trace, _, _ = measured
    assert main(["whatif", str(twin_file), "--trace", str(trace), "--replicas", "2", "--layout", "disagg",
                 "--prefill", "1", "--decode", "1", "--slo", "ttft=400ms,tpot=60ms", "--json"]) == 0
    doc = _json(capsys)
    v = doc["variant"]
    assert v["deployment"]["layout"] == "disagg" and v["gpus"] == 2
    assert v["goodput_per_gpu"] == pytest.approx(v["max_goodput_rate"] / 2)
    # DistServe's comparison: a colocated fleet of as many GPUs (here --replicas 2) on the same trace
    assert doc["baseline"]["deployment"]["layout"] == "colocated" and doc["baseline"]["gpus"] == 2
    assert doc["baseline"]["requests"] == v["requests"]
    assert doc["baseline"]["goodput_per_gpu"] == pytest.approx(doc["baseline"]["max_goodput_rate"] / 2)
    assert doc["goodput_per_gpu_ratio"] == pytest.approx(v["goodput_per_gpu"] / doc["baseline"]["goodput_per_gpu"])


def test_plan_picks_the_cheapest_meeting_fleet(azure_conv, capsys):
    assert main(["plan", str(azure_conv), "--slo", "ttft=500ms,tpot=50ms", "--hardware", "a100-80g,l40s",
                 "--price", "a100-80g=1.79,l40s=0.86", "--tp", "1", "--max-requests", "300", "--json"]) == 0
    doc = _json(capsys)
    best = doc["best"]
    assert best is not None and best["meets_target"]
    cands = doc["candidates"]
    assert all(c["usd_per_hour"] >= best["usd_per_hour"] for c in cands if c["meets_target"])
    # evidence of minimality: one instance fewer of each type was simulated and missed the target
    for t in doc["cheapest_per_type"]:
        if t["instances"] > 1:
            fewer = [c for c in cands if c["fleet"] == [{"hardware": t["hardware"], "tp": 1, "instances": t["instances"] - 1}]]
            assert fewer and not fewer[0]["meets_target"]
    assert doc["load"]["peak_rate"] >= doc["load"]["mean_rate"]


# -- bad input -------------------------------------------------------------------------------


def test_calibrate_missing_run(measured, tmp_path, capsys):
    _, out, _, _, _ = measured
    assert main(["calibrate", str(out), "--run", "nope", "--model", "llama-3.1-8b", "--hardware", "l40s",
                 "-o", str(tmp_path / "t.yaml")]) == 4
    err = capsys.readouterr().err
    assert "run 'nope' not found" in err and err.count("\n") == 1
    assert not (tmp_path / "t.yaml").exists()


def test_calibrate_missing_store(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "none.duckdb"), "--run", "x", "--model", "llama-3.1-8b",
                 "--hardware", "l40s", "-o", str(tmp_path / "t.yaml")]) == 4
    assert "no such results file" in capsys.readouterr().err


def test_whatif_bad_twin_names_the_field(measured, tmp_path, capsys):
    _, _, trace, _, _ = measured
    bad = tmp_path / "twin.yaml"
    bad.write_text("model: llama-3.1-8b\nhardware: l40s\noverrides:\n  bandwidth_efficiency_scale: -2\n")
    assert main(["whatif", str(bad), "--trace", str(trace)]) == 3
    err = capsys.readouterr().err
    assert "field 'overrides.bandwidth_efficiency_scale'" in err and str(bad) in err


def test_whatif_missing_trace(twin_file, tmp_path, capsys):
    assert main(["whatif", str(twin_file), "--trace", str(tmp_path / "none.parquet")]) == 3
    assert "no such trace file" in capsys.readouterr().err


def test_whatif_model_does_not_fit(measured, twin_file, capsys):
    _, _, trace, _, _ = measured
    # a 70B model in bf16 does not fit one L40S: the twin says so instead of simulating nonsense
    tw = yaml.safe_load(twin_file.read_text())
    tw["model"] = "llama-3.1-70b"
    p = twin_file.parent / "big.yaml"
    p.write_text(yaml.safe_dump(tw))
    rc = main(["whatif", str(p), "--trace", str(trace), "--tp", "8"])
    assert rc != 0
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--price", "a100-80g=cheap"], "is not TYPE=USD_PER_GPU_HOUR"),
    (["--price", "h200=3"], "not in --hardware"),
    (["--price", "a100-80g=1.8"], "no price for 'l40s'"),
    (["--tp", "one"], "whole numbers"),
    (["--slo", "ttft=500"], "no unit"),
])
def test_plan_bad_flags(azure_conv, capsys, args, message):
    base = ["plan", str(azure_conv), "--slo", "ttft=500ms", "--hardware", "a100-80g,l40s"]
    rc = main(base + args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_plan_unknown_hardware(azure_conv, capsys):
    assert main(["plan", str(azure_conv), "--slo", "ttft=500ms", "--hardware", "tpu-v9"]) == 2
    assert "unknown hardware 'tpu-v9'" in capsys.readouterr().err


def test_plan_on_an_empty_trace(tmp_path, capsys):
    p = tmp_path / "empty.parquet"
    write_trace(Trace(conform(pl.DataFrame({"arrival_s": [], "input_tokens": [], "output_tokens": []},
                                           schema={"arrival_s": pl.Float64, "input_tokens": pl.Int64,
                                                   "output_tokens": pl.Int64})), {}), p)
    rc = main(["plan", str(p), "--slo", "ttft=500ms", "--hardware", "l40s", "--price", "l40s=1"])
    assert rc == 3
    assert "empty" in capsys.readouterr().err


def test_calibrate_limit_must_be_a_number_or_auto(measured, tmp_path, capsys):
    _, out, _, fit, _ = measured
    code = main(["calibrate", str(out), "--run", fit, "--model", "llama-3.1-8b", "--hardware", "l40s",
                 "--max-num-seqs", "lots", "-o", str(tmp_path / "t.yaml")])
    assert code == 2
    assert "--max-num-seqs must be a positive integer or 'auto', got 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "t.yaml").exists()


def test_calibrate_on_two_runs(measured, tmp_path, capsys):
    _, out, _, fit, hold = measured
    assert main(["calibrate", str(out), "--run", fit, "--run", hold, "--model", "llama-3.1-8b", "--hardware",
                 "l40s", "--max-evals", "20", "-o", str(tmp_path / "t.yaml"), "--json"]) == 0
    doc = _json(capsys)
    assert doc["provenance"]["run_ids"] == [fit, hold] and doc["errors"]["fit_more"][0]["run_id"] == hold


def test_whatif_band_from_the_calibrations_uncertainty(measured, twin_file, capsys, tmp_path):
    _, _, trace, _, _ = measured
    assert main(["whatif", str(twin_file), "--trace", str(trace), "--hardware", "h200", "--slo",
                 "ttft=300ms,tpot=40ms", "--no-search", "--band", "6", "--json"]) == 0
    doc = _json(capsys)
    for side in ("baseline", "variant"):
        bd = doc[side]["band"]
        assert bd["draws"] == 6 and 0 <= bd["slo_attainment"][0] <= bd["slo_attainment"][1] <= 1
        lo, hi = bd["tpot_ms"]["p50"]
        assert lo < hi  # the draws differ: the calibration left some uncertainty
    (tmp_path / "w.json").write_text(json.dumps(doc))
    assert main(["report", "--twin", str(tmp_path / "w.json"), "-o", str(tmp_path / "w.html")]) == 0
    assert "band of 6 draws" in (tmp_path / "w.html").read_text()
    # a twin written by hand carries no covariance: --band says what to do
    spec = yaml.safe_load(twin_file.read_text())
    del spec["provenance"]["covariance"]
    (tmp_path / "hand.yaml").write_text(yaml.safe_dump(spec))
    assert main(["whatif", str(tmp_path / "hand.yaml"), "--trace", str(trace), "--band", "4", "--no-search"]) == 2
    assert "write it with 'burstbench calibrate' to use --band" in capsys.readouterr().err
