"""The real-time side of the reference server: one loop per replica drives its engine.

Each iteration is scheduled by the engine, its time taken from the cost model,
and its tokens released at the iteration's absolute deadline (``start +
step_time / time_scale``; the next iteration starts at that deadline, so the
schedule does not drift with loop jitter). Handlers wait on their ``Stream``;
a plain single-choice stream is written by the loop itself (``write_direct``)
while its reader keeps up, which saves a handler wake-up per token.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import TYPE_CHECKING

from burstbench.backends.reference.engine import EngineCore
from burstbench.backends.reference.stats import ServerStats

if TYPE_CHECKING:
    from burstbench.backends.reference.writers import SingleWriter


class Stream:
    """Per-request state shared between the replica loop (producer) and the handler."""

    __slots__ = ("closed", "deadline", "direct", "event", "pending", "preempted", "t_first", "t_last", "t_sched")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.pending = 0
        self.deadline = 0.0  # deadline of the oldest unwritten token
        self.preempted = 0
        self.direct: SingleWriter | None = None  # set while the replica loop writes this stream itself
        self.closed = False  # the server is shutting down
        self.t_sched = self.t_first = self.t_last = -1.0  # loop times of the span's phases


async def write_direct(st: Stream) -> None:
    """Write a plain stream's ready tokens from the replica loop itself (no handler wake-up).

    Only while the connection's write buffer is nearly empty, so the write cannot
    wait for the peer (aiohttp only waits when the transport is paused); a slow
    reader's stream goes back to its handler, which may wait without holding up
    the other streams.
    """
    ctx = st.direct
    assert ctx is not None
    tr = ctx.request.transport
    if tr is None or tr.is_closing() or tr.get_write_buffer_size() > 16384:
        st.direct = None
        st.event.set()
        return
    n = st.pending
    st.pending = 0
    data = ctx.render(n, st.deadline)
    try:
        await ctx.resp.write(data)
    except (ConnectionError, RuntimeError):
        ctx.failed = True
    if ctx.done >= ctx.n_out or ctx.failed:
        st.direct = None
        st.event.set()


def report_crash(task: asyncio.Task[None]) -> None:
    """A replica loop must never end on its own; if it does, say why instead of hanging silently."""
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


class Replica:
    """One engine and the real-time loop that drives it."""

    def __init__(self, engine: EngineCore, scale: float, stats: ServerStats, spin_s: float = 0.001) -> None:
        self.engine = engine
        self.scale = scale
        self.spin_s = spin_s
        self.stats = stats
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        eng = self.engine
        start: float | None = None
        while True:
            if not eng.has_work():
                self.wake.clear()
                await self.wake.wait()
                start = None
                continue
            now = loop.time()
            if start is None or start < now - 0.25:
                # idle before, or more than 250 ms behind: restart the schedule from now
                start = now
            out = eng.step(collect=True)
            if out is None:
                continue
            self.stats.iterations += 1
            deadline = start + out.dt / self.scale
            delay = deadline - loop.time()
            if delay > self.spin_s:
                await asyncio.sleep(delay - self.spin_s)
            # the selector sleeps in whole milliseconds: yield-spin the last stretch
            while loop.time() < deadline:
                await asyncio.sleep(0)
            direct: list[Stream] = []
            released = loop.time()  # span times: when tokens really left the engine, late or not
            for s in out.admitted:  # not before it arrived: a handler may add it after ``start``
                s.tag.t_sched = max(start, s.arrival)
            for s in out.emitted:
                st: Stream = s.tag
                if st.t_first < 0:
                    st.t_first = released
                st.t_last = released
                if st.pending == 0:
                    st.deadline = deadline
                st.pending += 1
                if st.direct is not None:
                    direct.append(st)
                else:
                    st.event.set()
            for s in out.preempted:
                s.tag.preempted += 1
            for st in direct:
                await write_direct(st)
            start = deadline
