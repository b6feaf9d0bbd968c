"""The reference engine's bookkeeping, checked from first principles (tests, debugging).

Apart from ``engine`` because it is test support, not scheduling: it recomputes what
the engine keeps incrementally (decode count and context sum, blocks held, the block
wheel) and asserts they agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from burstbench.backends.reference.engine import EngineCore


def check_engine(e: EngineCore) -> None:
    """Assert ``e``'s running sums, block ownership and block wheel are consistent."""
    it = e.it
    dec = [s for s in e.running if s.decoding]
    assert len(dec) == e.B, (len(dec), e.B)
    assert sum(s.context_at(it) for s in dec) == e.S
    assert len(e.running) <= e.max_num_seqs
    held = {b for s in e.running for b in s.blocks}
    assert 0 not in held
    assert len(held) + e.pool.num_free() == e.pool.num_usable, (len(held), e.pool.num_free())
    for s in e.running:
        need = -(-s.context_at(it) // e.block_size)
        assert len(s.blocks) >= need, (s.rid, len(s.blocks), need)
        assert s.out_at(it) < s.max_out
    # the block wheel: every decode that still needs a block sits in the slot of its
    # next need, slots hold only decodes, in running order (step() relies on it)
    for k, slot in enumerate(e._wheel):
        order = [s.rorder for s in slot]
        assert order == sorted(order), (k, order)
        for s in slot:
            assert s.decoding and s.wslot == k == s.need_it % e.block_size and s.need_it >= it
    for s in dec:
        ends = s.sync + s.max_out - s.o0 - 1
        assert s.wslot >= 0 or len(s.blocks) * e.block_size - s.c0 + s.sync > ends
