"""Per-chunk pieces of the OpenAI backend's hot loop, on the real aiohttp protocol."""

from __future__ import annotations

import asyncio

from burstbench.backends import openai as oa


def test_timed_protocol_ignores_the_empty_resume_feed() -> None:
    """aiohttp's resume_reading() feeds b"" to data_received from inside readany(); that
    must not restamp the arrival time, or a chunk's time becomes when its task ran."""
    loop = asyncio.new_event_loop()
    try:
        proto = oa._TimedResponseHandler(loop)
        proto.data_received(b"HTTP/1.1")
        arrived = proto.rx_perf
        assert arrived > 0
        proto.data_received(b"")
        proto.resume_reading()
        assert proto.rx_perf == arrived
    finally:
        loop.close()
