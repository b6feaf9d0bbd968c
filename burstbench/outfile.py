"""Where a command may write, and how: the one guard in front of every output file.

Every command that writes a file calls ``check_output`` before it does any work, and
writes through ``atomic_path`` (or ``write_text_atomic``), so that:

- an output is never one of the command's inputs, whatever the spelling: the same
  file reached through a symlink or a hard link has the same (st_dev, st_ino), and
  writing it would destroy the input (``trace fit t.csv -o t.csv`` once did, exit 0);
- an output is a regular file or a new path: ``-o /dev/null`` replaced the machine's
  /dev/null with a regular file when run as root, and ``-o FIFO`` hung. The check is
  a ``stat``, made before anything is opened (opening a FIFO blocks);
- an existing file of another kind (a DuckDB results store, a Parquet trace, a CSV
  log...) is not replaced unless the user says ``--force``: its kind is sniffed from
  its first bytes, so the file's name does not matter;
- a file appears whole or not at all: the bytes go to a temporary file in the
  target's folder, are fsynced, then ``os.replace`` it (a crash or a full disk
  leaves the old file as it was).

A results store is the exception to replacing: it is appended to, never replaced,
so ``kind="duckdb"`` accepts only a DuckDB file or a new path (``ResultsStore`` applies
the same check when it opens a file to write); the commands that append to one have no
``--force``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from burstbench.errors import OutputError

# What each kind is called in messages.
KIND_NAMES = {
    "duckdb": "a DuckDB results store",
    "parquet": "a Parquet trace",
    "html": "an HTML file",
    "yaml": "a YAML file",
    "json": "a JSON file",
    "jsonl": "a JSON-lines log",
    "gzip": "a gzip-compressed file",
    "zip": "a zip archive",
    "sqlite": "an SQLite database",
    "text": "a text file (CSV, log, ...)",
    "binary": "a binary file",
    "empty": "an empty file",
}

_SNIFF_BYTES = 4096
_YAML_KEY = re.compile(r"^[A-Za-z_][\w .-]*:(\s|$)")
_FILE_TYPES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _stat(path: str | Path) -> os.stat_result | None:
    """``os.stat`` (through symlinks), or None when nothing is there."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def refuse_special(path: str | Path, *, flag: str = "-o") -> os.stat_result | None:
    """Raise unless ``path`` is a regular file or nothing; return its stat (None when new).

    Only ``stat`` is called, never ``open``: opening a FIFO blocks and a device must not be
    touched at all."""
    st = _stat(path)
    if st is None or stat.S_ISREG(st.st_mode):
        return st
    what = next((name for test, name in _FILE_TYPES if test(st.st_mode)), "not a regular file")
    hint = "give a file name inside it" if stat.S_ISDIR(st.st_mode) else "outputs go to regular files; give a file path"
    raise OutputError(f"{flag} {path}: is {what}; {hint}")


def sniff(path: str | Path) -> str | None:
    """The kind of the regular file at ``path`` from its first bytes (see ``KIND_NAMES``);
    None when there is no file. The caller has checked that it is a regular file."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except FileNotFoundError:
        return None
    if not head:
        return "empty"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:16] == b"SQLite format 3\x00":
        return "sqlite"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4 or b"\x00" in head:  # not just a character cut at the end
            return "binary"
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text:
        return "binary"
    body = text.lstrip("\ufeff \t\r\n")
    low = body[:64].lower()
    if low.startswith(("<!doctype html", "<html")):
        return "html"
    if body.startswith(("{", "[")):
        first, _, rest = body.partition("\n")
        try:
            json.loads(first)
        except ValueError:
            return "json"  # an indented document: the first line alone is not JSON
        return "jsonl" if rest.strip() else "json"
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        return "yaml" if line.startswith(("---", "%YAML")) or _YAML_KEY.match(line) else "text"
    return "text"


def check_output(
    path: str | Path,
    *,
    kind: str | None,
    inputs: Iterable[str | Path | None] = (),
    force: bool = False,
    flag: str = "-o",
) -> Path:
    """Refuse an output path that would destroy something; return it as a Path.

    ``kind`` is what the command writes (a key of ``KIND_NAMES``; None skips the kind
    check); ``inputs`` are every file the command reads (None entries are skipped);
    ``force`` lets a file of another kind be replaced (never an input or a device); the
    results stores that are appended to (``ResultsStore``, and so run, simulate, sweep,
    whatif, analyze --import) never pass it, only a caller that replaces the whole file
    (demo). Call it before any work, so a refusal costs nothing."""
    out = Path(path)
    st = refuse_special(out, flag=flag)
    if st is None:
        return out
    for inp in inputs:
        if inp is None:
            continue
        ist = _stat(inp)
        if ist is not None and (ist.st_dev, ist.st_ino) == (st.st_dev, st.st_ino):
            same = "" if os.path.realpath(inp) == os.path.realpath(out) else " (the same file under another name)"
            raise OutputError(f"{flag} {out}: is the input {inp}{same}; writing it would destroy the input: "
                              "choose another output path")
    if kind is None:
        return out
    try:
        found = sniff(out)
    except OSError as exc:
        raise OutputError(f"{flag} {out}: cannot read it to see what it holds ({exc.strerror}); "
                          "choose another output path") from exc
    if found is None or found == kind:
        return out
    if kind == "duckdb" and not force:
        raise OutputError(f"{flag} {out}: holds {KIND_NAMES.get(found, found)}, not a DuckDB results store; "
                          "results are appended to a DuckDB file from 'burstbench run' or 'simulate', "
                          "or to a new path")
    if found == "empty" or force:
        return out
    raise OutputError(f"{flag} {out}: holds {KIND_NAMES.get(found, found)}, not {KIND_NAMES.get(kind, kind)}; "
                      "choose another output path, or add --force to replace it")


@contextmanager
def atomic_path(path: str | Path, *, flag: str = "-o") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A symlink is written through (its target is replaced, as ``>`` would), the new file
    keeps an existing file's permission bits (else 0666 less the umask: mkstemp's 0600
    is wrong for a trace or a report meant to be shared), and the data are fsynced
    before the rename so a crash leaves the old file or the new one, never a torn one.
    On any error the temporary file is removed and ``path`` is untouched."""
    target = Path(os.path.realpath(path))
    st = refuse_special(target, flag=flag)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot write there ({exc.strerror}); pick a writable path") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        refuse_special(target, flag=flag)  # nothing special appeared there meanwhile
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some file systems cannot fsync a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str, *, flag: str = "-o") -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``."""
    with atomic_path(path, flag=flag) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def force_option(f: Any) -> Any:
    """The ``--force`` flag of every command that replaces a file (one wording everywhere)."""
    import click

    return click.option("--force", is_flag=True,
                        help="Replace an existing output file of another kind (never an input or a device).")(f)
