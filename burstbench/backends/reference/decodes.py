"""The simulator's fast path: stretches of decode-only engine iterations in one tight loop.

A busy hour is ~10^5–10^6 iterations and most of them only decode: every running
request gets one token, a few cross a KV block boundary, now and then one finishes.
``step()`` handles the general case (admissions, chunked prefill, preemption) at
O(events) but with per-step set-up; this loop runs what is left at a few bytecodes
per iteration and hands back to ``step()`` as soon as something else must happen.
It is a mixin of ``EngineCore`` (kept apart for size and because only the virtual-
time simulator uses it: the server streams every step through ``step()``).
"""

from __future__ import annotations

import heapq
from typing import Any

from burstbench.backends.reference.seq import RUNNING


class DecodeLoop:
    """``run_decodes`` for ``EngineCore`` (which provides every attribute used here)."""

    _sums: Any
    _terms: Any
    _terms_ok: dict
    _fin: list
    _wheel: list
    pool: Any
    prefilling: dict
    block_size: int
    it: int
    B: int
    S: int
    generation_tokens: int
    max_batch_tokens_seen: int
    last_batch_tokens: int
    last_decodes: int
    last_chunks: dict
    num_waiting: int
    jitter: Any

    def run_decodes(self, t: float, until: float, times: Any) -> float:
        """Run decode-only iterations from time ``t`` while nothing else needs scheduling.

        Exactly what ``step()`` would do for a step with no waiting request and no
        partial prefill, minus its bookkeeping: block boundary allocations that fit
        and finishing requests are handled inline, and the loop stops (leaving the
        rest to ``step()``) at the first iteration that needs more: a block that must
        preempt, an admission, an idle engine, or the clock reaching ``until``.
        Appends each iteration's end time to ``times``; returns the new time.
        Needs a cost with ``step_time_sums``.
        """
        sums = self._sums
        if sums is None or self.prefilling or self.num_waiting or not self.B:
            return t
        fin = self._fin
        wheel = self._wheel
        pool = self.pool
        num_free = pool.num_free
        # Without prefix caching block ids are interchangeable: take them off the free
        # stack directly (what ``allocate(1)`` would hand out, in the same order).
        stack = pool.free_stack
        grow = self._grow  # type: ignore[attr-defined]
        bs = self.block_size
        it = self.it
        B0 = B = self.B
        S = self.S
        append = times.append
        gen = 0
        mark = it  # tokens are counted per stretch of one batch size: B per iteration
        terms = self._decode_terms(B, S)
        a, b, line = self._decode_line(B, S, terms)
        never = it + (1 << 62)
        jit = self.jitter  # as in step(): each iteration's time through it
        next_fin = fin[0][0] if fin else never
        while t < until:
            if it >= next_fin:  # drop finish entries of requests preempted or finished since
                while fin and fin[0][0] <= it and (fin[0][2] != fin[0][3].ver or fin[0][3].state != RUNNING):
                    heapq.heappop(fin)
                next_fin = fin[0][0] if fin else never
            slot = wheel[it % bs]
            if slot:
                if stack is not None:
                    if len(slot) > len(stack):
                        break  # a block must preempt: step() does it in running order
                    pop = stack.pop
                    for s in slot:
                        if s.need_it <= it:
                            s.blocks.append(pop())
                            s.need_it += bs
                else:
                    if len(slot) > num_free():
                        break
                    for s in slot:
                        if s.need_it <= it:
                            grow(s)
            if it >= next_fin:
                # what step() does for a decode-only step in which requests finish: the
                # exact cost, then the batch shrinks and the line is fitted anew
                d = terms[0] + (S + B) * terms[1] if terms else sums(decode_seqs=B, decode_context_sum=S)
                t += d if jit is None else jit(d)
                append(t)
                gen += B * (it + 1 - mark)
                self.last_batch_tokens = self.last_decodes = B
                self.last_chunks = {}
                self.S = S
                self._finish_decodes(it, None)  # type: ignore[attr-defined]
                B = self.B
                S = self.S + B
                it += 1
                mark = it
                next_fin = fin[0][0] if fin else never
                if not B:
                    break
                terms = self._decode_terms(B, S)
                a, b, line = self._decode_line(B, S, terms)
                continue
            d = a + b * S if line else sums(decode_seqs=B, decode_context_sum=S)
            t += d if jit is None else jit(d)
            append(t)
            S += B
            it += 1
        gen += B * (it - mark)
        self.it = it
        self.S = S
        self.generation_tokens += gen
        if gen and self.max_batch_tokens_seen < B0:
            self.max_batch_tokens_seen = B0
        return t

    def _decode_terms(self, B: int, S: int) -> tuple[float, float] | None:
        """The cost's exact decode-step terms for batch ``B`` (``CostModel.decode_terms``), or None.

        Checked once per batch size against ``step_time_sums`` itself, so a cost whose
        decode step is not ``base + (S + B)·coef`` is simply called instead."""
        got = self._terms_ok.get(B, False)
        if got is False:
            got = self._terms(B) if self._terms is not None else None
            if got is not None and got[0] + (S + B) * got[1] != self._sums(decode_seqs=B, decode_context_sum=S):
                got = None
            self._terms_ok[B] = got
        return got

    def _decode_line(self, B: int, S: int, terms: tuple[float, float] | None) -> tuple[float, float, bool]:
        """``(a, b, ok)``: the step time of batch ``B`` as ``a + b·S``, fitted at context sum ``S``.

        The step time is affine in the context sum for a fixed batch (decode attention
        reads KV linearly): two evaluations give the line and a third checks it (``ok``
        false: the caller costs every step exactly instead)."""
        if terms:  # the values step_time_sums would return, without the calls
            e0, e1 = terms
            t0 = e0 + (S + B) * e1
            t1 = e0 + (S + 4096 * B + B) * e1
            t2 = e0 + (S + 1024 * B + B) * e1
        else:
            sums = self._sums
            t0 = sums(decode_seqs=B, decode_context_sum=S)
            t1 = sums(decode_seqs=B, decode_context_sum=S + 4096 * B)
            t2 = sums(decode_seqs=B, decode_context_sum=S + 1024 * B)
        b = (t1 - t0) / (4096 * B)
        a = t0 - b * S
        return a, b, abs(a + b * (S + 1024 * B) - t2) <= 1e-9 * t2
