"""Reading a user's input file: the path, its text, and the JSON or YAML in it.

Every reader of a user's file (trace readers, result importers, twin and workload
YAML) goes through these so the same hostile inputs end in the same one-line
``InputError`` instead of a traceback: a symlink loop (``RuntimeError`` from
``Path.resolve``), a binary or Parquet file where text belongs
(``UnicodeDecodeError``), a value nested thousands deep (``RecursionError`` in
Python's recursive parsers), a line longer than ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from burstbench.errors import InputError
from burstbench.limits import MAX_LINE_BYTES, MAX_NESTING, MAX_TEXT_FILE_BYTES

_MAGIC = {b"PAR1": "a Parquet file", b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive",
          b"DUCK": "a DuckDB file"}


def check_input(path: str | Path) -> Path:
    """``path`` if it names a readable regular file, else an ``InputError`` saying why."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError("is a symlink loop (a link that points back at itself); fix the link",
                             path=p) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError("no such file; check the path", path=p) from exc
        raise InputError(f"cannot be read ({exc.strerror or exc})", path=p) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory; give a file", path=p)
    if not stat.S_ISREG(st.st_mode):
        raise InputError("is not a regular file (a device, pipe or socket); give a file", path=p)
    return p


def kind_of(head: bytes) -> str | None:
    """What a binary file's first bytes say it is (None for text-like bytes)."""
    for magic, what in _MAGIC.items():
        if head.startswith(magic) or (magic == b"DUCK" and head[8:12] == magic):
            return what
    if b"\x00" in head[:4096]:
        return "a binary file"
    return None


def read_text(path: str | Path, *, expected: str, max_bytes: int = MAX_TEXT_FILE_BYTES,
              error: type[InputError] = InputError) -> str:
    """The UTF-8 text of ``path``, read whole; a binary, Parquet or oversized file is refused by name.

    ``expected`` says what the file should be ("a vLLM/GuideLLM result JSON"), for the message.
    """
    try:
        p = check_input(path)
    except InputError as exc:
        raise error(str(exc).removeprefix(f"{path}: "), path=path) from exc
    size = p.stat().st_size
    if size > max_bytes:
        raise error(f"is {size:,} bytes, over the {max_bytes:,} read whole here; expected {expected}", path=p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot be read ({exc.strerror or exc})", path=p) from exc
    what = kind_of(data[:4096])
    if what is not None:
        raise error(f"is {what}, not text; expected {expected}", path=p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"is not UTF-8 text (byte {exc.start:,}); expected {expected}", path=p, line=line) from exc


def loads_json(text: str | bytes, *, path: str | Path | None = None, line: int | None = None) -> Any:
    """``json.loads`` whose nesting beyond ``MAX_NESTING`` is an ``InputError``, as is bad JSON.

    Python's decoder recurses once per level and ends in ``RecursionError`` near
    1,000; no real record nests more than a few levels, so the depth is checked
    (cheaply, on the parsed value) and the recursion caught at the same place.
    With ``line`` the text is one line of a JSON Lines file, bounded by ``MAX_LINE_BYTES``.
    """
    if line is not None and len(text) > MAX_LINE_BYTES:
        raise InputError(f"line of {len(text):,} bytes is over the limit of {MAX_LINE_BYTES:,}",
                         path=path, line=line)
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise InputError(f"JSON nests deeper than {MAX_NESTING} levels; no real record does", path=path,
                         line=line) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"is not valid JSON ({exc.msg} at column {exc.colno})", path=path,
                         line=(line or 1) + exc.lineno - 1) from exc
    except UnicodeDecodeError as exc:
        raise InputError("is not UTF-8 text", path=path, line=line) from exc
    check_depth(value, path=path, line=line)
    return value


def check_depth(value: Any, *, path: str | Path | None = None, line: int | None = None,
                field: str | None = None) -> None:
    """Refuse a parsed JSON/YAML value nested deeper than ``MAX_NESTING`` (iteratively)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > MAX_NESTING:
            raise InputError(f"nests deeper than {MAX_NESTING} levels; no real record does", path=path,
                             line=line, field=field)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)


def load_yaml(text: str, *, path: str | Path | None = None, error: type[InputError] = InputError) -> Any:
    """``yaml.safe_load`` with a deep nesting and malformed YAML as one-line ``error``s."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except RecursionError as exc:
        raise error(f"YAML nests deeper than {MAX_NESTING} levels; no real file does", path=path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"not valid YAML ({what}); fix the syntax", path=path, line=line) from exc
    try:
        check_depth(value, path=path)
    except InputError as exc:
        raise error(str(exc).removeprefix(f"{path}: "), path=path) from exc
    return value
