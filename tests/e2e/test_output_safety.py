"""No command destroys a user's file: outputs that are inputs (by any path), devices, FIFOs,
files of another kind and stores of another schema are refused in one line, before any work.

Every case runs the real CLI on real files and checks the bytes that were there are still
there; each failed on the code before ``burstbench/outfile.py`` (the input was replaced,
the command hung, or it printed success and wrote nothing).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from burstbench.cli import main


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture()
def csv_trace(tmp_path: Path, azure_conv: Path) -> Path:
    return Path(shutil.copy(azure_conv, tmp_path / "t.csv"))


@pytest.fixture()
def parquet_trace(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "small.parquet"
    assert main(["trace", "synth", "--preset", "burstgpt", "--requests", "40", "--seed", "1", "-o", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.fixture()
def store(tmp_path: Path, parquet_trace: Path, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "r.duckdb"
    assert main(["simulate", str(parquet_trace), "--model", "llama-3.1-8b", "--hardware", "h100-sxm",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def _refused(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    for w in words:
        assert w in line, line


# -- an output that is an input ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "spelled"])
def test_trace_fit_never_writes_over_its_trace(tmp_path: Path, csv_trace: Path, capsys, how: str) -> None:
    before = _digest(csv_trace)
    out = {"same": csv_trace, "symlink": tmp_path / "link.yaml", "hardlink": tmp_path / "hard.yaml",
           "spelled": tmp_path / "sub" / ".." / "t.csv"}[how]
    if how == "symlink":
        out.symlink_to(csv_trace)
    elif how == "hardlink":
        os.link(csv_trace, out)
    elif how == "spelled":
        (tmp_path / "sub").mkdir()
    rc, err = _cli(capsys, "trace", "fit", str(csv_trace), "-o", str(out), "--force")
    _refused(rc, err, "is the input", "choose another output path")
    assert _digest(csv_trace) == before


def test_trace_synth_replay_and_ingest_never_write_over_their_source(tmp_path: Path, csv_trace: Path,
                                                                     capsys) -> None:
    before = _digest(csv_trace)
    hard = tmp_path / "hard.parquet"
    os.link(csv_trace, hard)
    for args in (["trace", "synth", "--replay", str(csv_trace), "-o", str(csv_trace)],
                 ["trace", "synth", "--replay", str(csv_trace), "-o", str(hard), "--force"],
                 ["trace", "ingest", str(csv_trace), "-o", str(hard), "--force"]):
        rc, err = _cli(capsys, *args)
        _refused(rc, err, "is the input")
        assert _digest(csv_trace) == before


def test_calibrate_never_writes_its_twin_over_the_results(store: Path, capsys) -> None:
    before = _digest(store)
    (run_id,) = [r[0] for r in duckdb.connect(str(store), read_only=True).execute("SELECT run_id FROM runs").fetchall()]
    rc, err = _cli(capsys, "calibrate", str(store), "--run", run_id, "--model", "llama-3.1-8b",
                   "--hardware", "h100-sxm", "--max-evals", "5", "--max-requests", "40", "-o", str(store))
    _refused(rc, err, "is the input")
    assert _digest(store) == before


def test_report_never_writes_over_a_file_of_another_kind(tmp_path: Path, store: Path, parquet_trace: Path,
                                                         capsys) -> None:
    disguised = Path(shutil.copy(parquet_trace, tmp_path / "old.html"))  # a trace renamed .html
    before = _digest(disguised)
    rc, err = _cli(capsys, "report", str(store), "-o", str(disguised))
    _refused(rc, err, "holds a Parquet trace, not an HTML file", "--force")
    assert _digest(disguised) == before
    assert main(["report", str(store), "-o", str(disguised), "--force"]) == 0
    assert disguised.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


# -- a file of another kind ----------------------------------------------------------------------


def test_synth_refuses_to_replace_a_csv_log_unless_forced(csv_trace: Path, tmp_path: Path, capsys) -> None:
    log = Path(shutil.copy(csv_trace, tmp_path / "log.csv"))
    before = _digest(log)
    rc, err = _cli(capsys, "trace", "synth", "--preset", "burstgpt", "--requests", "10", "-o", str(log))
    _refused(rc, err, "holds a text file", "not a Parquet trace", "--force")
    assert _digest(log) == before
    assert main(["trace", "synth", "--preset", "burstgpt", "--requests", "10", "-o", str(log), "--force"]) == 0
    assert log.read_bytes()[:4] == b"PAR1"


def test_fit_refuses_a_results_store_but_replaces_its_own_yaml(csv_trace: Path, store: Path, tmp_path: Path,
                                                               capsys) -> None:
    before = _digest(store)
    rc, err = _cli(capsys, "trace", "fit", str(csv_trace), "-o", str(store))
    _refused(rc, err, "holds a DuckDB results store, not a YAML file")
    assert _digest(store) == before
    spec = tmp_path / "spec.yaml"
    for _ in range(2):  # a file of the same kind is replaced as before
        assert main(["trace", "fit", str(csv_trace), "-o", str(spec)]) == 0
    assert "arrivals" in spec.read_text()


@pytest.mark.parametrize("command", ["simulate", "run", "import", "sweep", "whatif"])
def test_results_go_only_to_a_duckdb_file(tmp_path: Path, parquet_trace: Path, capsys, command: str) -> None:
    """DuckDB opens a Parquet or CSV file as an empty in-memory database: 'simulate' and
    'analyze --import' printed success and wrote nothing, 'run' failed with DuckDB's words."""
    target = Path(shutil.copy(parquet_trace, tmp_path / "t.parquet"))
    before = _digest(target)
    src = tmp_path / "vllm.json"
    src.write_text('{"date": "20250101-000000", "backend": "vllm"}')
    args = {
        "simulate": ["simulate", str(parquet_trace), "-o", str(target)],
        "run": ["run", "--url", "http://127.0.0.1:9", "--trace", str(parquet_trace), "-o", str(target)],
        "import": ["analyze", "--import", str(src), "-o", str(target)],
        "sweep": ["sweep", "--rates", "1", "--simulate", "--model", "llama-3.1-8b", "--hardware", "h100-sxm",
                  "--trace", str(parquet_trace), "-o", str(target)],
        "whatif": ["whatif", str(src), "--trace", str(parquet_trace), "-o", str(target)],
    }[command]
    rc, err = _cli(capsys, *args)
    _refused(rc, err, "holds a Parquet trace, not a DuckDB results store", "new path")
    assert _digest(target) == before


# -- devices and FIFOs ---------------------------------------------------------------------------


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path, parquet_trace: Path, csv_trace: Path) -> None:
    """'run -o FIFO' hung in DuckDB's open; 'fit -o FIFO' replaced the FIFO with a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for args in (["simulate", str(parquet_trace), "-o", str(fifo)],
                 ["trace", "fit", str(csv_trace), "-o", str(fifo)],
                 ["report", "--twin", str(csv_trace), "-o", str(fifo)]):
        proc = subprocess.run([sys.executable, "-m", "burstbench", *args], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "is a FIFO (named pipe)" in proc.stderr
        assert fifo.is_fifo()


# -- stores of another schema --------------------------------------------------------------------


def _tables(path: Path) -> dict[str, list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for t, c in rows:
        out.setdefault(t, []).append(c)
    return out


def test_a_foreign_requests_table_is_refused_before_anything_is_written(tmp_path: Path, parquet_trace: Path,
                                                                        capsys) -> None:
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE requests (id INTEGER, body VARCHAR)")
    con.execute("INSERT INTO requests VALUES (1, 'theirs')")
    con.close()
    before = _tables(other)
    rc = main(["simulate", str(parquet_trace), "-o", str(other)])
    err = capsys.readouterr().err
    assert rc == 4 and "not a burstbench results store's (requests)" in err and "new file" in err, err
    assert _tables(other) == before


def test_a_newer_schema_is_refused_and_not_restamped(tmp_path: Path, store: Path, parquet_trace: Path,
                                                     capsys) -> None:
    con = duckdb.connect(str(store))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    runs_before = duckdb.connect(str(store), read_only=True).execute("SELECT count(*) FROM runs").fetchone()
    rc = main(["simulate", str(parquet_trace), "-o", str(store)])
    err = capsys.readouterr().err
    assert rc == 4 and "results schema '99' is newer than" in err and "upgrade burstbench" in err, err
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("99",)
    assert con.execute("SELECT count(*) FROM runs").fetchone() == runs_before
    con.close()
    rc = main(["analyze", str(store)])  # nor read with this code's SQL
    err = capsys.readouterr().err
    assert rc == 4 and "results schema '99' is newer than" in err and "write to a new file" not in err, err


def test_profile_refuses_to_replace_a_trace(parquet_trace: Path, tmp_path: Path, capsys) -> None:
    target = Path(shutil.copy(parquet_trace, tmp_path / "hw.json"))
    rc, err = _cli(capsys, "profile", "--quick", "-o", str(target))
    _refused(rc, err, "holds a Parquet trace, not a JSON file", "--force")
    assert _digest(target) == _digest(parquet_trace)


# -- demo: it replaces its own three files only ----------------------------------------------------


def test_demo_never_deletes_a_users_store_or_trace(tmp_path: Path, store: Path, csv_trace: Path, capsys) -> None:
    """'demo --out DIR' deleted DIR/results.duckdb and DIR/trace.parquet whatever they were."""
    work = tmp_path / "work"
    work.mkdir()
    users_store = Path(shutil.copy(store, work / "results.duckdb"))  # a simulate run, not the demo's
    before = _digest(users_store)
    rc, err = _cli(capsys, "demo", "--out", str(work), "--requests", "5")
    _refused(rc, err, "results.duckdb holds 1 runs the demo did not make", "--force")
    assert _digest(users_store) == before
    users_store.unlink()
    log = Path(shutil.copy(csv_trace, work / "trace.parquet"))  # a CSV log under the demo's name
    rc, err = _cli(capsys, "demo", "--out", str(work), "--requests", "5")
    _refused(rc, err, "trace.parquet: holds a text file (CSV, log, ...), not a Parquet trace")
    assert _digest(log) == _digest(csv_trace)
