"""burstbench.outfile: kinds sniffed from real files, devices refused by stat alone, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import duckdb
import pytest

from burstbench.errors import OutputError, UsageError
from burstbench.outfile import atomic_path, check_output, refuse_special, sniff, write_text_atomic


def test_kinds_are_sniffed_from_content_not_names(tmp_path: Path, azure_conv: Path, mooncake: Path) -> None:
    db = tmp_path / "x.yaml"
    duckdb.connect(str(db)).execute("CREATE TABLE a (x INT)").close()
    html = tmp_path / "x.parquet"
    html.write_text("\n  <!DOCTYPE html><html></html>")
    spec = tmp_path / "x.html"
    spec.write_text("# a spec\nversion: 1\narrivals:\n  family: gamma\n")
    indented = tmp_path / "hw.txt"
    indented.write_text('{\n  "name": "h100"\n}\n')
    empty = tmp_path / "empty"
    empty.touch()
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x00\x01\x02\xff" * 10)
    assert sniff(db) == "duckdb"
    assert sniff(html) == "html"
    assert sniff(spec) == "yaml"
    assert sniff(indented) == "json"
    assert sniff(azure_conv) == "text"
    assert sniff(mooncake) == "jsonl"
    assert sniff(empty) == "empty"
    assert sniff(blob) == "binary"
    assert sniff(tmp_path / "missing") is None


def test_dev_null_is_refused_by_stat_before_anything_is_opened(tmp_path: Path) -> None:
    """As root, '-o /dev/null' once replaced the machine's /dev/null with a regular file.
    Only stat-based paths are exercised here: nothing is written or opened."""
    st = os.stat("/dev/null")
    assert stat.S_ISCHR(st.st_mode)
    with pytest.raises(OutputError, match="/dev/null: is a character device; outputs go to regular files"):
        refuse_special("/dev/null")
    with pytest.raises(OutputError, match="is a character device"):
        check_output("/dev/null", kind="yaml", force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, kind="yaml")
    assert os.stat("/dev/null").st_ino == st.st_ino and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert issubclass(OutputError, UsageError)


def test_a_link_to_a_fifo_is_refused_and_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "out.yaml"
    link.symlink_to(fifo)
    with pytest.raises(OutputError, match="is a FIFO"), atomic_path(link) as tmp:  # refused before mkstemp
        tmp.write_text("x")
    assert link.is_symlink() and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yaml", "pipe"]


def test_atomic_write_keeps_mode_writes_through_links_and_leaves_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text("old: 1\n")
    target.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    write_text_atomic(link, "new: 2\n")
    assert link.is_symlink() and target.read_text() == "new: 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("torn")
        raise RuntimeError("disk full")
    assert target.read_text() == "new: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.yaml", "real.yaml"]


def test_an_empty_file_is_replaced_but_never_taken_for_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "made-by-mktemp"
    empty.touch()
    assert check_output(empty, kind="parquet") == empty
    with pytest.raises(OutputError, match="holds an empty file, not a DuckDB results store"):
        check_output(empty, kind="duckdb")
    from burstbench.store import ResultsStore

    with pytest.raises(OutputError, match="not a DuckDB results store"):  # DuckDB cannot open it either
        ResultsStore(empty)
    assert empty.stat().st_size == 0
