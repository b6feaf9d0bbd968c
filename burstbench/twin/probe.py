"""``calibrate --probe URL``: measure the endpoint on purpose, then fit the twin to that.

A recorded production run mixes every effect at once: queueing, chunked prefill, batch
sizes that drift with the load. A designed probe separates them, one question per phase,
each a closed-loop run (the next request goes when one ends, so no phase overloads the
engine, whatever its speed):

- ``probe-prefill``: one request at a time over a range of prompt lengths with 2-token
  answers: TTFT against prompt length is the per-step cost plus the per-prefill-token
  cost (FLOP/s) plus the frontend, with no queue;
- ``probe-decode-N``: ``N`` users at once with short prompts and long answers, for a few
  ``N``: TPOT against the batch is the per-step cost plus ``N`` times the per-sequence
  cost (and the weight/KV reads of the bandwidth scale);
- ``probe-mixed``: ``max(N)`` users with the prompt lengths of the prefill phase and
  medium answers: prefills and decodes in one step, as in production.

Each phase is a run in the results file with its label, so ``calibrate --run`` can fit
them again (or only some) and ``report`` shows them. Sizes are fixed and small (about a
hundred and fifty requests in all): the probe is bounded in requests, and each phase in time by
the run's own timeout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from burstbench.traces.schema import Trace, conform

PROMPTS = (16, 128, 512, 1024, 2048)
BATCHES = (1, 4, 16)
DECODE_PROMPT, DECODE_ANSWER = 32, 32
MIN_REQUESTS = 20  # what calibrate needs of every run it reads (read_run)
MIXED_ANSWER = 32


def _trace(inp: list[int], out: list[int]) -> Trace:
    n = len(inp)
    return Trace(conform(pl.DataFrame({"arrival_s": np.zeros(n), "input_tokens": np.array(inp, dtype=np.int64),
                                       "output_tokens": np.array(out, dtype=np.int64)})))


def phases(max_context: int | None = None) -> list[tuple[str, Trace, int]]:
    """(label, trace, users) of every phase; prompts longer than ``max_context`` less the
    answer are left out (the server would refuse them)."""
    prompts = [p for p in PROMPTS if max_context is None or p + MIXED_ANSWER <= max_context]
    reps = -(-MIN_REQUESTS // len(prompts))
    out = [("probe-prefill", _trace([p for p in prompts for _ in range(reps)], [2] * (reps * len(prompts))), 1)]
    for b in BATCHES:
        n = max(MIN_REQUESTS, 3 * b)  # three waves at least: the batch is whole for most of the phase
        out.append((f"probe-decode-{b}", _trace([DECODE_PROMPT] * n, [DECODE_ANSWER] * n), b))
    users = max(BATCHES)
    mixed = [prompts[i % len(prompts)] for i in range(3 * users)]
    out.append(("probe-mixed", _trace(mixed, [MIXED_ANSWER] * len(mixed)), users))
    return out


def run_probe(url: str, out: str | Path, *, model: str | None = None, tokenizer: str | None = None,
              max_context: int | None = None, progress: bool = False,
              timeout_s: float = 600.0) -> list[tuple[str, str]]:
    """Record every phase against ``url`` into ``out``; returns (label, run id) of each."""
    from burstbench.loadgen.runner import run_scenario
    from burstbench.loadgen.scenario import Scenario

    ids: list[tuple[str, str]] = []
    for label, trace, users in phases(max_context):
        sc = Scenario(url=url, model=model, mode="closed", concurrency=users, max_requests=trace.df.height,
                      tokenizer=tokenizer, timeout_s=timeout_s)
        ids.append((label, run_scenario(trace, sc, out, label=label, progress=progress)))
    return ids
