"""The block pool: allocation, LRU eviction of cached free blocks, prefix lookups, derived hashes."""

from __future__ import annotations

import pytest

from burstbench.backends.reference.kvcache import (
    BlockPool,
    chain_hashes,
    engine_block_keys,
    text_block_keys,
)


def test_null_block_reserved_and_usage():
    pool = BlockPool(11)
    assert pool.num_usable == 10 and pool.num_free() == 10
    got = pool.allocate(4)
    assert 0 not in got and len(set(got)) == 4
    assert pool.usage() == pytest.approx(0.4)
    pool.release(got)
    assert pool.num_free() == 10 and pool.usage() == 0.0


def test_over_allocation_is_refused():
    pool = BlockPool(5)
    pool.allocate(4)
    with pytest.raises(RuntimeError):
        pool.allocate(1)


def test_cached_blocks_survive_release_until_evicted_tail_first():
    pool = BlockPool(9)  # 8 usable
    a = pool.allocate(3)
    ha = chain_hashes([11, 12, 13])
    for b, h in zip(a, ha, strict=True):
        pool.cache_block(b, h)
    pool.release(a)
    # still findable after release
    assert pool.lookup(ha) == a
    # 5 never-used blocks are ahead of a's in the LRU queue; a's were freed tail first,
    # so the next evictions take a[2], then a[1], then a[0].
    pool.allocate(5)
    assert pool.lookup(ha) == a
    pool.allocate(1)
    assert pool.lookup(ha) == a[:2]
    pool.allocate(1)
    assert pool.lookup(ha) == a[:1]
    assert pool.evictions == 2


def test_lookup_stops_at_first_miss_and_touch_takes_free_blocks():
    pool = BlockPool(9)
    a = pool.allocate(3)
    h = chain_hashes([1, 2, 3])
    pool.cache_block(a[0], h[0])
    pool.cache_block(a[2], h[2])  # a hole at block 1
    assert pool.lookup(h) == [a[0]]
    pool.release(a)
    free_before = pool.num_free()
    assert pool.evictable_among([a[0]]) == 1
    pool.touch([a[0]])
    assert pool.num_free() == free_before - 1
    assert pool.ref_cnt[a[0]] == 1


def test_lru_prefers_least_recently_freed():
    pool = BlockPool(5)  # 4 usable
    x = pool.allocate(2)
    y = pool.allocate(2)
    hx, hy = chain_hashes([7, 8]), chain_hashes([9, 10])
    for b, h in zip(x + y, hx + hy, strict=True):
        pool.cache_block(b, h)
    pool.release(x)  # x freed first -> evicted first
    pool.release(y)
    pool.allocate(2)
    assert pool.lookup(hx) == [] and pool.lookup(hy) == y


def test_chain_hashes_depend_on_every_previous_block():
    a = chain_hashes([1, 2, 3])
    b = chain_hashes([9, 2, 3])
    c = chain_hashes([1, 2, 4])
    assert a[:2] == c[:2] and a[2] != c[2]
    assert chain_hashes([1, 2, 3], seed=1) != a
    assert len(a) == 3 and all(x != y for x, y in zip(a, b, strict=True))
    assert chain_hashes([1, 2, 3]) == a  # deterministic


def test_engine_block_keys_map_big_trace_blocks():
    # Mooncake: 512-token trace blocks -> 32 engine blocks of 16 each, full blocks only.
    keys = engine_block_keys([100, 200], 512, prompt_tokens=700, block_size=16)
    assert len(keys) == 700 // 16
    assert len(set(keys.tolist())) == len(keys)
    same_first = engine_block_keys([100, 300], 512, prompt_tokens=1024, block_size=16)
    assert same_first[:32].tolist() == keys[:32].tolist() and same_first[32] != keys[32]
    # chained: the shared first trace block gives equal engine hashes, then they diverge
    ha, hb = chain_hashes(keys), chain_hashes(same_first[: len(keys)])
    assert ha[:32] == hb[:32] and all(x != y for x, y in zip(ha[32:], hb[32:], strict=True))


def test_text_block_keys_only_full_blocks():
    words = [f"w{i}" for i in range(40)]
    keys = text_block_keys(words, 16)
    assert len(keys) == 2
    assert text_block_keys(words[:16] + ["other"] * 16, 16)[0] == keys[0]


def test_pool_without_caching_hands_out_distinct_blocks():
    pool = BlockPool(9, enable_caching=False)
    a = pool.allocate(5)
    b = pool.allocate(3)
    assert len(set(a + b)) == 8 and 0 not in a + b and pool.num_free() == 0
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    pool.release(a)
    assert pool.num_free() == 5 and pool.lookup([1, 2]) == []
    assert sorted(pool.allocate(5)) == sorted(a)
