"""What kind of file a trace source is, read from its first bytes only.

Detection must not cost a pass over a multi-gigabyte file, so everything here looks
at the head (header line, first JSON record) or the tail (a cut-off last line) and
nothing in between. The line-locating helpers run only after a fast read failed,
to turn "row 4,211,907 is bad" into the line number a user can open in an editor.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from burstbench.errors import InputError, TraceFormatError
from burstbench.infile import check_input
from burstbench.limits import MAX_LINE_BYTES

# The csv module refuses fields over 128 KiB (``_csv.Error``) on its own; a trace's
# prompt text may be longer, and every line is bounded by MAX_LINE_BYTES first anyway.
csv.field_size_limit(MAX_LINE_BYTES)

HEAD_BYTES = 1 << 20  # the header or first record must fit in 1 MiB
TAIL_BYTES = 1 << 16

Kind = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class Source:
    """A trace file's path plus what its head says about it."""

    path: Path
    kind: Kind
    size: int
    ends_with_newline: bool
    header: tuple[str, ...] = ()  # CSV column names (BOM and surrounding spaces removed)
    first_record: dict[str, Any] | None = None  # JSONL: the first parsable object
    first_record_line: int = 1
    shown: Path | None = None  # the name errors use (the .gz a temporary file came from)

    def error(self, message: str, *, line: int | None = None, field: str | None = None) -> TraceFormatError:
        return TraceFormatError(message, path=self.shown or self.path, line=line, field=field)


def is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def open_source(path: str | Path, *, shown: Path | None = None) -> Source:
    """Sniff ``path``: CSV or JSON Lines, header or first record; refuse what is not a trace.

    ``shown`` is the name to use in messages when ``path`` is a decompressed copy.
    """
    path = Path(path)
    name = shown or path
    try:
        check_input(path)
    except InputError as exc:  # same words, under the name the user gave and the format error type
        raise TraceFormatError(str(exc).removeprefix(f"{path}: "), path=name) from exc
    size = path.stat().st_size
    if size == 0:
        raise TraceFormatError(
            "file is empty (0 bytes); the download or export probably failed, fetch it again",
            path=name,
            line=1,
        )
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
        fh.seek(max(0, size - 1))
        ends_with_newline = fh.read(1) in (b"\n", b"\r")
    _refuse_binary(name, head)
    check_line_lengths(path, name)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise TraceFormatError("file holds only blank lines; there are no requests in it", path=name, line=1)
    if stripped[:1] == b"[":
        raise TraceFormatError(
            "this is one JSON array, not JSON Lines; convert it with `jq -c '.[]' IN > OUT.jsonl`",
            path=name,
            line=1,
        )
    if stripped[:1] == b"{":
        record, line = _first_json_record(name, head, size)
        return Source(
            path, "jsonl", size, ends_with_newline, first_record=record, first_record_line=line, shown=shown
        )
    header = _csv_header(name, head)
    return Source(path, "csv", size, ends_with_newline, header=header, shown=shown)


def check_line_lengths(path: Path, shown: Path) -> None:
    """Refuse a line longer than ``MAX_LINE_BYTES`` before any parser reads the file.

    Polars holds a whole line in memory to parse it: a 2 GB one-line CSV took 112 s
    and 10.9 GB to be refused. Per 4 MiB window only the first and last newline are
    looked up (the lines between are shorter than the window), and those sit near the
    window's two ends in any line-per-request file: reading 64 KiB at each end finds
    them, so a clean trace costs 3 % of a read instead of a full one (a tenth of a
    second at 10 million rows). A window whose ends hold no newline is read whole.
    The line number is counted only for the error.
    """
    size = path.stat().st_size
    if size <= MAX_LINE_BYTES:  # no line can be longer than the file
        return
    line_start = 0  # file offset where the current line began
    with path.open("rb", buffering=0) as fh:
        for pos in range(0, size, _WINDOW):
            n = min(_WINDOW, size - pos)
            first, last = _window_newlines(fh.fileno(), pos, n)
            if (pos + n if first < 0 else first) - line_start > MAX_LINE_BYTES:
                raise TraceFormatError(
                    f"line is longer than {MAX_LINE_BYTES >> 20} MiB (no trace record is); the file is not a "
                    "line-per-request trace or a newline is missing",
                    path=shown,
                    line=_line_at(path, line_start),
                )
            if last >= 0:
                line_start = last + 1


_WINDOW = 4 << 20
_PEEK = 64 << 10


def _window_newlines(fd: int, pos: int, n: int) -> tuple[int, int]:
    """File offsets of the first and last newline in ``[pos, pos + n)``, or -1 for none."""
    if n > 2 * _PEEK:
        head = os.pread(fd, _PEEK, pos)
        tail_at = pos + n - _PEEK
        tail = os.pread(fd, _PEEK, tail_at)
        i, j = head.find(b"\n"), tail.rfind(b"\n")
        if i >= 0 and j >= 0:
            return pos + i, tail_at + j
    buf = os.pread(fd, n, pos)
    i = buf.find(b"\n")
    return (pos + i, pos + buf.rfind(b"\n")) if i >= 0 else (-1, -1)


def _line_at(path: Path, offset: int) -> int:
    """1-based number of the line that starts at byte ``offset``."""
    lines = 1
    with path.open("rb") as fh:
        while offset > 0 and (chunk := fh.read(min(offset, 1 << 22))):
            lines += chunk.count(b"\n")
            offset -= len(chunk)
    return lines


def _refuse_binary(path: Path, head: bytes) -> None:
    if head[:2] == b"\x1f\x8b":
        raise TraceFormatError("file is gzip-compressed twice; decompress it once (gunzip -k FILE)", path=path)
    if head[:4] == b"PAR1":
        raise TraceFormatError(
            "file is already Parquet; pass it straight to `trace stats`/`fit` instead of ingesting it",
            path=path,
        )
    if head[:2] == b"PK" or b"\x00" in head[:4096]:
        raise TraceFormatError("file is binary, not CSV or JSON Lines text", path=path)


def _decode_line(path: Path, raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceFormatError(
            f"not UTF-8 text (byte {exc.start} of the line); re-export the file as UTF-8",
            path=path,
            line=line,
        ) from exc


def _csv_header(path: Path, head: bytes) -> tuple[str, ...]:
    first = head.split(b"\n", 1)[0]
    if b"\n" not in head and len(head) >= HEAD_BYTES:
        raise TraceFormatError("first line is longer than 1 MiB; this is not a CSV trace", path=path, line=1)
    text = _decode_line(path, first, 1).lstrip("\ufeff").rstrip("\r")
    try:
        cols = next(csv.reader([text]))
    except (csv.Error, StopIteration) as exc:
        raise TraceFormatError(f"header is not valid CSV ({exc})", path=path, line=1) from exc
    cols = [c.strip() for c in cols]
    if len(cols) < 2:
        raise TraceFormatError(
            f"header has {len(cols)} column; expected a comma-separated header such as "
            "'Timestamp,Model,Request tokens,...' (is the file tab-separated?)",
            path=path,
            line=1,
        )
    if any(not c for c in cols):
        raise TraceFormatError("header has an empty column name", path=path, line=1)
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise TraceFormatError(f"header repeats column(s) {', '.join(dupes)}", path=path, line=1)
    return tuple(cols)


def _first_json_record(path: Path, head: bytes, size: int) -> tuple[dict[str, Any], int]:
    lines = head.split(b"\n")
    complete = len(head) >= size  # the head holds the whole file
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last_piece = i == len(lines)
        text = _decode_line(path, raw, i)
        try:
            obj = json.loads(text)
        except RecursionError as exc:
            raise TraceFormatError(
                "record nests deeper than Python's JSON parser can go (over 900 levels); no trace record "
                "does: this is not a trace",
                path=path,
                line=i,
            ) from exc
        except json.JSONDecodeError as exc:
            if is_last_piece and not complete:
                break  # the head cut the record; the full reader will judge it
            what = "cut short" if is_last_piece else "not valid JSON"
            raise TraceFormatError(
                f"{what} ({exc.msg} at column {exc.colno}); every line must be one JSON object",
                path=path,
                line=i,
            ) from exc
        if not isinstance(obj, dict):
            raise TraceFormatError(
                f"line holds a JSON {type(obj).__name__}, not an object; one request object per line",
                path=path,
                line=i,
            )
        return obj, i
    raise TraceFormatError("first JSON record is longer than 1 MiB or unreadable", path=path, line=1)


def count_lines(path: Path) -> int:
    """Physical lines in ``path`` (a last line without newline counts), in C-speed chunks."""
    n = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def csv_record_line(path: Path, record_index: int) -> int:
    """1-based line on which data record ``record_index`` (0-based) starts.

    Only needed when quoted fields span lines, so records and lines differ; walks
    the file with the csv module, which is slow but runs only to word an error.
    """
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        start = reader.line_num + 1
        for i, _row in enumerate(reader):
            if i == record_index:
                return start
            start = reader.line_num + 1
    return start


def last_line_truncated(src: Source) -> tuple[bool, str]:
    """Whether the CSV's last line was cut off, and a description of how.

    A file may legitimately lack the final newline (the Azure traces do); it is only
    truncated when that last line also has fewer fields than the header or an
    unclosed quote.
    """
    if src.ends_with_newline or src.kind != "csv":
        return False, ""
    with src.path.open("rb") as fh:
        fh.seek(max(0, src.size - TAIL_BYTES))
        tail = fh.read()
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    if last.count('"') % 2:
        return True, "it ends inside a quoted field"
    try:
        fields = next(csv.reader(io.StringIO(last)), [])
    except csv.Error:
        return True, "it is not valid CSV"
    if len(fields) < len(src.header):
        return True, f"it has {len(fields)} of {len(src.header)} fields and no newline at the end"
    return False, ""


def first_bad_utf8_line(path: Path) -> tuple[int, int] | None:
    """(line, byte column) of the first invalid UTF-8 sequence, or None if the file is clean."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                before = chunk[: exc.start]
                line += before.count(b"\n")
                col = len(before) - (before.rfind(b"\n") + 1) + 1
                return line, col
            line += chunk.count(b"\n")
    return None


def first_csv_value(src: Source, column: str) -> str | None:
    """The first data row's value of ``column``, read with the csv module (head only)."""
    idx = src.header.index(column)
    with src.path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if row:
                return row[idx].strip() if idx < len(row) else None
    return None
