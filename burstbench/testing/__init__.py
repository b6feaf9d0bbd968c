"""Test and benchmark helpers that are real components, not mocks.

``StreamServer`` is an OpenAI-compatible streaming HTTP server on 127.0.0.1 with
set timing (TTFT, inter-chunk delay, tokens per chunk) and fault modes, which
records when it wrote each chunk so client timings can be checked against it.
Imported lazily, so ``python -m burstbench.testing.stream_server`` runs cleanly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerRecord", "StreamServer", "StreamSettings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from burstbench.testing import stream_server

        return getattr(stream_server, name)
    raise AttributeError(f"module 'burstbench.testing' has no attribute '{name}'")
