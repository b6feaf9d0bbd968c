"""Paged KV cache with prefix caching, after vLLM V1's block pool.

Why it looks like this: the scheduler's behaviour under memory pressure (when it
preempts, how many prefix hits a multi-turn trace gets) depends on exactly how
blocks are handed out and evicted, so this follows vLLM V1's ``BlockPool`` /
``KVCacheManager`` rules rather than a simpler allocator:

- the cache is ``num_blocks`` fixed-size blocks; block 0 is reserved (vLLM's
  "null block"), so ``num_blocks - 1`` are usable;
- free blocks sit in one LRU queue; a freed block keeps its hash and stays
  findable by prefix lookups until it is handed out again (evicted) from the
  queue's front;
- a request frees its blocks tail first, so its last blocks (the least likely
  to be shared) are evicted before its first ones;
- a full block gets a chained hash (parent hash, block content); a lookup walks
  a prompt's chain and stops at the first miss;
- allocation counts cached-but-free blocks that a request is about to reuse as
  used, so a hit never lets the cache overcommit.

Block ids are plain ints and per-block state lives in lists, which keeps the
simulator's hot path free of per-block objects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class BlockPool:
    """Fixed pool of KV blocks with an LRU free queue and a hash -> block map."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (one is reserved), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_cnt: list[int] = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        # The LRU free queue: insertion order is eviction order (front = evicted first).
        # Without caching no block is ever shared or looked up, so the queue order cannot
        # matter: a plain stack of ids (C-speed slicing) replaces the LRU queue.
        self._stack: list[int] | None = None if enable_caching else list(range(num_blocks - 1, 0, -1))
        self.free: OrderedDict[int, None] = (
            OrderedDict((b, None) for b in range(1, num_blocks)) if enable_caching else OrderedDict()
        )
        self.ref_cnt[0] = 1  # the null block is never free
        self.evictions = 0
        self.version = 0  # bumps whenever the set of cached hashes changes (lookup memo)

    # -- queries ---------------------------------------------------------------------
    @property
    def free_stack(self) -> list[int] | None:
        """The free blocks as a stack (next handed out = last) when caching is off, else None.

        Hot loops may ``pop()`` from it directly: that is exactly ``allocate(1)``."""
        return self._stack

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    def num_free(self) -> int:
        return len(self._stack) if self._stack is not None else len(self.free)

    def usage(self) -> float:
        """Fraction of usable blocks held by requests (vLLM's kv_cache_usage_perc / 1)."""
        return 1.0 - self.num_free() / self.num_usable

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Block ids of the longest cached prefix of ``hashes`` (does not take them)."""
        if not self.enable_caching:
            return []
        hit: list[int] = []
        cached = self.cached
        for h in hashes:
            b = cached.get(h)
            if b is None:
                break
            hit.append(b)
        return hit

    def evictable_among(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` are free (cached but unreferenced): taking them uses free space."""
        ref = self.ref_cnt
        return [ref[b] for b in blocks].count(0)

    # -- mutations -------------------------------------------------------------------
    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks a request reuses (removing free ones from the queue)."""
        ref = self.ref_cnt
        free = self.free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """Hand out ``n`` blocks from the queue's front, evicting their cached hashes.

        The caller checks ``num_free() >= n`` first; asking for more is a bug.
        """
        stack = self._stack
        if stack is not None:
            if n > len(stack):
                raise RuntimeError(f"allocate({n}) with only {len(stack)} free blocks")
            if n == 0:
                return []
            out = stack[-n:]
            del stack[-n:]
            return out
        free = self.free
        if n > len(free):
            raise RuntimeError(f"allocate({n}) with only {len(free)} free blocks")
        pop = free.popitem
        out = [pop(last=False)[0] for _ in range(n)]
        ref = self.ref_cnt
        bh = self.block_hash
        cached = self.cached
        evicted = 0
        for b in out:
            ref[b] = 1
            h = bh[b]
            if h is not None:
                bh[b] = None
                del cached[h]  # bh[b] is only set together with cached[h] = b
                evicted += 1
        if evicted:
            self.evictions += evicted
            self.version += 1
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a request's references, tail first, so its last blocks are evicted first."""
        if self._stack is not None:
            self._stack.extend(blocks)
            return
        ref = self.ref_cnt
        zero = []
        for b in reversed(blocks):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                zero.append(b)
        self.free.update(dict.fromkeys(zero))

    def cache_blocks(self, blocks: Sequence[int], hashes: Sequence[int], start: int, end: int) -> None:
        """``cache_block`` for ``blocks[start:end]`` with ``hashes[start:end]`` (one call, hot path)."""
        if not self.enable_caching:
            return
        bh = self.block_hash
        cached = self.cached
        for i in range(start, end):
            b = blocks[i]
            h = hashes[i]
            if bh[b] is None and h not in cached:
                bh[b] = h
                cached[h] = b
        self.version += 1

    def cache_block(self, block: int, h: int) -> None:
        """Register a full block under its chained hash (first writer wins, as in vLLM)."""
        if not self.enable_caching or self.block_hash[block] is not None:
            return
        if h in self.cached:
            return
        self.block_hash[block] = h
        self.cached[h] = block
        self.version += 1


_MASK64 = (1 << 64) - 1
_P = 0x100000001B3  # FNV-64 prime: odd, so invertible mod 2**64
_PINV = pow(_P, -1, 1 << 64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def chain_hashes(block_keys: Sequence[int] | np.ndarray, *, seed: int = 0x5EED) -> list[int]:
    """Chained block hashes: block i's hash covers block i's key and every block before it.

    ``h_i = P·h_{i-1} + mix(k_i)  (mod 2^64)`` with ``h_{-1} = seed``: a polynomial chain,
    so two prompts share hash i exactly when (up to 64-bit collisions) they share blocks
    0..i. Computed in closed form with numpy (``h_i = P^i·(seed·P + Σ_j mix(k_j)·P^{-j})``)
    because Mooncake-sized prompts have thousands of blocks each; deterministic across
    processes (no use of Python's randomised ``hash``).
    """
    n = len(block_keys)
    if n == 0:
        return []
    if isinstance(block_keys, np.ndarray):
        raw = block_keys.astype(np.uint64)
    else:
        raw = np.array([int(x) & _MASK64 for x in block_keys], dtype=np.uint64)
    k = _mix(raw)
    with np.errstate(over="ignore"):
        pinv_pow = _powers(_PINV, n)
        p_pow = _powers(_P, n)
        acc = np.cumsum(k * pinv_pow, dtype=np.uint64)
        h = p_pow * (np.uint64((seed * _P) & _MASK64) + acc)
    return [int(x) for x in h.tolist()]


_POW_CACHE: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base**i mod 2**64 for i < n (cached, grown by doubling)."""
    cur = _POW_CACHE.get(base)
    if cur is None or len(cur) < n:
        size = max(n, 2 * (len(cur) if cur is not None else 1024))
        out = np.empty(size, dtype=np.uint64)
        v = 1
        for i in range(size):
            out[i] = v
            v = (v * base) & _MASK64
        _POW_CACHE[base] = cur = out
    return cur[:n]


def engine_block_keys(
    trace_hashes: Sequence[int], trace_block_size: int, prompt_tokens: int, block_size: int
) -> np.ndarray:
    """Engine-block keys derived from a trace's prefix hashes (e.g. Mooncake's 512-token blocks).

    Each trace block covers ``ceil(trace_block_size / block_size)`` engine blocks,
    keyed from ``(trace_hash, j)``; only engine blocks that are full within the prompt
    are returned, because only full blocks are cacheable.
    """
    per = -(-trace_block_size // block_size)
    full = min(prompt_tokens // block_size, per * len(trace_hashes))
    th = np.asarray(trace_hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        keys = _mix(th)[:, None] * np.uint64(per + 1) + np.arange(per, dtype=np.uint64)[None, :]
    return keys.reshape(-1)[:full]


def text_block_keys(words: Sequence[str], block_size: int) -> list[int]:
    """Engine-block keys from prompt text: each full block of ``block_size`` words.

    Uses blake2b (not ``hash``) because string hashing is randomised per process.
    """
    import hashlib

    keys: list[int] = []
    for i in range(0, len(words) - block_size + 1, block_size):
        digest = hashlib.blake2b(" ".join(words[i : i + block_size]).encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little"))
    return keys
