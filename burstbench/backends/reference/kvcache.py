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
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.ref_cnt[0] = 1  # the null block is never free
        self.evictions = 0

    # -- queries ---------------------------------------------------------------------
    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        """Fraction of usable blocks held by requests (vLLM's kv_cache_usage_perc / 1)."""
        return 1.0 - len(self.free) / self.num_usable

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
        return sum(1 for b in blocks if ref[b] == 0)

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
        if n > len(self.free):
            raise RuntimeError(f"allocate({n}) with only {len(self.free)} free blocks")
        out: list[int] = []
        free = self.free
        ref = self.ref_cnt
        bh = self.block_hash
        for _ in range(n):
            b, _none = free.popitem(last=False)
            h = bh[b]
            if h is not None:
                bh[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                self.evictions += 1
            ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a request's references, tail first, so its last blocks are evicted first."""
        ref = self.ref_cnt
        free = self.free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def cache_block(self, block: int, h: int) -> None:
        """Register a full block under its chained hash (first writer wins, as in vLLM)."""
        if not self.enable_caching or self.block_hash[block] is not None:
            return
        if h in self.cached:
            return
        self.block_hash[block] = h
        self.cached[h] = block


def chain_hashes(block_keys: Sequence[int], *, seed: int = 0x5EED) -> list[int]:
    """Chained block hashes: block i's hash covers block i's key and every block before it.

    Python's hash of an int tuple is deterministic across processes (no hash
    randomisation for ints), which keeps simulations reproducible.
    """
    out: list[int] = []
    parent = seed
    for k in block_keys:
        parent = hash((parent, k))
        out.append(parent)
    return out


def engine_block_keys(
    trace_hashes: Sequence[int], trace_block_size: int, prompt_tokens: int, block_size: int
) -> list[int]:
    """Engine-block keys derived from a trace's prefix hashes (e.g. Mooncake's 512-token blocks).

    Each trace block covers ``ceil(trace_block_size / block_size)`` engine blocks,
    keyed ``(trace_hash, j)``; only engine blocks that are full within the prompt
    are returned, because only full blocks are cacheable.
    """
    per = -(-trace_block_size // block_size)
    full = prompt_tokens // block_size
    keys: list[int] = []
    for th in trace_hashes:
        for j in range(per):
            if len(keys) >= full:
                return keys
            keys.append(hash((int(th), j)))
    return keys


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
