"""Incremental Server-Sent Events parser for streamed LLM responses.

Why our own: the load generator's per-chunk cost is the client's ceiling, and
line-at-a-time readers (``async for line in resp.content``) pay one await per
line. This parser takes whatever bytes one socket read returned and hands back
every complete event's ``data`` payload at once, as ``bytes`` (the caller
decodes each payload once). The usual shape, one ``data: `` line and a blank
line per event, is split out with a few C-level ``bytes.split`` calls; anything
else goes through the general line-by-line rules.

It follows the WHATWG event-stream rules that OpenAI-compatible servers rely
on: lines end in CRLF, LF or CR (a CRLF may be split across two reads);
``:`` lines are comments (keep-alives); several ``data:`` lines in one event
are joined with ``\\n``; one space after the colon is dropped; a blank line
ends the event; fields other than ``data`` (``event``, ``id``, ``retry``) are
ignored. Being lenient where servers are sloppy, ``finish()`` also returns an
event whose final blank line (or final newline) never came.

The only error it raises is ``SSEError``: a line, or an event's joined ``data``
lines, longer than ``max_line_bytes`` (a runaway, hostile or non-SSE body), so a
broken server cannot grow memory unbounded; the backend records the request as
an error (``sse_malformed``), never as ok.
Payload bytes are not validated here; invalid UTF-8 or JSON surfaces where the
payload is decoded.
"""

from __future__ import annotations

from burstbench.limits import MAX_SSE_EVENT_BYTES

__all__ = ["DONE", "SSEError", "SSEParser", "parse_all"]

DONE = b"[DONE]"
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The byte stream cannot be an event stream (e.g. an unbounded line)."""


class SSEParser:
    """Feed raw bytes with ``feed``; get complete ``data`` payloads back.

    Not thread-safe; one parser per response. ``max_line_bytes`` bounds the
    buffered partial line and an event's data (default ``MAX_SSE_EVENT_BYTES``:
    a token delta is bytes, a final event with a long echoed prompt still fits;
    64 MiB events let a hostile server cost 843 MB across a run).
    """

    __slots__ = ("_buf", "_data", "_skip_lf", "_started", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._skip_lf = False
        self._started = False
        self.max_line_bytes = max_line_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse one read's bytes; return the data payloads of events it completed."""
        if not chunk:
            return []
        if not self._started:
            chunk = self._strip_bom(chunk)
            if not chunk:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            # A CR at the very end may be the first half of a CRLF split across reads:
            # end the line now and swallow a leading LF next time.
            if chunk[-1:] == b"\r":
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self.max_line_bytes:
                raise SSEError(
                    f"SSE line longer than {self.max_line_bytes:,} bytes without a line end "
                    "(limit of one event; no real token delta is that long)"
                )
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        if len(self._buf) > self.max_line_bytes:
            raise SSEError(f"SSE line longer than {self.max_line_bytes} bytes without a line end")
        block = buf[: end + 1]
        if end > self.max_line_bytes and max(map(len, block.split(b"\n"))) > self.max_line_bytes:
            raise SSEError(f"SSE line longer than {self.max_line_bytes:,} bytes (limit of one event)")
        if not self._data:
            fast = _fast_events(block)
            if fast is not None:
                events, pending = fast
                if pending is not None:
                    self._data = [pending]
                return events
        return self._lines(block[:-1].split(b"\n"))

    def finish(self) -> list[bytes]:
        """End of stream: return the event left open by a missing final newline/blank line."""
        lines = [self._buf] if self._buf else []
        self._buf = b""
        lines.append(b"")
        return self._lines(lines)

    def _strip_bom(self, chunk: bytes) -> bytes:
        # A UTF-8 BOM may open the stream, possibly split across the first reads:
        # hold up to 2 bytes that could still be one.
        probe = self._buf + chunk
        if len(probe) < 3 and _BOM.startswith(probe):
            self._buf = probe
            return b""
        self._started = True
        self._buf = b""
        return probe[3:] if probe.startswith(_BOM) else probe

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    ev = data[0] if len(data) == 1 else b"\n".join(data)
                    if len(ev) > self.max_line_bytes:
                        raise SSEError(f"SSE event's data exceeds {self.max_line_bytes:,} bytes (limit of one event)")
                    events.append(ev)
                    data = []
                continue
            if line[:5] == b"data:":
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line[:1] == b":":
                continue  # comment / keep-alive
            elif line == b"data":
                data.append(b"")
            # other fields (event, id, retry, unknown) are ignored
        self._data = data
        if len(data) > 1 and sum(map(len, data)) > self.max_line_bytes:
            raise SSEError(f"SSE event's data lines exceed {self.max_line_bytes:,} bytes (limit of one event)")
        return events


def _fast_events(block: bytes) -> tuple[list[bytes], bytes | None] | None:
    """The common case in a few C-level splits: every event is one ``data: `` line
    followed by one blank line (vLLM, SGLang, OpenAI). ``block`` ends with a line end.
    Returns (payloads, data of an event whose blank line has not come yet), or None
    for "use the general line parser" (comments, multi-line data, extra blank lines)."""
    items = block.split(b"\n\n")
    last = items.pop()[:-1]  # lines after the last blank line, without their final LF
    for it in items:
        if it[:6] != b"data: " or b"\n" in it:
            return None
    if not last:
        return [it[6:] for it in items], None
    if last[:6] != b"data: " or b"\n" in last:
        return None
    return [it[6:] for it in items], last[6:]


def parse_all(body: bytes) -> list[bytes]:
    """All data payloads of a complete event stream (tests, non-incremental callers)."""
    parser = SSEParser()
    return parser.feed(body) + parser.finish()
