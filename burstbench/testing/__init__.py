"""Test and benchmark helpers that are real components, not mocks.

``StreamServer`` is an OpenAI-compatible streaming HTTP server on 127.0.0.1 with
set timing (TTFT, inter-chunk delay, tokens per chunk) and fault modes, which
records when it wrote each chunk so client timings can be checked against it.
"""

from burstbench.testing.stream_server import ServerRecord, StreamServer, StreamSettings

__all__ = ["ServerRecord", "StreamServer", "StreamSettings"]
