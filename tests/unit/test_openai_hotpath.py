"""Per-chunk pieces of the OpenAI backend's hot loop, on the real aiohttp protocol."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from burstbench.backends import answers as oa


def test_timed_protocol_ignores_the_empty_resume_feed() -> None:
    """aiohttp's resume_reading() feeds b"" to data_received from inside readany(); that
    must not restamp the arrival time, or a chunk's time becomes when its task ran."""
    loop = asyncio.new_event_loop()
    try:
        proto = oa.TimedResponseHandler(loop)
        proto.data_received(b"HTTP/1.1")
        arrived = proto.rx_perf
        assert arrived > 0
        proto.data_received(b"")
        proto.resume_reading()
        assert proto.rx_perf == arrived
    finally:
        loop.close()


CHUNK = (b'{"id":"cmpl-1","object":"text_completion","created":1733560000,"model":"m","choices":'
         b'[{"index":0,"text":" h\\u00e9llo \\"q\\"","logprobs":null,"finish_reason":null}],"usage":null}')


@pytest.fixture(params=["orjson", "stdlib"])
def decode(request, monkeypatch):
    """``_decode_event`` with orjson (when installed) and with the stdlib path alone."""
    if request.param == "orjson":
        if oa._orjson_loads is None:
            pytest.skip("orjson not installed")
    else:
        monkeypatch.setattr(oa, "_orjson_loads", None)
    return oa._decode_event


@pytest.mark.parametrize("payload", [
    CHUNK,
    b' {"a": [1, 2.5, -3e-2, true, false, null, {}]} \n',
    b'{"u": 18446744073709551615, "n": -9223372036854775808}',  # the 64-bit ends: exact
    b'{"x": NaN, "y": -Infinity}',  # not RFC 8259: orjson refuses, the stdlib accepts as before
    b'{"inf": 1e400}',
    b'{"s": "\\ud800"}',  # a lone surrogate
    b'{"k": 1, "k": 2}',
    b'"just a string"',
])
def test_decode_matches_json_loads(decode, payload: bytes) -> None:
    got, want = decode(payload), json.loads(payload)
    if isinstance(want, dict) and "x" in want:
        assert math.isnan(got["x"]) and got["y"] == -math.inf
    else:
        assert got == want
        assert json.dumps(got) == json.dumps(want)  # same types all the way down


def test_decode_integer_past_64_bits(decode) -> None:
    """The one value orjson decodes differently: an integer outside 64 bits comes back
    as the nearest float (the stdlib keeps it exact); no count that large fits a result."""
    got = decode(b'{"big": 123456789012345678901234567890}')["big"]
    if oa._orjson_loads is None:
        assert got == 123456789012345678901234567890 and type(got) is int
    else:
        assert got == 1.2345678901234568e29 and type(got) is float


@pytest.mark.parametrize("payload", [
    b'{"a": 1',  # truncated
    b'{"a": 1} {"b": 2}',  # two values
    b'{"a": 1}x',
    b"",
    b"   ",
    b"\xff\xfe{}",  # not UTF-8
    b'{"t": "\xc3"}',  # invalid UTF-8 inside a string
])
def test_decode_rejects_what_json_rejects(decode, payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(payload)
