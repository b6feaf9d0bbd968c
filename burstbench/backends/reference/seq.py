"""One request's state inside the reference engine, and what one iteration did with them.

Kept apart from the scheduler (``engine``) because the simulator, the server, the
span writer and the twin all read these records, while only the engine changes them.
A decoding request is stored lazily: ``c0``/``o0`` are its context and output count
at iteration ``sync``; its state at a later iteration follows arithmetically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WAITING, RUNNING, DONE, REJECTED, ABORTED = 0, 1, 2, 3, 4


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside the engine. ``eq=False``: identity is the object (dict/set keys)."""

    rid: int
    prompt_len: int
    max_out: int
    arrival: float = 0.0
    priority: int = 0
    hashes: list[int] | None = None  # chained hashes of full blocks (prompt, and output when known)
    tag: Any = None  # the caller's payload (server: the stream state)
    # progress (materialised fields; for a decoding request see c0/o0/sync)
    computed: int = 0
    out: int = 0
    state: int = WAITING
    decoding: bool = False
    c0: int = 0
    o0: int = 0
    sync: int = 0
    seg_start: int = -1
    rorder: int = 0  # position key in the running order
    qorder: int = 0  # arrival order (tie-break in the waiting queue)
    ver: int = 0  # bumps invalidate queued finish events
    need_it: int = 0  # decoding: the iteration that needs its next KV block
    wslot: int = -1  # decoding: its slot in the engine's block wheel (-1: not in it)
    blocks: list[int] = field(default_factory=list)
    n_cached: int = 0
    segs: list[int] = field(default_factory=list)  # flat [start_it, count, ...] of emitted tokens
    sched_it: int = -1  # iteration that first scheduled it (vLLM's scheduled_ts; preemptions ignored)
    first_it: int = -1
    last_it: int = -1
    cached_tokens: int = -1
    preemptions: int = 0
    preemptions_told: int = 0  # of them, how many vLLM's counter has seen (see EngineCore.preemptions_reported)
    lk_ver: int = -1  # prefix lookup memo: pool version and result (blocked queue heads)
    lk_hit: list[int] = field(default_factory=list)

    def context_at(self, it: int) -> int:
        """Tokens in the KV cache before iteration ``it``."""
        return self.c0 + (it - self.sync) if self.decoding else self.computed

    def out_at(self, it: int) -> int:
        """Output tokens produced before iteration ``it``."""
        return self.o0 + (it - self.sync) if self.decoding else self.out


@dataclass(slots=True)
class StepOutput:
    """What one iteration did, for callers that stream (the server)."""

    dt: float
    emitted: list[Seq]  # each produced exactly one token in this step
    finished: list[Seq]
    preempted: list[Seq]
    admitted: list[Seq] = field(default_factory=list)  # first scheduled in this step
