"""Importers: small hand-made files in vLLM's, GuideLLM's and AIPerf's real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from burstbench.analysis.importers import detect_format, import_results
from burstbench.analysis.metrics import open_store, summarize
from burstbench.errors import InputError

# vLLM `bench serve --save-result --save-detailed`: 4 requests, one failed. The summary
# fields are what vLLM's calculate_metrics gives for these timings, worked by hand:
# ttfts (ok) 250, 500, 125 ms; TPOT only for outputs > 1: (500-250)/2 = 125, (750-500)/1 = 250;
# ITL pooled 125, 125, 250; E2EL 500, 750, 125; duration 2 s.
VLLM = {
    "date": "20250101-120000",
    "endpoint_type": "openai",
    "backend": "openai",
    "label": None,
    "model_id": "meta-llama/Llama-3.1-8B-Instruct",
    "tokenizer_id": "meta-llama/Llama-3.1-8B-Instruct",
    "num_prompts": 4,
    "request_rate": "inf",
    "burstiness": 1.0,
    "max_concurrency": None,
    "duration": 2.0,
    "completed": 3,
    "failed": 1,
    "total_input_tokens": 35,
    "total_output_tokens": 6,
    "request_throughput": 1.5,
    "request_goodput": None,
    "output_throughput": 3.0,
    "total_token_throughput": 20.5,
    "max_output_tokens_per_s": 4.0,
    "max_concurrent_requests": 2,
    "input_lens": [10, 20, 30, 5],
    "output_lens": [3, 2, 0, 1],
    "ttfts": [0.25, 0.5, 0.0, 0.125],
    "itls": [[0.125, 0.125], [0.25], [], []],
    "latencies": [0.5, 0.75, 0.0, 0.125],
    "start_times": [100.0, 100.5, 100.75, 101.0],
    "queue_times": [0.0, 0.0, 0.0, 0.0],
    "generated_texts": ["a b c", "d e", "", "f"],
    "errors": ["", "", "Bad Request: prompt too long", ""],
    "mean_ttft_ms": 875 / 3,
    "median_ttft_ms": 250.0,
    "std_ttft_ms": 155.9023911155809,
    "p99_ttft_ms": 495.0,
    "mean_tpot_ms": 187.5,
    "median_tpot_ms": 187.5,
    "p99_tpot_ms": 248.75,
    "mean_itl_ms": 500 / 3,
    "median_itl_ms": 125.0,
    "p99_itl_ms": 247.5,
    "mean_e2el_ms": 1375 / 3,
    "median_e2el_ms": 500.0,
    "p99_e2el_ms": 745.0,
}


def write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


def test_vllm_import_reproduces_vllms_own_numbers(tmp_path: Path) -> None:
    src = write(tmp_path, "vllm-result.json", json.dumps(VLLM))
    assert detect_format(src) == "vllm"
    db = tmp_path / "r.duckdb"
    (rid,) = import_results(src, db)
    s = summarize(db, rid)
    assert s["backend"] == "import:vllm" and s["model"] == VLLM["model_id"]
    assert (s["completed"], s["failed"]) == (VLLM["completed"], VLLM["failed"])
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert s[key] == pytest.approx(VLLM[key]), key
    for m in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p99"):
            assert s[f"{m}_ms"][stat] == pytest.approx(VLLM[f"{stat}_{m}_ms"]), f"{m}.{stat}"
    assert s["ttft_ms"]["std"] == pytest.approx(VLLM["std_ttft_ms"])
    assert s["peak_concurrency"] == VLLM["max_concurrent_requests"]
    assert s["target_rate"] is None  # "inf" is not a target rate
    con = open_store(db)
    try:
        row = con.execute("SELECT status, error_message FROM requests WHERE run_id = ? AND request_id = 2", [rid]).fetchone()
        assert row == ("error", "Bad Request: prompt too long")
        started, scen = con.execute("SELECT CAST(started_at AS VARCHAR), scenario FROM runs WHERE run_id = ?", [rid]).fetchone()
        assert started.startswith("2025-01-01") and json.loads(scen)["reported"]["mean_ttft_ms"] == pytest.approx(875 / 3)
    finally:
        con.close()


def test_vllm_without_details_or_truncated_is_refused(tmp_path: Path) -> None:
    summary_only = {k: v for k, v in VLLM.items() if not isinstance(v, list)}
    src = write(tmp_path, "s.json", json.dumps(summary_only))
    with pytest.raises(InputError, match="--save-detailed"):
        import_results(src, tmp_path / "x.duckdb")
    bad = dict(VLLM, itls=VLLM["itls"][:3])
    with pytest.raises(InputError, match=r"field 'itls'.*3 entries"):
        import_results(write(tmp_path, "b.json", json.dumps(bad)), tmp_path / "x.duckdb", fmt="vllm")
    wrong = dict(VLLM, ttfts=[0.25, "fast", 0.0, 0.1])
    with pytest.raises(InputError, match=r"ttfts\[1\]"):
        import_results(write(tmp_path, "w.json", json.dumps(wrong)), tmp_path / "x.duckdb", fmt="vllm")
    with pytest.raises(InputError, match=r"start_times\[2\].*missing"):
        import_results(write(tmp_path, "n.json", json.dumps(dict(VLLM, start_times=[100.0, 100.5, None, 101.0]))),
                       tmp_path / "x.duckdb", fmt="vllm")
    with pytest.raises(InputError, match="is empty"):
        import_results(write(tmp_path, "e.json", ""), tmp_path / "x.duckdb")
    with pytest.raises(InputError, match=r"t\.json:1.*not valid JSON"):
        import_results(write(tmp_path, "t.json", "{\"ttfts\": [1,"), tmp_path / "x.duckdb", fmt="vllm")
    with pytest.raises(InputError, match="not a recognised result file"):
        import_results(write(tmp_path, "o.json", json.dumps({"hello": 1})), tmp_path / "x.duckdb")
    assert not (tmp_path / "x.duckdb").exists()  # nothing half-written


# GuideLLM 0.2/0.3 layout: times on each request, scheduler_info.targeted_start_time.
GUIDELLM_OLD = {
    "benchmarks": [
        {
            "type_": "generative_benchmark",
            "run_id": "r1",
            "args": {"strategy": {"type_": "constant", "rate": 2.0}},
            "start_time": 1700000000.0,
            "end_time": 1700000004.0,
            "duration": 4.0,
            "requests": {
                "successful": [
                    {"type_": "generative_text_response", "request_id": "a", "request_type": "text_completions",
                     "scheduler_info": {"targeted_start_time": 1700000000.0}, "prompt": "x", "output": "y",
                     "prompt_tokens": 100, "output_tokens": 5, "start_time": 1700000000.25,
                     "end_time": 1700000001.25, "first_token_time": 1700000000.75, "last_token_time": 1700000001.25},
                    {"type_": "generative_text_response", "request_id": "b", "request_type": "text_completions",
                     "scheduler_info": {"targeted_start_time": 1700000000.5}, "prompt": "x", "output": "y",
                     "prompt_tokens": 200, "output_tokens": 3, "start_time": 1700000000.5,
                     "end_time": 1700000001.0, "first_token_time": 1700000000.75, "last_token_time": 1700000001.0},
                ],
                "errored": [
                    {"type_": "generative_text_error", "request_id": "c", "request_type": "text_completions",
                     "scheduler_info": {"targeted_start_time": 1700000001.0}, "prompt": "x", "output": None,
                     "prompt_tokens": 50, "output_tokens": 0, "start_time": 1700000001.0, "end_time": 1700000001.5,
                     "first_token_time": None, "last_token_time": None, "error": "500 Internal Server Error"},
                ],
                "incomplete": [],
            },
        }
    ]
}

# GuideLLM 0.4+ layout: info.timings, input_metrics/output_metrics.
GUIDELLM_NEW = {
    "benchmarks": [
        {
            "config": {"strategy": {"type_": "throughput"}},
            "start_time": 10.0,
            "end_time": 12.0,
            "requests": {
                "successful": [
                    {"type_": "generative_request_stats", "request_id": "a",
                     "info": {"conversation_id": "conv1", "turn_index": 0,
                              "timings": {"targeted_start": 10.0, "request_start": 10.0, "first_token_iteration": 10.5,
                                          "first_output_token_iteration": 10.75, "last_token_iteration": 11.5,
                                          "token_iterations": 5, "request_end": 11.5, "resolve_end": 11.5}},
                     "input_metrics": {"text_tokens": 64, "total_tokens": 64},
                     "output_metrics": {"text_tokens": 9, "total_tokens": 9}},
                ],
                "errored": [],
                "incomplete": [
                    {"type_": "generative_request_stats", "request_id": "b",
                     "info": {"timings": {"request_start": 11.0, "request_end": 12.0, "resolve_end": 12.0}},
                     "input_metrics": {"total_tokens": 32}, "output_metrics": {"total_tokens": None}},
                ],
            },
        }
    ]
}


def test_guidellm_both_layouts(tmp_path: Path) -> None:
    db = tmp_path / "g.duckdb"
    old = write(tmp_path, "benchmarks.json", json.dumps(GUIDELLM_OLD))
    assert detect_format(old) == "guidellm"
    (rid,) = import_results(old, db)
    s = summarize(db, rid)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert s["ttft_ms"]["mean"] == pytest.approx((500 + 250) / 2)
    # TPOT = (E2EL - TTFT) / (out - 1): (1000-500)/4 = 125 and (500-250)/2 = 125
    assert s["tpot_ms"]["mean"] == pytest.approx(125.0)
    assert s["schedule_lag_ms"]["max"] == pytest.approx(250.0)
    assert s["itl_ms"]["mean"] is None  # GuideLLM records no per-chunk times: not invented
    assert s["request_throughput"] == pytest.approx(0.5) and s["target_rate"] == 2.0
    (rid2,) = import_results(write(tmp_path, "new.json", json.dumps(GUIDELLM_NEW)), db, label="guide-new")
    s2 = summarize(db, rid2)
    assert s2["label"] == "guide-new" and s2["completed"] == 1 and s2["failed_by_status"]["cancelled"] == 1
    assert s2["ttft_ms"]["p50"] == pytest.approx(500.0) and s2["ttfvt_ms"]["p50"] == pytest.approx(750.0)
    assert s2["tpot_ms"]["p50"] == pytest.approx(1000 / 8)
    assert s2["itl_request_mean_ms"]["p50"] == pytest.approx(1000 / 4)  # 5 iterations over 1 s
    assert s2["duration_s"] == pytest.approx(2.0)
    broken = {"benchmarks": [{"requests": {"successful": [{"request_id": "a", "prompt_tokens": 3}]}}]}
    with pytest.raises(InputError, match="start time"):
        import_results(write(tmp_path, "broken.json", json.dumps(broken)), tmp_path / "b.duckdb")


def aiperf_line(start_ns: int, *, ttft_ms=None, icl=None, lat_ms=None, isl=100, osl=None, error=None,
                cancelled=False, phase="profiling", unit="ms") -> str:
    metrics = {"input_sequence_length": {"value": isl, "unit": "tokens"}}
    if ttft_ms is not None:
        metrics["time_to_first_token"] = {"value": ttft_ms, "unit": unit}
        metrics["time_to_first_output_token"] = {"value": ttft_ms, "unit": unit}
        metrics["inter_chunk_latency"] = {"value": icl or [], "unit": unit}
        metrics["request_latency"] = {"value": lat_ms, "unit": unit}
        metrics["output_sequence_length"] = {"value": osl, "unit": "tokens"}
    if error:
        metrics = {"error_isl": {"value": isl, "unit": "tokens"}}
    end = start_ns + int((lat_ms or 10) * 1e6)
    return json.dumps({
        "metadata": {"session_num": 0, "x_request_id": "r", "x_correlation_id": "c", "conversation_id": "c",
                     "turn_index": 0, "request_start_ns": start_ns, "request_ack_ns": None, "request_end_ns": end,
                     "worker_id": "worker_1", "record_processor_id": "rp", "benchmark_phase": phase,
                     "was_cancelled": cancelled, "cancellation_time_ns": end if cancelled else None},
        "metrics": metrics,
        "error": error,
    })


def test_aiperf_jsonl(tmp_path: Path) -> None:
    t0 = 1759813207000000000
    lines = [
        aiperf_line(t0, ttft_ms=250.0, icl=[125.0, 125.0], lat_ms=500.0, osl=3),
        aiperf_line(t0 + 500_000_000, ttft_ms=100.0, icl=[50.0], lat_ms=150.0, osl=2),
        aiperf_line(t0 + 600_000_000, error={"code": 499, "type": "RequestCancellationError",
                                              "message": "cancelled"}, cancelled=True),
        aiperf_line(t0 + 700_000_000, error={"code": 500, "type": "InternalServerError", "message": "boom"}),
        aiperf_line(t0 - 1_000_000_000, ttft_ms=5.0, icl=[], lat_ms=5.0, osl=1, phase="warmup"),
        "",
    ]
    src = write(tmp_path, "profile_export.jsonl", "\n".join(lines))
    db = tmp_path / "a.duckdb"
    (rid,) = import_results(src, db)
    s = summarize(db, rid)
    assert s["backend"] == "import:aiperf"
    assert (s["completed"], s["failed"]) == (2, 2)
    assert s["failed_by_status"] == {"error": 1, "timeout": 0, "cancelled": 1}
    assert s["ttft_ms"]["mean"] == pytest.approx(175.0)
    assert s["itl_ms"]["mean"] == pytest.approx(100.0)  # pooled 125, 125, 50
    assert s["tpot_ms"]["p50"] == pytest.approx((125 + 50) / 2)
    assert s["ttfvt_ms"]["p50"] == pytest.approx(175.0)
    con = open_store(db)
    try:
        assert con.execute("SELECT max(http_status) FROM requests WHERE run_id = ?", [rid]).fetchone()[0] == 500
    finally:
        con.close()
    # Units in nanoseconds are converted, not read as milliseconds.
    ns = write(tmp_path, "ns.jsonl", aiperf_line(t0, ttft_ms=250e6, icl=[125e6], lat_ms=375e6, osl=2, unit="ns"))
    (rid_ns,) = import_results(ns, db)
    assert summarize(db, rid_ns)["ttft_ms"]["p50"] == pytest.approx(250.0)


def test_aiperf_bad_lines_name_the_line(tmp_path: Path) -> None:
    t0 = 1759813207000000000
    good = aiperf_line(t0, ttft_ms=1.0, icl=[], lat_ms=1.0, osl=1)
    src = write(tmp_path, "p.jsonl", good + "\n{not json}\n")
    with pytest.raises(InputError, match=r"p\.jsonl:2"):
        import_results(src, tmp_path / "x.duckdb")
    src = write(tmp_path, "u.jsonl", aiperf_line(t0, ttft_ms=1.0, icl=[], lat_ms=1.0, osl=1, unit="fortnights"))
    with pytest.raises(InputError, match=r"u\.jsonl:1.*unit"):
        import_results(src, tmp_path / "x.duckdb")
    src = write(tmp_path, "m.jsonl", json.dumps({"metrics": {}}) + "\n")
    with pytest.raises(InputError, match=r"m\.jsonl:1.*metadata"):
        import_results(src, tmp_path / "x.duckdb")
    with pytest.raises(InputError, match="is empty"):
        import_results(write(tmp_path, "z.jsonl", "\n\n"), tmp_path / "x.duckdb")


def test_analyze_import_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from burstbench.cli import main

    src = write(tmp_path, "vllm-result.json", json.dumps(VLLM))
    db = tmp_path / "imp.duckdb"
    assert main(["analyze", "--import", str(src), "-o", str(db), "--slo", "ttft=300ms", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["imported"] == [out["run_id"]] and out["backend"] == "import:vllm"
    assert out["ttft_ms"]["median"] == pytest.approx(VLLM["median_ttft_ms"])
    # vLLM would say request goodput = 2 good (250, 125 ms) / 2 s
    assert out["goodput"]["request_goodput"] == pytest.approx(1.0)
    assert main(["analyze", "--import", str(tmp_path / "missing.json"), "-o", str(db)]) == 3
    assert "no such file" in capsys.readouterr().err
    assert main(["analyze", str(db), "--import", str(src), "-o", str(tmp_path / "other.duckdb")]) == 2


def test_wrong_types_deep_in_a_record_are_input_errors(tmp_path: Path) -> None:
    t0 = 1759813207000000000
    rec = json.loads(aiperf_line(t0, ttft_ms=1.0, icl=[], lat_ms=1.0, osl=1))
    rec["metadata"]["turn_index"] = "first"
    db = tmp_path / "x.duckdb"
    with pytest.raises(InputError, match=r"w\.jsonl.*wrong type"):
        import_results(write(tmp_path, "w.jsonl", json.dumps(rec)), db)
    if db.exists():  # no half-imported run left behind
        con = open_store(db)
        try:
            assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        finally:
            con.close()


# -- what a file gets wrong is said and stored, not drawn -------------------------------------


def test_vllm_without_start_times_has_no_timeline(tmp_path: Path) -> None:
    """Older vLLM files lack start_times: every request sits at t=0. The import says so, the
    run carries the flag, and nothing time-resolved is computed from a timeline not in the file."""
    from burstbench.analysis.slo import attainment_over_time
    from burstbench.errors import UsageError

    n = 300
    data = dict(VLLM, num_prompts=n, completed=n, failed=0, input_lens=[10] * n, output_lens=[2] * n,
                ttfts=[0.1 + i / 1000 for i in range(n)], itls=[[0.05]] * n, latencies=[0.2 + i / 1000 for i in range(n)],
                generated_texts=["a b"] * n, errors=[""] * n, duration=30.0)
    for k in ("start_times", "queue_times"):
        data.pop(k)
    said: list[str] = []
    db = tmp_path / "r.duckdb"
    (rid,) = import_results(write(tmp_path, "old-vllm.json", json.dumps(data)), db, warn=said.append)
    assert len(said) == 1 and "start_times" in said[0] and said[0].startswith("vllm:old-vllm")
    s = summarize(db, rid)
    assert s["timeline"] is False and s["notes"] and "start_times" in s["notes"][0]
    assert s["peak_concurrency"] is None and s["peak_in_flight"] is None  # not 300
    assert s["completed"] == n and s["ttft_ms"]["max"] == pytest.approx(399.0)  # per-request numbers stay
    con = open_store(db)
    try:
        with pytest.raises(UsageError, match="no timeline"):
            attainment_over_time(con, rid, {"ttft": 0.5}, 5.0)
    finally:
        con.close()
    # a file with start_times keeps its timeline, and says nothing
    said.clear()
    (rid2,) = import_results(write(tmp_path, "vllm.json", json.dumps(VLLM)), db, warn=said.append)
    s2 = summarize(db, rid2)
    assert said == [] and s2["timeline"] is True and s2["notes"] == [] and s2["peak_concurrency"] == 2


def test_aiperf_warmup_is_outside_the_duration_and_credits_give_schedule_lag(tmp_path: Path) -> None:
    """AIPerf's throughput divides by the profiling phase only; credit_issued_ns is the scheduled send."""
    t0 = 1759813207000000000
    ms = 1_000_000
    recs = []
    for k in range(5):  # warm-up: 5 requests over the first 10 s
        recs.append(json.loads(aiperf_line(t0 + k * 2000 * ms, ttft_ms=5.0, icl=[], lat_ms=5.0, osl=1, phase="warmup")))
    for k in range(10):  # profiling: 10 requests from 10 s, one every 100 ms, 50 ms each
        start = t0 + 10_000 * ms + k * 100 * ms
        rec = json.loads(aiperf_line(start, ttft_ms=20.0, icl=[10.0, 10.0], lat_ms=50.0, osl=3))
        rec["metadata"]["credit_issued_ns"] = start - (k + 1) * ms  # lag 1..10 ms
        rec["metadata"]["credit_received_ns"] = start - ms // 2
        recs.append(rec)
    for r in recs[:5]:
        r["metadata"]["credit_issued_ns"] = r["metadata"]["request_start_ns"]
    recs[4]["metadata"]["benchmark_phase"] = "ramp_up"  # newer AIPerf: ramp-up precedes profiling too
    src = write(tmp_path, "profile_export.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n")
    db = tmp_path / "a.duckdb"
    (rid,) = import_results(src, db)
    s = summarize(db, rid)
    # profiling window: first start 10.0 s to last end 10.9 + 0.05 s => 0.95 s for 10 requests
    assert s["completed"] == 10 and s["duration_s"] == pytest.approx(0.95)
    assert s["request_throughput"] == pytest.approx(10 / 0.95)
    assert s["schedule_lag_ms"]["mean"] == pytest.approx(5.5) and s["schedule_lag_ms"]["max"] == pytest.approx(10.0)
    bad = dict(recs[5], metadata=dict(recs[5]["metadata"], credit_issued_ns="soon"))
    with pytest.raises(InputError, match=r"b\.jsonl:1.*credit_issued_ns"):
        import_results(write(tmp_path, "b.jsonl", json.dumps(bad)), tmp_path / "b.duckdb")


def test_guidellm_relative_targeted_start_is_not_a_schedule_lag(tmp_path: Path) -> None:
    """GuideLLM writes a relative targeted_start for some requests while request_start is a Unix
    time; subtracting them gave a lag of -1.8e12 ms. Those lags stay empty and the import says so."""
    bench = json.loads(json.dumps(GUIDELLM_NEW["benchmarks"][0]))
    base = 1_780_000_000.0
    bench["start_time"], bench["end_time"] = base, base + 2.0
    reqs = []
    for k in range(4):
        t = base + k * 0.25
        targeted = t - 0.01 if k % 2 == 0 else 0.25 * k  # odd ones: relative (the bug)
        reqs.append({"type_": "generative_request_stats", "request_id": str(k),
                     "info": {"timings": {"targeted_start": targeted, "request_start": t, "first_token_iteration": t + 0.1,
                                          "last_token_iteration": t + 0.3, "token_iterations": 3, "request_end": t + 0.3}},
                     "input_metrics": {"total_tokens": 64}, "output_metrics": {"total_tokens": 3}})
    err = {"type_": "generative_request_stats", "request_id": "e",
           "info": {"error": "Server error '503 Service Unavailable' for url 'http://127.0.0.1:8000/v1/completions'",
                    "timings": {"targeted_start": base + 1.0, "request_start": base + 1.0, "request_end": base + 1.1}},
           "input_metrics": {"total_tokens": 64}, "output_metrics": {"total_tokens": None}}
    bench["requests"] = {"successful": reqs, "errored": [err], "incomplete": []}
    said: list[str] = []
    db = tmp_path / "g.duckdb"
    (rid,) = import_results(write(tmp_path, "benchmarks.json", json.dumps({"benchmarks": [bench]})), db, warn=said.append)
    s = summarize(db, rid)
    # lag stats cover successes: the two on one clock (10 ms each); the relative two are left empty
    assert s["schedule_lag_ms"]["n"] == 2 and s["schedule_lag_ms"]["mean"] == pytest.approx(10.0)
    assert s["schedule_lag_ms"]["max"] == pytest.approx(10.0)
    assert len(said) == 1 and "2 of 5 requests" in said[0] and s["notes"] == [said[0].split(": ", 1)[1]]
    con = open_store(db)
    try:
        assert con.execute("SELECT http_status FROM requests WHERE run_id = ? AND status = 'error'",
                           [rid]).fetchone() == (503,)
    finally:
        con.close()


@pytest.mark.parametrize(("message", "status"), [
    ("Bad Request", 400), ("Bad Request: prompt too long", 400), ("Too Many Requests", 429),
    ("Client error '422 Unprocessable Entity' for url 'http://x/v1'", 422), ("500 Internal Server Error", 500),
    ("Error code: 429 - rate limited", 429), ("HTTP 502", 502),
    ('{"message": "boom", "type": "server_error", "param": null, "code": 500}', 500),  # vLLM: an in-stream error
    ("Never received a valid chunk to calculate TTFT.This response will be marked as failed!", None),
    ("prompt of 500 tokens is too long", None), ("ClientConnectorError: refused", None), ("", None), (None, None),
])
def test_error_rows_keep_their_http_status(message: str | None, status: int | None) -> None:
    from burstbench.analysis.importers import _http_status

    assert _http_status(message) == status


def test_vllm_error_rows_keep_their_http_status(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    (rid,) = import_results(write(tmp_path, "v.json", json.dumps(VLLM)), db)
    con = open_store(db)
    try:
        assert con.execute("SELECT http_status FROM requests WHERE run_id = ? AND status = 'error'",
                           [rid]).fetchall() == [(400,)]
    finally:
        con.close()


def test_report_draws_no_timeline_for_a_file_without_start_times(tmp_path: Path) -> None:
    import re

    from burstbench.reports.build import build_report

    old = {k: v for k, v in VLLM.items() if k not in ("start_times", "queue_times")}
    db = tmp_path / "r.duckdb"
    import_results(write(tmp_path, "old.json", json.dumps(old)), db, label="old-vllm")
    import_results(write(tmp_path, "new.json", json.dumps(VLLM)), db, label="new-vllm")
    out = tmp_path / "report.html"
    build_report(db, out, slo="ttft=300ms")
    html = out.read_text(encoding="utf-8")
    load = html[html.index("Load over time"):]
    assert re.search(r"Not shown over time: old-vllm \(the imported file recorded no request start times", load)
    figs = json.loads(re.search(r'<script type="application/json" id="bb-figures">(.*?)</script>', html, re.S)[1])
    over_time = [f for f in figs if "time (s)" in json.dumps(f.get("layout", {}))]
    names = {t.get("name", "") for f in over_time for t in f["data"]}
    assert over_time and any(n.startswith("new-vllm") for n in names) and not any("old-vllm" in n for n in names)
    # alone, the run gets the note instead of the time series
    db2 = tmp_path / "r2.duckdb"
    import_results(write(tmp_path, "old.json", json.dumps(old)), db2, label="old-vllm")
    res = build_report(db2, tmp_path / "r2.html")
    html2 = (tmp_path / "r2.html").read_text(encoding="utf-8")
    assert "client" not in res.sections and "Not shown over time: old-vllm" in html2
    assert "None" not in re.sub(r"<script.*?</script>", "", html2, flags=re.S)  # no peak concurrency to show


def test_no_twin_is_fitted_to_a_timeline_not_in_the_file(tmp_path: Path) -> None:
    from burstbench.errors import StoreError, UsageError
    from burstbench.twin.calibrate import read_run

    old = {k: v for k, v in VLLM.items() if k not in ("start_times", "queue_times")}
    db = tmp_path / "r.duckdb"
    import_results(write(tmp_path, "old.json", json.dumps(old)), db, label="old")
    import_results(write(tmp_path, "new.json", json.dumps(VLLM)), db, label="new")
    with pytest.raises(UsageError, match=r"\(old\) has no timeline.*twin"):
        read_run(db, "old")
    with pytest.raises(StoreError, match="at least 20"):  # a timed run passes that check (and is just too small)
        read_run(db, "new")


def test_vllm_append_result_file_is_one_run_per_line(tmp_path: Path) -> None:
    """``vllm bench serve --append-result`` adds each run's object as one more line of the file."""
    second = dict(VLLM, date="20250101-130000", request_rate=4.0)
    src = write(tmp_path, "appended.json", json.dumps(VLLM) + "\n" + json.dumps(second) + "\n")
    assert detect_format(src) == "vllm"
    db = tmp_path / "r.duckdb"
    a, b = import_results(src, db)
    sa, sb = summarize(db, a), summarize(db, b)
    assert (sa["label"], sb["label"]) == ("vllm:appended:0", "vllm:appended:1")
    assert sa["target_rate"] is None and sb["target_rate"] == 4.0
    assert sa["ttft_ms"]["median"] == sb["ttft_ms"]["median"] == pytest.approx(VLLM["median_ttft_ms"])
    bad = write(tmp_path, "bad.json", json.dumps(VLLM) + "\n{broken\n")
    with pytest.raises(InputError, match=r"bad\.json:2.*not valid JSON"):
        import_results(bad, tmp_path / "x.duckdb")
    with pytest.raises(InputError, match="2 JSON documents; GuideLLM writes one"):
        import_results(write(tmp_path, "g.json", json.dumps(GUIDELLM_OLD) + "\n" + json.dumps(GUIDELLM_OLD)),
                       tmp_path / "x.duckdb", fmt="guidellm")


REAL_VLLM = Path(__file__).parent.parent / "data" / "vllm-0.32-bench-serve.json"


def test_real_vllm_032_file_reproduces_its_own_summary(tmp_path: Path) -> None:
    """A file written by vLLM 0.32's bench serve itself (tests/data/README.md says how)."""
    data = json.loads(REAL_VLLM.read_text(encoding="utf-8"))
    db = tmp_path / "r.duckdb"
    said: list[str] = []
    (rid,) = import_results(REAL_VLLM, db, warn=said.append)
    s = summarize(db, rid)
    assert said == [] and s["timeline"] is True
    assert (s["completed"], s["failed"]) == (data["completed"], data["failed"]) == (20, 4)
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert s[key] == pytest.approx(data[key], rel=1e-9), key
    for m in ("ttft", "tpot", "itl"):
        for stat in ("mean", "median", "std", "p99"):
            assert s[f"{m}_ms"][stat] == pytest.approx(data[f"{stat}_{m}_ms"], rel=1e-9), f"{m}.{stat}"
    # client queue time (vLLM's queue_times) is our schedule lag
    ok_q = [q for q, e in zip(data["queue_times"], data["errors"], strict=True) if not e]
    assert s["schedule_lag_ms"]["max"] == pytest.approx(max(ok_q) * 1000)
    con = open_store(db)
    try:
        rows = con.execute("SELECT http_status, error_message FROM requests WHERE run_id = ? AND status = 'error'"
                           " ORDER BY request_id", [rid]).fetchall()
    finally:
        con.close()
    phrase = {"Service Unavailable": 503, "Internal Server Error": 500, "Too Many Requests": 429}
    assert rows == [(phrase[e], e) for e in data["errors"] if e]
