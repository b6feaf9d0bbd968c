"""The incremental SSE parser: hand-made streams, then properties over random splits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstbench.backends.sse import DONE, SSEError, SSEParser, parse_all


def feed_in_pieces(data: bytes, cuts: list[int], **kw) -> list[bytes]:
    p = SSEParser(**kw)
    out: list[bytes] = []
    prev = 0
    for c in sorted(set(cuts)):
        out += p.feed(data[prev:c])
        prev = c
    out += p.feed(data[prev:])
    return out + p.finish()


def test_vllm_style_stream() -> None:
    body = b'data: {"a":1}\n\ndata: {"a":2}\n\ndata: [DONE]\n\n'
    assert parse_all(body) == [b'{"a":1}', b'{"a":2}', DONE]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    body = eol.join([b"data: x", b"", b"data: y", b"data: z", b"", b""])
    assert parse_all(body) == [b"x", b"y\nz"]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []  # the LF completes the CRLF, it is not a blank line
    assert p.feed(b"\r\n") == [b"a"]


def test_comments_keepalives_and_other_fields() -> None:
    body = (
        b": keep-alive\n\n"
        b"event: message\nid: 7\nretry: 100\ndata: one\n\n"
        b":\n\n\n\n"
        b"data:two\n\n"  # no space after the colon
        b"data\n\n"  # field name alone: empty data
        b"unknown: field\n\n"  # no data: no event
    )
    assert parse_all(body) == [b"one", b"two", b""]


def test_only_one_leading_space_is_dropped() -> None:
    assert parse_all(b"data:   x \n\n") == [b"  x "]


def test_missing_final_newline() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"x": 1}\n\ndata: [DONE]') == [b'{"x": 1}']
    assert p.finish() == [DONE]
    assert p.finish() == []


def test_event_without_final_blank_line() -> None:
    assert parse_all(b"data: a\ndata: b\n") == [b"a\nb"]


def test_bom_split_across_reads() -> None:
    p = SSEParser()
    assert p.feed(b"\xef") == []
    assert p.feed(b"\xbb") == []
    assert p.feed(b"\xbfdata: a\n\n") == [b"a"]
    # a BOM later in the stream is data, not stripped
    assert parse_all(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [b"a"]


def test_long_line_is_bounded() -> None:
    p = SSEParser(max_line_bytes=16)
    with pytest.raises(SSEError):
        p.feed(b"data: " + b"x" * 32)
    p = SSEParser(max_line_bytes=16)
    p.feed(b"data: 0123456789")
    with pytest.raises(SSEError):
        p.feed(b"abcdef")


def test_long_complete_lines_are_fine() -> None:
    big = b"y" * 1_000_000
    assert parse_all(b"data: " + big + b"\n\n") == [big]


# -- properties ---------------------------------------------------------------------

payload = st.lists(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        max_size=20,
    ),
    min_size=1,
    max_size=3,
)  # one event = 1..3 data lines
eols = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw):
    """A valid event stream and the payloads a correct parser must return."""
    events = draw(st.lists(payload, max_size=8))
    parts: list[bytes] = []
    expected: list[bytes] = []

    def eol() -> bytes:
        e = draw(eols)
        # CR then LF would be one CRLF line end, not two: keep separate ends separate
        return b"\r\n" if e == b"\n" and parts and parts[-1].endswith(b"\r") else e

    if draw(st.booleans()):
        parts.append(b"\xef\xbb\xbf")
    for lines in events:
        if draw(st.booleans()):
            parts.append(b": ping" + eol())
            parts.append(eol())
        for line in lines:
            parts.append(b"data: " + line.encode() + eol())
        parts.append(eol())
        expected.append("\n".join(lines).encode())
    body = b"".join(parts)
    if draw(st.booleans()):
        body += b"data: [DONE]"  # no final newline
        expected.append(DONE)
    return body, expected


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_random_splits_give_the_same_events(stream, data) -> None:
    body, expected = stream
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    assert feed_in_pieces(body, cuts) == expected
    assert feed_in_pieces(body, list(range(len(body)))) == expected  # byte by byte


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_random_bytes_split_invariant_and_only_sse_error(raw: bytes, data) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    whole = parse_all(raw)
    assert feed_in_pieces(raw, cuts) == whole
    with contextlib.suppress(SSEError):  # the one defined error
        feed_in_pieces(raw, cuts, max_line_bytes=8)


def reference_parse(body: bytes) -> list[bytes]:
    """The WHATWG event-stream algorithm written plainly (plus the lenient final
    dispatch), as an independent oracle for the incremental parser."""
    import re

    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    lines = re.split(rb"\r\n|\r|\n", body)
    if lines and lines[-1] == b"":
        lines.pop()  # the text ended with a line end: no unterminated last line
    events: list[bytes] = []
    data: list[bytes] | None = None
    for line in [*lines, b""]:  # the extra blank line is the lenient end-of-stream dispatch
        if line == b"":
            if data is not None:
                events.append(b"\n".join(data))
            data = None
        elif line.startswith(b":"):
            continue
        else:
            name, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data = [*(data or []), value]
    return events


sse_bytes = st.lists(
    st.sampled_from(
        [
            b"data",
            b"data:",
            b"data: ",
            b":",
            b" ",
            b"x",
            b"{}",
            b"\n",
            b"\r",
            b"\r\n",
            b"event: e",
            b"\xef\xbb\xbf",
            b"[DONE]",
            b"\xff",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(sse_bytes, st.data())
def test_matches_the_reference_algorithm(body: bytes, data) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert feed_in_pieces(body, cuts) == reference_parse(body)
