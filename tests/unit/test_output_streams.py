"""Results on stdout, progress and notes on stderr, for every command that shows a result.

``burstbench trace stats T > f`` must leave the table in f; with ``--json`` stdout holds
only the JSON object. Progress written to a log prints one line per interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from burstbench.cli import main


def test_trace_stats_and_fit_tables_go_to_stdout(burstgpt_v1: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["trace", "stats", str(burstgpt_v1)]) == 0
    cap = capsys.readouterr()
    assert "mean rate (req/s)" in cap.out and "inter-arrival CV" in cap.out and "mean rate" not in cap.err
    assert main(["trace", "stats", str(burstgpt_v1), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["requests"] > 0 and "mean rate" in cap.err  # the table beside the JSON
    spec = tmp_path / "spec.yaml"
    assert main(["trace", "fit", str(burstgpt_v1), "-o", str(spec)]) == 0
    cap = capsys.readouterr()
    assert "arrivals (n=" in cap.out and "AIC" in cap.out and f"wrote {spec}" in cap.err
    assert "wrote" not in cap.out


def test_profile_list_goes_to_stdout(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "--list"]) == 0
    cap = capsys.readouterr()
    assert "h100-sxm" in cap.out and cap.err == ""


def test_profile_shows_progress_in_a_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Off a terminal the bar is invisible; each measurement step gets one line on stderr instead."""
    assert main(["profile", "--quick", "-o", str(tmp_path / "hw.json")]) == 0
    cap = capsys.readouterr()
    steps = [ln for ln in cap.err.splitlines() if ln.startswith("profile: ")]
    assert any("GEMM" in s for s in steps) and any("bandwidth" in s for s in steps)
    assert len(steps) == len(set(steps)) and steps[-1].endswith("(100% done)")
    assert "η_F(tokens)" in cap.out and "profile:" not in cap.out


def test_non_tty_progress_is_one_line_per_interval(capsys: pytest.CaptureFixture) -> None:
    from burstbench.loadgen.progress import ProgressView, Totals

    totals = Totals()
    view = ProgressView(target_rate=10.0, total=100, plain_every_s=0.0)
    assert view.plain and not view.enabled  # pytest's stderr is not a terminal
    with view:
        for k in range(1, 4):
            totals.update(0, {"sent": 10 * k, "completed": 9 * k, "failed": 0, "in_flight": 1})
            view.update(float(k), totals, 1.5, 20.0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(ln.startswith("progress: elapsed ") for ln in lines)
    assert "sent 30/100" in lines[-1] and "completed 27" in lines[-1] and "lag p99 1.50 ms" in lines[-1]
    slow = ProgressView(target_rate=None, total=None, plain_every_s=3600.0)
    slow.update(1.0, totals, 1.0, 1.0)
    slow.update(2.0, totals, 1.0, 1.0)  # within the interval: nothing more
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_every_serve_and_simulate_option_has_help() -> None:
    from burstbench.backends.reference.cli import serve, simulate

    for cmd in (serve, simulate):
        bare = [p.name for p in cmd.params if getattr(p, "help", None) in (None, "") and p.param_type_name == "option"]
        assert bare == [], f"{cmd.name}: options without help: {bare}"


def test_analyze_result_on_stdout_notes_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_importers import VLLM

    old = {k: v for k, v in VLLM.items() if k not in ("start_times", "queue_times")}
    src = tmp_path / "old.json"
    src.write_text(json.dumps(old), encoding="utf-8")
    db = tmp_path / "r.duckdb"
    assert main(["analyze", "--import", str(src), "-o", str(db), "--label", "old-vllm"]) == 0
    cap = capsys.readouterr()
    assert "Serving Benchmark Result" in cap.out and "(old-vllm)" in cap.out
    assert "Serving" not in cap.err and cap.err.count("start_times") == 1 and "note: old-vllm:" in cap.err
    assert main(["analyze", str(db), "--run", "old-vllm"]) == 0  # the stored flag, said again later
    cap = capsys.readouterr()
    assert "Peak concurrent requests" in cap.out and "no start_times" in cap.err and "no start_times" not in cap.out
    assert main(["analyze", str(db), "--list"]) == 0
    cap = capsys.readouterr()
    assert "old-vllm" in cap.out and "meta-llama/Llama-3.1-8B-Instruct" in cap.out and "import:vllm" in cap.out
    assert main(["analyze", str(db), "--list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert row["label"] == "old-vllm" and row["requests"] == 4


def test_simulate_and_plan_results_go_to_stdout(burstgpt_v1: Path, azure_conv: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", str(burstgpt_v1), "--model", "llama-3.1-8b", "--hardware", "h100-sxm",
                 "-o", str(tmp_path / "s.duckdb"), "--no-chunks"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("simulated ") and "simulated" not in cap.err
    assert main(["plan", str(azure_conv), "--slo", "ttft=500ms,tpot=50ms", "--hardware", "l40s",
                 "--price", "l40s=0.86", "--tp", "1", "--max-requests", "100"]) == 0
    cap = capsys.readouterr()
    assert "peak:" in cap.out and "candidates (target" in cap.out and "peak:" not in cap.err
