"""The reference engine's core: a vLLM V1 scheduler over a paged KV cache, clock-free.

One ``EngineCore.step()`` is one engine iteration, as vLLM V1's
``Scheduler.schedule()`` + ``update_from_output()`` run it:

1. running requests first, in running order: every decode gets one token;
   a request whose next token crosses a block boundary takes a new block, and
   when none is free the newest running request is preempted (FCFS: the tail
   of the running list; priority: the largest ``(priority, arrival)``), its
   blocks freed and the request put back at the front of the waiting queue to
   be recomputed; partially prefilled requests get ``min(remaining, budget)``
   tokens (chunked prefill);
2. if nothing was preempted in this step, waiting requests are admitted in
   queue order while the token budget, ``max_num_seqs`` and the KV cache allow
   (the cache must hold the request's whole sequence so far, not only the chunk
   scheduled now: vLLM's ``scheduler_reserve_full_isl``, on by default);
   a prefix-cache lookup (chained block hashes) skips the cached part of the
   prompt (always recomputing at least the last token, as vLLM does);
3. the step's time comes from the cost model; every request whose prefill
   completed, and every decode, emits one token; requests that reached their
   output length finish and free their blocks.

The engine never sleeps and never reads a clock: callers advance time by the
returned step time. The simulator runs it in virtual time; the HTTP server runs
it against wall-clock deadlines. Both see the same behaviour.

Why decodes are "lazy": a busy hour of trace is ~10^5–10^6 iterations, so the
per-iteration work must not touch every running request. A decoding request is
stored as an anchor (context and output count at iteration ``sync``); its state
at any later iteration follows arithmetically. Only events touch it: needing a
new KV block (every ``block_size`` tokens), finishing, being preempted. The
step time comes from running sums (decode count, context sum) through the cost
model's ``step_time_sums`` when it has one. Output token times are recorded as
iteration-index segments per request and turned into times in bulk by the caller.

Block needs recur with period ``block_size``, so they sit on a wheel of
``block_size`` slots (slot = iteration mod ``block_size``) instead of a heap: an
iteration visits one slot, whose requests are in running order already (requests
start decoding in the order they were admitted), and one block per request is
about a list append, not a heap pop and push. Finishes (one per request) keep a heap.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from burstbench.backends.reference.decodes import DecodeLoop
from burstbench.backends.reference.kvcache import BlockPool
from burstbench.backends.reference.seq import (
    ABORTED,
    DONE,
    REJECTED,
    RUNNING,
    WAITING,
    Seq,
    StepOutput,
)
from burstbench.errors import UsageError


class EngineCore(DecodeLoop):
    """vLLM V1 scheduling over a ``BlockPool``; the cost object gives each step's time.

    ``cost`` needs ``step_time(prefill, decode)``; if it also has
    ``step_time_sums(...)`` (the reference ``CostModel`` does) decode-heavy steps
    cost O(1) instead of O(batch).
    """

    def __init__(
        self,
        cost: Any,
        num_blocks: int,
        *,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        enable_prefix_caching: bool = True,
        max_waiting: int | None = None,
        policy: str = "fcfs",
        max_context: int | None = None,
        reserve_full_isl: bool = True,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or block_size < 1:
            raise UsageError("max_num_seqs, max_num_batched_tokens and block_size must be positive")
        if max_num_batched_tokens < max_num_seqs:
            raise UsageError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs "
                f"({max_num_seqs}), as vLLM requires; raise --max-num-batched-tokens"
            )
        if policy not in ("fcfs", "priority"):
            raise UsageError(f"policy must be 'fcfs' or 'priority', got '{policy}'")
        if max_waiting is not None and max_waiting < 0:
            raise UsageError("max_waiting must be >= 0")
        self.cost = cost
        self._sums = getattr(cost, "step_time_sums", None)
        self._terms = getattr(cost, "decode_terms", None)
        self._terms_ok: dict[int, tuple[float, float] | None] = {}  # per batch size, checked once
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        self.policy = policy
        self.reserve_full_isl = reserve_full_isl
        capacity = self.pool.num_usable * block_size
        self.max_context = min(max_context or capacity, capacity)
        self.waiting: deque[Seq] = deque()
        self._wheap: list[tuple[int, float, int, Seq]] = []
        self.running: dict[Seq, None] = {}
        self.prefilling: dict[Seq, None] = {}
        self.B = 0  # decoding requests
        self.S = 0  # sum of their contexts at the current iteration
        self.it = 0
        self._wheel: list[dict[Seq, None]] = [{} for _ in range(block_size)]
        self._fin: list[tuple[int, int, int, Seq]] = []  # (last-token iteration, rorder, ver, seq)
        self._rorder = 0
        self._qorder = 0
        self._budget = 0
        self._chunks: dict[Seq, int] = {}
        # statistics (vLLM counter names in comments)
        self.num_preemptions = 0  # preemptions as they happen
        # vllm:num_preemptions_total as vLLM exports it: a preemption is an event on the
        # request that reaches the metrics only with the request's next output, i.e. when it
        # has been recomputed and emits a token again; so vLLM's series lags the preemptions
        # by the recompute (and equals num_preemptions once every preempted request resumed).
        self.preemptions_reported = 0
        self.prompt_tokens = 0  # computed prompt tokens, recompute included (the work done)
        self.prompt_tokens_reported = 0  # vllm:prompt_tokens_total: prompts of requests first scheduled
        self.generation_tokens = 0  # vllm:generation_tokens_total
        self.prefix_queries = 0  # vllm:prefix_cache_queries_total (tokens; first scheduling only)
        self.prefix_hits = 0  # vllm:prefix_cache_hits_total (tokens; first scheduling only)
        self.num_finished = 0
        self.max_batch_tokens_seen = 0
        self.last_batch_tokens = 0  # tokens scheduled in the last step (tests, metrics)
        self.last_decodes = 0
        self.last_chunks: dict[Seq, int] = {}
        self.max_running_seen = 0
        # an iteration's time -> the same with its random draw (``jitter.StepJitter``, which
        # carries what a short step could not take to the next ones)
        self.jitter = jitter

    # -- queue ---------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self.waiting) if self.policy == "fcfs" else len(self._wheap)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def check(self, prompt_len: int, max_out: int) -> str | None:
        """Why a request can never run here (None when it can): vLLM's 400 cases."""
        if prompt_len < 1:
            return "the prompt must contain at least one token"
        if max_out < 1:
            return "max_tokens must be at least 1"
        if prompt_len + max_out > self.max_context:
            return (
                f"this engine's maximum context length is {self.max_context} tokens; the request "
                f"asks for {prompt_len} prompt + {max_out} output tokens"
            )
        return None

    def add(self, s: Seq) -> bool:
        """Queue a request; False (and ``state = REJECTED``) when the waiting queue is full."""
        if self.max_waiting is not None and self.num_waiting >= self.max_waiting:
            s.state = REJECTED
            return False
        s.state = WAITING
        s.qorder = self._qorder
        self._qorder += 1
        if self.policy == "fcfs":
            self.waiting.append(s)
        else:
            heapq.heappush(self._wheap, (s.priority, s.arrival, s.qorder, s))
        return True

    def _requeue(self, s: Seq) -> None:
        s.state = WAITING
        if self.policy == "fcfs":
            self.waiting.appendleft(s)
        else:
            heapq.heappush(self._wheap, (s.priority, s.arrival, s.qorder, s))

    def _head(self) -> Seq | None:
        if self.policy == "fcfs":
            return self.waiting[0] if self.waiting else None
        return self._wheap[0][3] if self._wheap else None

    def _pop_head(self) -> None:
        if self.policy == "fcfs":
            self.waiting.popleft()
        else:
            heapq.heappop(self._wheap)

    # -- events ----------------------------------------------------------------------
    def _push_events(self, s: Seq) -> None:
        """Put a request that starts decoding on the block wheel and its finish on the heap."""
        bs = self.block_size
        it_fin = s.sync + (s.max_out - s.o0) - 1
        it_need = s.sync + len(s.blocks) * bs - s.c0
        if it_need <= it_fin:
            s.need_it = it_need
            s.wslot = it_need % bs
            self._wheel[s.wslot][s] = None
        heapq.heappush(self._fin, (it_fin, s.rorder, s.ver, s))

    def _unwheel(self, s: Seq) -> None:
        if s.wslot >= 0:
            del self._wheel[s.wslot][s]
            s.wslot = -1

    def _grow(self, s: Seq) -> None:
        """One more KV block for a decoding request at its block boundary (room is known)."""
        if s.hashes is not None and len(s.hashes) > s.n_cached:
            self._cache_full_blocks(s, len(s.blocks) * self.block_size)  # blocks filled by decoding
        s.blocks.extend(self.pool.allocate(1))
        s.need_it += self.block_size

    # -- preemption --------------------------------------------------------------------
    def _victim(self) -> Seq:
        if self.policy == "fcfs":
            return next(reversed(self.running))
        return max(self.running, key=lambda r: (r.priority, r.arrival))

    def _close_segment(self, s: Seq, end_it: int) -> None:
        """Record tokens emitted at iterations [seg_start, end_it)."""
        n = end_it - s.seg_start
        if n > 0:
            s.segs.append(s.seg_start)
            s.segs.append(n)
            s.last_it = end_it - 1
        s.seg_start = -1

    def _preempt(self, s: Seq, preempted: list[Seq] | None) -> None:
        """Preempt by recompute: free every block, keep outputs, back to the queue front."""
        it = self.it
        if s.decoding:
            ctx = s.context_at(it)
            s.out = s.out_at(it)
            s.computed = ctx
            self._close_segment(s, it)
            self._unwheel(s)
            self.B -= 1
            self.S -= ctx
            self._budget += 1
            s.decoding = False
        else:
            del self.prefilling[s]
            n = self._chunks.pop(s, None)
            if n is not None:
                self._budget += n
        del self.running[s]
        self.pool.release(s.blocks)
        s.blocks = []
        s.n_cached = 0
        s.computed = 0
        s.ver += 1
        s.preemptions += 1
        self.num_preemptions += 1
        self._requeue(s)
        if preempted is not None:
            preempted.append(s)

    def _make_room(self, s: Seq, need: int, preempted: list[Seq]) -> bool:
        """Free blocks until ``need`` are free, preempting; False if ``s`` itself was preempted."""
        pool = self.pool
        while pool.num_free() < need:
            victim = self._victim()
            self._preempt(victim, preempted)
            if victim is s:
                return False
        return True

    def _cache_full_blocks(self, s: Seq, tokens: int) -> None:
        """Register the blocks that are full once ``tokens`` are computed (vLLM caches at allocation).

        ``s.hashes`` may extend past the prompt (the server knows its output text), so
        blocks filled by decoding are cached too, and a next turn that repeats this
        answer hits them, as with vLLM.
        """
        h = s.hashes
        if not h:
            return
        upto = min(tokens // self.block_size, len(h))
        if upto > s.n_cached:
            self.pool.cache_blocks(s.blocks, h, s.n_cached, upto)
            s.n_cached = upto

    # -- one iteration ---------------------------------------------------------------------
    def step(self, *, collect: bool = False) -> StepOutput | float | None:
        """Schedule and run one iteration; its time in seconds, or None when idle.

        With ``collect`` it returns a ``StepOutput`` listing the requests that emitted
        a token (O(batch); the server needs it, the simulator does not).
        """
        if not self.running and not self.num_waiting:
            return None
        it = self.it
        pool = self.pool
        bs = self.block_size
        preempted: list[Seq] = []
        self._budget = self.max_tokens - self.B
        self._chunks = chunks = {}
        fin = self._fin

        # 1a. decodes: only those crossing a block boundary need work, in running order.
        slot = self._wheel[it % bs]
        if slot:
            for s in list(slot):
                if s.wslot < 0 or s.need_it > it:  # preempted meanwhile / not due yet
                    continue
                if self._make_room(s, 1, preempted):
                    self._grow(s)

        # 1b. partially prefilled running requests (they sit at the running tail).
        if self.prefilling:
            for s in list(self.prefilling):
                if self._budget <= 0:
                    break
                if s.state != RUNNING:
                    continue
                n = min(s.prompt_len + s.out - s.computed, self._budget)
                need = -(-(s.computed + n) // bs) - len(s.blocks)
                if need > 0:
                    if not self._make_room(s, need, preempted):
                        break
                    s.blocks.extend(pool.allocate(need))
                self._cache_full_blocks(s, s.computed + n)
                chunks[s] = n
                self._budget -= n

        # 2. waiting requests, only when nothing was preempted in this step.
        admitted: list[Seq] = []
        if not preempted:
            running = self.running
            while self._budget > 0 and len(running) < self.max_num_seqs:
                s = self._head()
                if s is None:
                    break
                num_tokens = s.prompt_len + s.out
                hit: list[int] = []
                if s.hashes and pool.enable_caching:
                    if s.lk_ver == pool.version:
                        hit = s.lk_hit
                    else:
                        limit = (num_tokens - 1) // bs
                        hit = pool.lookup(s.hashes[:limit] if limit < len(s.hashes) else s.hashes)
                        s.lk_ver = pool.version
                        s.lk_hit = hit
                hit_tokens = len(hit) * bs
                n = min(num_tokens - hit_tokens, self._budget)
                need = -(-(hit_tokens + n) // bs) - len(hit)
                # vLLM 0.32's scheduler_reserve_full_isl (on by default): admit only when the
                # whole sequence so far (prompt, plus the output of a resumed request) fits, not
                # just its first chunk, so chunked prefill cannot over-admit and then thrash.
                fits = -(-num_tokens // bs) - len(hit) if self.reserve_full_isl else need
                if fits + (pool.evictable_among(hit) if hit else 0) > pool.num_free():
                    break
                self._pop_head()
                if s.preemptions == 0:
                    # what vLLM's metrics count: a request's prompt, and its prefix lookup, when first
                    # scheduled; a resumed request's lookup goes to separate "preempted" stats
                    self.prompt_tokens_reported += s.prompt_len
                    if pool.enable_caching:
                        self.prefix_queries += num_tokens
                        self.prefix_hits += hit_tokens
                if hit:
                    pool.touch(hit)
                s.lk_ver = -1
                s.blocks = hit + pool.allocate(need)
                s.n_cached = len(hit)
                s.computed = hit_tokens
                if s.cached_tokens < 0:
                    s.cached_tokens = hit_tokens
                self._cache_full_blocks(s, hit_tokens + n)
                s.state = RUNNING
                if s.sched_it < 0:
                    s.sched_it = it
                    admitted.append(s)
                s.rorder = self._rorder
                self._rorder += 1
                running[s] = None
                self.prefilling[s] = None
                chunks[s] = n
                self._budget -= n

        # 3. the step's time.
        B, S = self.B, self.S
        if chunks:
            if self._sums is not None:
                p_tok = 0
                p_pairs = 0.0
                p_kv = 0
                for s, n in chunks.items():
                    c = s.computed
                    p_tok += n
                    p_pairs += n * c + n * (n + 1) / 2
                    p_kv += c + n
                dt = self._sums(
                    prefill_tokens=p_tok,
                    prefill_seqs=len(chunks),
                    prefill_pairs=p_pairs,
                    prefill_kv_tokens=p_kv,
                    decode_seqs=B,
                    decode_context_sum=S,
                )
            else:
                dt = self.cost.step_time(
                    [(n, s.computed) for s, n in chunks.items()], self._decode_contexts()
                )
        elif B:
            if self._sums is not None:
                dt = self._sums(decode_seqs=B, decode_context_sum=S)
            else:
                dt = self.cost.step_time((), self._decode_contexts())
        else:
            # Nothing could be scheduled (only possible when every request was preempted
            # away in this step); the next step retries with the freed blocks.
            dt = 0.0
        if dt and self.jitter is not None:
            dt = self.jitter(dt)
        batch_tokens = B + sum(chunks.values())
        self.last_batch_tokens = batch_tokens
        self.last_decodes = B
        self.last_chunks = chunks
        if batch_tokens > self.max_batch_tokens_seen:
            self.max_batch_tokens_seen = batch_tokens
        if len(self.running) > self.max_running_seen:
            self.max_running_seen = len(self.running)

        emitted: list[Seq] = []
        if collect:
            emitted = [s for s in self.running if s.decoding]
        finished: list[Seq] = []

        # 4. outputs: prefills that completed emit their first (or next) token.
        new_dec: list[Seq] = []
        for s, n in chunks.items():
            s.computed += n
            self.prompt_tokens += n
            if s.computed >= s.prompt_len + s.out:
                s.out += 1
                self.generation_tokens += 1
                if s.preemptions != s.preemptions_told:
                    self.preemptions_reported += s.preemptions - s.preemptions_told
                    s.preemptions_told = s.preemptions
                if s.first_it < 0:
                    s.first_it = it
                s.seg_start = it
                del self.prefilling[s]
                if collect:
                    emitted.append(s)
                if s.out >= s.max_out:
                    self._close_segment(s, it + 1)
                    self._finish(s)
                    finished.append(s)
                else:
                    new_dec.append(s)
        self.generation_tokens += B
        if fin and fin[0][0] <= it:
            self._finish_decodes(it, finished)
        self.S += self.B
        nxt_it = it + 1
        for s in new_dec:
            s.decoding = True
            s.c0 = s.computed
            s.o0 = s.out
            s.sync = nxt_it
            s.ver += 1
            self.B += 1
            self.S += s.c0
            self._push_events(s)
        self.it = nxt_it
        if collect:
            return StepOutput(dt, emitted, finished, preempted, admitted)
        return dt

    def _finish_decodes(self, it: int, finished: list[Seq] | None) -> None:
        """Finish the decodes whose last token is produced in iteration ``it`` (heap order)."""
        fin = self._fin
        while fin and fin[0][0] <= it:
            _, _, ver, s = heapq.heappop(fin)
            if ver != s.ver or s.state != RUNNING:
                continue
            self._close_segment(s, it + 1)
            self._unwheel(s)
            ctx = s.context_at(it)
            self.B -= 1
            self.S -= ctx
            s.out = s.max_out
            s.computed = ctx + 1
            s.decoding = False
            self._finish(s)
            if finished is not None:
                finished.append(s)

    def _decode_contexts(self) -> list[int]:
        it = self.it
        return [s.context_at(it) for s in self.running if s.decoding]

    def _finish(self, s: Seq) -> None:
        del self.running[s]
        self.pool.release(s.blocks)
        s.blocks = []
        s.state = DONE
        s.ver += 1
        self.num_finished += 1

    def abort(self, s: Seq) -> None:
        """Drop a request wherever it is (client went away); its blocks are freed."""
        if s.state == WAITING:
            if self.policy == "fcfs":
                with contextlib.suppress(ValueError):
                    self.waiting.remove(s)
            else:
                self._wheap = [e for e in self._wheap if e[3] is not s]
                heapq.heapify(self._wheap)
        elif s.state == RUNNING:
            if s.decoding:
                ctx = s.context_at(self.it)
                s.out = s.out_at(self.it)
                self._close_segment(s, self.it)
                self._unwheel(s)
                self.B -= 1
                self.S -= ctx
                s.decoding = False
            else:
                self.prefilling.pop(s, None)
            del self.running[s]
            self.pool.release(s.blocks)
            s.blocks = []
        else:
            return
        s.ver += 1
        s.state = ABORTED

    # -- introspection (tests, metrics) ------------------------------------------------------
    def kv_usage(self) -> float:
        return self.pool.usage()

    def blocks_in_use(self) -> int:
        return sum(len(s.blocks) for s in self.running)

    def check_invariants(self) -> None:
        """Assert the engine's bookkeeping is consistent (tests call this every step)."""
        from burstbench.backends.reference.invariants import check_engine

        check_engine(self)


StepTime = Callable[[Sequence[tuple[int, int]], Sequence[int]], float]
"""The cost interface the engine needs (``CostModel.step_time``)."""
