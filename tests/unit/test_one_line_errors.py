"""Hostile or broken input ends in one clean line, never a traceback (issue 14).

Data is printed as text, never as rich markup, with control characters escaped
(``burstbench.output.console``/``clean``); user errors print as one line cut to a
readable length (``burstbench.output.error_line``); files are read through
``burstbench.infile`` (symlink loops, binary files, deep nesting). Every test runs
the real CLI on real files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from burstbench import limits
from burstbench.cli import main
from burstbench.output import clean, error_line

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
HOSTILE = "[/x] [bold]b\x1b]0;pwned\x07\x1b[31mred\u202e"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _assert_shown_as_text(text: str) -> None:
    assert "[/x]" in text and "[bold]b" in text  # markup printed literally, not interpreted
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;pwned\\x07\\x1b[31mred\\u202e" in text  # escaped, nothing lost


def _csv(path: Path, tenant: str = "Conv") -> Path:
    path.write_text(HEADER + f"0,ChatGPT,5,10,15,{tenant}\n1,ChatGPT,6,11,17,{tenant}\n", encoding="utf-8")
    return path


# -- printing data ------------------------------------------------------------------------------


def test_markup_and_escapes_in_a_tenant_print_as_text(tmp_path, capsys):
    src = _csv(tmp_path / "t.csv", tenant=f'"{HOSTILE}"')
    assert main(["trace", "stats", str(src)]) == 0  # was rich.errors.MarkupError
    out = capsys.readouterr()
    _assert_shown_as_text(out.out + out.err)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("store")
    src = _csv(d / "t.csv")
    path = d / "r.duckdb"
    assert main(["simulate", str(src), "--model", "llama-3.1-8b", "--hardware", "l40s", "-o", str(path),
                 "--label", HOSTILE]) == 0
    return path


def test_markup_in_a_run_label_prints_as_text(store, capsys):
    capsys.readouterr()
    assert main(["analyze", str(store)]) == 0  # the label is in the table's title
    out = capsys.readouterr()
    _assert_shown_as_text(out.out + out.err)


def test_markup_in_an_sql_result_prints_as_text(store, capsys):
    capsys.readouterr()
    sql = "SELECT '[/x] [bold]b' || chr(27) || ']0;pwned' || chr(7) || chr(27) || '[31mred' || chr(8238) AS v"
    assert main(["analyze", str(store), "--sql", sql]) == 0
    out = capsys.readouterr()
    _assert_shown_as_text(out.out + out.err)
    # --json keeps the exact value (JSON escapes control characters itself)
    assert main(["analyze", str(store), "--sql", sql, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0][0] == HOSTILE


def test_clean_escapes_every_control_character_and_keeps_text():
    assert clean("a\tb\nc\x00\x7f\x9b") == "a\\x09b\\x0ac\\x00\\x7f\\x9b"
    assert clean("plain ünïcode [x]") == "plain ünïcode [x]"


# -- the error line ------------------------------------------------------------------------------


def test_a_200_kb_value_is_cut_in_the_error_line(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text(HEADER + "0,ChatGPT,5,10,15,Conv\n" + "1,ChatGPT," + "9x" * 100_000 + ",10,15,Conv\n")
    assert main(["trace", "ingest", str(src), "-o", str(tmp_path / "t.parquet")]) == 3
    err = _one_line_error(capsys)
    assert len(err) <= limits.MAX_ERROR_CHARS + len("error: ")
    assert "t.csv:3, field 'Request tokens'" in err and err.endswith("more characters]")


def test_error_line_escapes_control_characters():
    line = error_line(ValueError("bad \x1b[2J value\nsecond line"))
    assert line == "error: bad \\x1b[2J value\\x0asecond line"


# -- nesting -------------------------------------------------------------------------------------


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("skip_bad", [False, True])
def test_json_nested_1500_deep_in_a_trace(tmp_path, capsys, skip_bad):
    src = tmp_path / "t.jsonl"
    src.write_text('{"a": 0, "b": 1, "c": 2, "x": ' + _deep(1500) + "}\n")
    flags = ["--skip-bad"] if skip_bad else []
    assert main(["trace", "ingest", str(src), "--map", "arrival=a,input=b,output=c", *flags,
                 "-o", str(tmp_path / "t.parquet")]) == 3  # was RecursionError even with --skip-bad
    assert "t.jsonl:1" in _one_line_error(capsys)


def test_a_deep_record_later_in_a_trace_is_skipped_and_counted(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text('{"a": 0, "b": 1, "c": 2}\n{"a": 1, "b": 1, "c": 2, "x": ' + _deep(1500) + '}\n'
                   '{"a": 2, "b": 1, "c": 2}\n')
    args = ["trace", "ingest", str(src), "--map", "arrival=a,input=b,output=c", "-o", str(tmp_path / "t.parquet")]
    assert main(args) == 3
    assert "t.jsonl:2" in _one_line_error(capsys)
    assert main([*args, "--skip-bad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_dropped"] == {"malformed_json": 1}


def test_json_nested_1500_deep_in_an_import(tmp_path, capsys):
    src = tmp_path / "bench.json"
    src.write_text('{"ttfts": ' + _deep(1500) + "}")
    assert main(["analyze", "--import", str(src), "-o", str(tmp_path / "r.duckdb")]) == 3
    assert "bench.json" in _one_line_error(capsys)


@pytest.mark.parametrize("command", ["whatif", "synth", "run"])
def test_yaml_nested_1500_deep(tmp_path, capsys, command):
    y = tmp_path / "deep.yaml"
    y.write_text("model: x\nhardware: " + _deep(1500) + "\n")
    trace = _csv(tmp_path / "t.csv")
    args = {
        "whatif": ["whatif", str(y), "--trace", str(trace)],
        "synth": ["trace", "synth", str(y), "-o", str(tmp_path / "s.parquet")],
        "run": ["run", "--url", "http://127.0.0.1:9", "--trace", str(trace), "--scenario", str(y),
                "-o", str(tmp_path / "r.duckdb")],
    }[command]
    assert main(args) == 3
    assert "deep.yaml" in _one_line_error(capsys)


# -- files that are not what they claim ----------------------------------------------------------


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    os.symlink(b, a)
    os.symlink(a, b)
    return a


@pytest.mark.parametrize("command", ["ingest", "stats", "import", "twin"])
def test_a_symlink_loop_is_one_line(tmp_path, capsys, loop, command):
    args = {
        "ingest": ["trace", "ingest", str(loop), "-o", str(tmp_path / "t.parquet")],
        "stats": ["trace", "stats", str(loop)],
        "import": ["analyze", "--import", str(loop), "-o", str(tmp_path / "r.duckdb")],
        "twin": ["whatif", str(loop), "--trace", str(_csv(tmp_path / "t.csv"))],
    }[command]
    assert main(args) == 3  # ingest raised RuntimeError('Symlink loop ...'); stats said "no such file"
    err = _one_line_error(capsys)
    assert "a.csv" in err
    assert "symlink loop" in err if command != "twin" else "no such twin file" in err


@pytest.mark.parametrize("kind", ["binary", "parquet"])
def test_import_of_a_binary_or_parquet_file(tmp_path, capsys, kind):
    src = tmp_path / "bench.json"
    if kind == "parquet":
        pl.DataFrame({"x": [1, 2]}).write_parquet(src)
    else:
        src.write_bytes(bytes(range(128, 256)) * 8)  # not UTF-8, no NUL
    assert main(["analyze", "--import", str(src), "-o", str(tmp_path / "r.duckdb")]) == 3
    err = _one_line_error(capsys)  # was UnicodeDecodeError
    assert "bench.json" in err and ("Parquet" in err if kind == "parquet" else "not UTF-8" in err)


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://:8000", "has no host"),
])
def test_a_malformed_url_is_one_line(tmp_path, capsys, url, words):
    trace = _csv(tmp_path / "t.csv")
    assert main(["run", "--url", url, "--trace", str(trace), "-o", str(tmp_path / "r.duckdb")]) == 2
    err = _one_line_error(capsys)
    assert "field 'url'" in err and words in err
    assert not (tmp_path / "r.duckdb").exists()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_markup_and_glob_characters_in_a_file_name(tmp_path, capsys, suffix):
    # the path 'd[/x].csv' holds a closing tag (the spinner read it as markup: MarkupError)
    # and glob brackets (polars expanded them: 'invalid glob pattern')
    (tmp_path / "d[").mkdir()
    src = tmp_path / "d[" / f"x].{suffix}"
    if suffix == "csv":
        _csv(src)
        args = []
    else:
        src.write_text('{"a": 0, "b": 1, "c": 2}\n{"a": 1, "b": 3, "c": 4}\n')
        args = ["--map", "arrival=a,input=b,output=c"]
    out = tmp_path / "o[1].parquet"
    assert main(["trace", "ingest", str(src), *args, "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    assert main(["trace", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 2


def test_every_console_is_the_shared_safe_one():
    # the class of bug is fixed in one place only while every printer goes through it
    import burstbench

    root = Path(burstbench.__file__).parent
    makers = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if p.name != "output.py" and "Console(" in p.read_text(encoding="utf-8")]
    assert makers == [], f"use burstbench.output.console() instead of rich's Console in {makers}"
