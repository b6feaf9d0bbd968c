"""Every size that comes from input is bounded before it is allocated (issue 14).

Each test drives the real CLI (``burstbench.cli.main``) on real files and checks
the one-line error (exit code, file/line/field named) that replaced a run that
grew to gigabytes or never ended. The limits themselves live in
``burstbench/limits.py``; the tests read them from there rather than repeat them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstbench import limits
from burstbench.cli import main
from burstbench.errors import UsageError

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def _raw_parquet(path: Path, arrival: list[float], inp: list[int], out: list[int]) -> Path:
    """A Parquet trace written without burstbench (so nothing checked it on the way in)."""
    pl.DataFrame({"arrival_s": arrival, "input_tokens": inp, "output_tokens": out}).write_parquet(path)
    return path


# -- token counts ----------------------------------------------------------------------------


def test_eight_byte_token_count_is_refused_at_its_line(tmp_path, capsys):
    src = _csv(tmp_path / "t.csv", ["0,ChatGPT,5,10,15,Conv", f"1,ChatGPT,{2**63 - 1},10,15,Conv"])
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet")]) == 3
    err = _one_line_error(capsys)
    assert "t.csv:3, field 'Request tokens'" in err and f"over {limits.MAX_TOKENS:,}" in err
    assert not (tmp_path / "t.parquet").exists()
    # --skip-bad drops it and counts it by reason
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet"), "--skip-bad", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 1 and doc["rows_dropped"] == {"too_large": 1}


def test_token_count_just_at_the_limit_is_kept(tmp_path, capsys):
    src = _csv(tmp_path / "t.csv", ["0,ChatGPT,5,10,15,Conv", f"1,ChatGPT,{limits.MAX_TOKENS},10,15,Conv"])
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet")]) == 0


def test_jsonl_token_count_over_the_limit_names_the_line(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text('{"t": 0, "i": 1, "o": 2}\n{"t": 1, "i": 2, "o": 99999999999}\n')
    assert main(["trace", "ingest", str(src), "--map", "arrival=t:s,input=i,output=o",
                 "-o", str(tmp_path / "t.parquet")]) == 3
    assert "t.jsonl:2, field 'o'" in _one_line_error(capsys)


def test_parquet_trace_with_a_huge_token_count_is_refused_before_run(tmp_path, capsys):
    # run would have built a 2^63-token prompt (24 GB before it was killed)
    trace = _raw_parquet(tmp_path / "t.parquet", [0.0, 1.0], [5, 2**62], [3, 4])
    assert main(["run", "--url", "http://127.0.0.1:9", "--trace", str(trace),
                 "-o", str(tmp_path / "r.duckdb")]) == 3
    err = _one_line_error(capsys)
    assert "t.parquet" in err and "field 'input_tokens'" in err and "row 2" in err
    assert not (tmp_path / "r.duckdb").exists()


# -- spans and timestamps --------------------------------------------------------------------


def test_span_of_54_years_is_refused_naming_the_rows(tmp_path, capsys):
    src = _csv(tmp_path / "t.csv", ["0,ChatGPT,5,10,15,Conv", "1700000000,ChatGPT,5,10,15,Conv",
                                    "2,ChatGPT,5,10,15,Conv"])
    t0 = time.perf_counter()
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet")]) == 3
    err = _one_line_error(capsys)
    assert "field 'Timestamp'" in err and "53.9 years" in err and "data row 2" in err
    assert time.perf_counter() - t0 < 30  # was a warning, then 13 GB in stats/plan


@pytest.mark.parametrize("command", [["trace", "stats"], ["plan", "--slo", "ttft=1s", "--hardware", "l40s",
                                                          "--model", "llama-3.1-8b"]])
def test_parquet_span_beyond_the_limit_stops_stats_and_plan(tmp_path, capsys, command):
    trace = _raw_parquet(tmp_path / "t.parquet", [0.0, 1.0, 1.7e9], [5, 5, 5], [3, 3, 3])
    args = [*command[:2], str(trace), *command[2:]] if command[0] == "trace" else [command[0], str(trace),
                                                                                      *command[1:]]
    assert main(args) == 3
    err = _one_line_error(capsys)
    assert "field 'arrival_s'" in err and "years" in err


def test_span_of_two_to_the_64_seconds_does_not_overflow(tmp_path, capsys):
    trace = _raw_parquet(tmp_path / "t.parquet", [0.0, float(2**64)], [5, 5], [3, 3])
    assert main(["trace", "stats", str(trace)]) == 3
    assert "field 'arrival_s'" in _one_line_error(capsys)


def test_nanosecond_timestamps_near_int64_ends_are_refused(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text('{"t": -9200000000000000000, "i": 1, "o": 2}\n{"t": 9200000000000000000, "i": 1, "o": 2}\n')
    assert main(["trace", "ingest", str(src), "--map", "arrival=t:ns,input=i,output=o",
                 "-o", str(tmp_path / "t.parquet")]) == 3
    assert "t.jsonl:1, field 't'" in _one_line_error(capsys)


# -- windows, bootstrap, fleets --------------------------------------------------------------


def test_tiny_window_is_refused_with_the_smallest_usable_one(tmp_path, capsys):
    trace = _raw_parquet(tmp_path / "t.parquet", [0.0, 5.0, 86400.0], [5, 5, 5], [3, 3, 3])
    assert main(["trace", "stats", str(trace), "--window", "1e-9"]) == 3
    err = _one_line_error(capsys)
    assert "field '--window'" in err and f"limit of {limits.MAX_WINDOWS:,}" in err
    usable = float(err.split("use --window ")[1].split()[0].replace(",", ""))
    assert main(["trace", "stats", str(trace), "--window", str(usable), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"]["count"] <= limits.MAX_WINDOWS


def test_fit_window_that_overflows_a_float_is_refused(tmp_path, capsys):
    trace = _raw_parquet(tmp_path / "t.parquet", [float(i) for i in range(50)], [5] * 50, [3] * 50)
    assert main(["trace", "fit", str(trace), "--window", "1e-320", "-o", str(tmp_path / "s.yaml")]) == 3
    assert "field '--window'" in _one_line_error(capsys)


def test_dispersion_from_occupied_bins_equals_the_full_bincount():
    from burstbench.traces.stats import _dispersion

    rng = np.random.default_rng(3)
    t = np.sort(rng.gamma(0.3, 2.0, 5000).cumsum())
    t -= t[0]
    span = float(t[-1])
    for b in (1.0, 10.0, 60.0):
        nbins = math.floor(span / b)
        counts = np.bincount(np.minimum((t // b).astype(np.int64), nbins - 1)[t < nbins * b], minlength=nbins)
        assert _dispersion(t, span, b) == pytest.approx(counts.var() / counts.mean(), rel=1e-9)


def test_bootstrap_replicates_are_bounded_before_any_work():
    from burstbench.analysis.compare import compare_runs

    with pytest.raises(UsageError, match=f"over the limit of {limits.MAX_BOOT:,}"):
        compare_runs(None, "a", "b", n_boot=10**9)  # type: ignore[arg-type]


@pytest.fixture
def hand_twin(tmp_path: Path) -> Path:
    p = tmp_path / "twin.yaml"
    p.write_text("model: llama-3.1-8b\nhardware: l40s\n")
    return p


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "1000000"], f"over the limit of {limits.MAX_REPLICAS:,}"),
    (["--layout", "disagg", "--prefill", "600000", "--decode", "600000"], "over the limit"),
    (["--band", "100000"], f"0 to {limits.MAX_BAND:,}"),
])
def test_whatif_fleet_and_band_are_bounded(tmp_path, capsys, azure_conv, hand_twin, flags, message):
    t0 = time.perf_counter()
    assert main(["whatif", str(hand_twin), "--trace", str(azure_conv), "--no-search", *flags]) == 2
    assert message in _one_line_error(capsys)
    assert time.perf_counter() - t0 < 60  # refused before the engines are built


def test_plan_max_instances_is_bounded(capsys, azure_conv):
    assert main(["plan", str(azure_conv), "--slo", "ttft=1s", "--hardware", "l40s", "--model", "llama-3.1-8b",
                 "--max-instances", "1000000"]) == 2
    assert "--max-instances" in _one_line_error(capsys)


def test_band_reports_progress_per_draw(tmp_path, capsys):
    from burstbench.twin.cli import _band_progress

    class Status:
        def __init__(self) -> None:
            self.text = ""

        def update(self, text: str) -> None:
            self.text = text

    from burstbench.output import console

    st = Status()
    tick = _band_progress(console(), st)
    for i in range(1, 21):
        tick(i, 20)
    assert st.text == "uncertainty band: 20/20 twins simulated"
    lines = capsys.readouterr().err.splitlines()  # not a terminal: a line per tenth
    assert lines[0] == "uncertainty band: 2/20 twins simulated" and len(lines) == 10


# -- SQL memory --------------------------------------------------------------------------------


def test_sql_runs_under_a_memory_limit(tmp_path, capsys):
    src = _csv(tmp_path / "t.csv", ["0,ChatGPT,5,10,15,Conv", "1,ChatGPT,5,10,15,Conv"])
    store = tmp_path / "r.duckdb"
    assert main(["simulate", str(src), "--model", "llama-3.1-8b", "--hardware", "l40s", "-o", str(store)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(store), "--sql", "SELECT current_setting('memory_limit') AS m", "--json"]) == 0
    limit = json.loads(capsys.readouterr().out)["rows"][0][0]
    assert limit == "953.6 MiB"  # DuckDB's rendering of SQL_MEMORY_LIMIT = 1GB
    # a query that needs more than that fails in one line instead of taking the machine
    big = "SELECT list(range) FROM range(400000000)"
    assert main(["analyze", str(store), "--sql", big]) == 2
    assert "--sql failed" in _one_line_error(capsys)


def test_every_store_reader_bounds_duckdb_and_spills_privately(tmp_path, monkeypatch):
    # DuckDB's defaults (80 % of RAM, every core, spill beside the file) let `report` on a
    # million requests take 9.2 GB; open_store, which every reading command goes through,
    # sets the limits, and a read-only store gets no .tmp folder beside it.
    import duckdb

    from burstbench.analysis import metrics
    from burstbench.analysis.metrics import open_store

    monkeypatch.setattr(metrics, "_SPILL", [])
    src = _csv(tmp_path / "t.csv", ["0,ChatGPT,5,10,15,Conv", "1,ChatGPT,5,10,15,Conv"])
    store = tmp_path / "r.duckdb"
    assert main(["simulate", str(src), "--model", "llama-3.1-8b", "--hardware", "l40s", "-o", str(store)]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    con = open_store(store)
    try:
        mem, threads, tmp = con.execute("SELECT current_setting('memory_limit'), current_setting('threads'),"
                                        " current_setting('temp_directory')").fetchone()
        assert mem == "953.6 MiB"  # DuckDB's rendering of READ_MEMORY_LIMIT = 1GB
        assert 1 <= int(threads) <= limits.READ_THREADS
        assert Path(tmp).is_dir() and Path(tmp).parent != tmp_path and Path(tmp).name.startswith("burstbench-spill-")
    finally:
        con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with duckdb.connect(str(store), read_only=True) as raw:  # the store itself is untouched: defaults there
        assert raw.execute("SELECT current_setting('temp_directory')").fetchone()[0] != tmp


# -- lines of a trace file ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_line_over_the_limit_is_refused_before_parsing(tmp_path, capsys, suffix):
    long = "x" * (limits.MAX_LINE_BYTES + 10)
    src = tmp_path / f"t.{suffix}"
    if suffix == "csv":
        src.write_text(HEADER + "0,ChatGPT,5,10,15,Conv\n" + f"1,ChatGPT,5,10,15,{long}\n")
        args = []
    else:
        src.write_text('{"a": 1, "b": 2, "c": 3}\n' + '{"a": 1, "b": 2, "c": "' + long + '"}\n')
        args = ["--map", "arrival=a,input=b,output=c"]
    t0 = time.perf_counter()
    assert main(["trace", "ingest", str(src), *args, "-o", str(tmp_path / "t.parquet")]) == 3
    err = _one_line_error(capsys)
    line = 3 if suffix == "csv" else 2
    assert f"t.{suffix}:{line}: line is longer than {limits.MAX_LINE_BYTES >> 20} MiB" in err
    assert time.perf_counter() - t0 < 30


def test_csv_field_over_128_kib_is_read(tmp_path, capsys):
    # a quoted field spanning lines makes the error path walk the file with the csv module,
    # whose own 128 KiB field limit raised _csv.Error
    big = "y" * 200_000
    src = tmp_path / "t.csv"
    src.write_text(HEADER + "0,ChatGPT,5,10,15,Conv\n" + f'1,ChatGPT,5,10,15,"a\n{big}"\n' + "2,ChatGPT,abc,10,15,Conv\n")
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet")]) == 3
    assert "t.csv:5, field 'Request tokens': value 'abc'" in _one_line_error(capsys)
    src.write_text(HEADER + f'0,ChatGPT,5,10,15,"{big}"\n' + "2,ChatGPT,7,10,15,Conv\n")
    assert main(["trace", "ingest", str(src), "--map", "arrival=Timestamp,input=Request tokens,"
                 "output=Response tokens,tenant=Log Type", "-o", str(tmp_path / "t.parquet")]) == 0


# -- files read whole ----------------------------------------------------------------------------


def test_whole_json_files_are_bounded_by_size_and_lines_by_line_length(tmp_path):
    from burstbench.errors import InputError
    from burstbench.infile import loads_json, read_text

    p = tmp_path / "result.json"
    p.write_text(json.dumps({"ttfts": [0.25] * (limits.MAX_LINE_BYTES // 5)}))  # a big result file, one line
    assert p.stat().st_size > limits.MAX_LINE_BYTES
    assert len(loads_json(read_text(p, expected="a result"), path=p)["ttfts"]) == limits.MAX_LINE_BYTES // 5
    with pytest.raises(InputError, match=r"result\.json:7: line of .* over the limit"):
        loads_json(p.read_text(), path=p, line=7)  # the same text as one line of a JSON Lines file
    with pytest.raises(InputError, match=r"over the 1,000 read whole here; expected a result"):
        read_text(p, expected="a result", max_bytes=1000)
