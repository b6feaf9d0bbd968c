"""One trace builder for tests that need evenly spaced requests of one shape.

Span, phase and report tests each built the same frame by hand; a test that needs
another shape (sessions, mixed lengths) still builds its own.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from burstbench.traces.schema import Trace, conform


def even_trace(n: int, gap: float, prompt: int, out: int) -> Trace:
    """``n`` requests ``gap`` seconds apart (0: all at once), each ``prompt`` tokens in, ``out`` out."""
    return Trace(conform(pl.DataFrame({"arrival_s": np.arange(n) * gap, "input_tokens": np.full(n, prompt),
                                       "output_tokens": np.full(n, out)})))
