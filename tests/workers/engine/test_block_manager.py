"""Block manager: reference counts, check-then-act, prefix caching. No torch involved."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workers.engine.block_manager as bm_module
from workers.engine.block_manager import BlockManager
from workers.engine.sequence import Sequence


def seq(tokens: list[int], max_tokens: int = 8) -> Sequence:
    return Sequence(list(tokens), max_tokens)


def test_allocate_takes_blocks_for_every_token_and_free_returns_them() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    s = seq(list(range(10)))  # 3 blocks
    assert manager.can_allocate(s)
    manager.allocate(s)
    assert len(s.block_table) == 3 and manager.num_free_blocks == 5
    assert all(manager.ref_count(b) == 1 for b in s.block_table)
    manager.free(s)
    assert manager.num_free_blocks == 8 and s.block_table == []


def test_allocate_without_room_raises_and_changes_nothing() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    s = seq(list(range(9)))  # needs 3
    assert not manager.can_allocate(s)
    with pytest.raises(RuntimeError, match="can_allocate"):
        manager.allocate(s)
    assert manager.num_free_blocks == 2 and s.block_table == []


def test_append_adds_a_block_only_when_the_last_one_is_full() -> None:
    manager = BlockManager(num_blocks=4, block_size=4)
    s = seq([1, 2, 3])
    manager.allocate(s)
    s.num_computed_tokens = 3
    assert manager.blocks_to_append(s, 1) == 0  # position 3 still fits block 0
    s.num_computed_tokens = 4
    assert manager.blocks_to_append(s, 1) == 1
    manager.append(s, 1)
    assert len(s.block_table) == 2


def test_shared_prefix_blocks_are_reused_with_reference_counts() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 108))  # two full blocks
    first = seq([*system, 1, 2, 3])
    manager.allocate(first)
    first.num_computed_tokens = len(first)
    manager.register_computed(first)

    second = seq([*system, 7, 8])
    manager.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.num_computed_tokens == 8 and second.num_cached_tokens == 8
    assert [manager.ref_count(b) for b in second.block_table[:2]] == [2, 2]
    assert second.block_table[2] not in first.block_table
    manager.free(first)
    assert [manager.ref_count(b) for b in second.block_table[:2]] == [1, 1]


def test_the_block_with_the_last_token_is_always_computed() -> None:
    manager = BlockManager(num_blocks=16, block_size=4)
    first = seq(list(range(8)))
    manager.allocate(first)
    first.num_computed_tokens = 8
    manager.register_computed(first)
    again = seq(list(range(8)))  # same 8 tokens: only the first block may come from cache
    manager.allocate(again)
    assert again.num_computed_tokens == 4


def test_freed_prefix_blocks_are_revived_until_evicted() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)
    first = seq([5, 6, 7])
    manager.allocate(first)
    first.num_computed_tokens = 3
    manager.register_computed(first)
    cached_block = first.block_table[0]
    manager.free(first)
    assert manager.num_free_blocks == 4

    revived = seq([5, 6, 9])
    manager.allocate(revived)
    assert revived.block_table[0] == cached_block and revived.num_cached_tokens == 2
    manager.free(revived)

    filler = seq(list(range(20, 27)))  # takes all 4 blocks: the cached one is evicted
    manager.allocate(filler)
    manager.free(filler)
    late = seq([5, 6, 9])
    manager.allocate(late)
    assert late.num_cached_tokens == 0


def test_a_hash_collision_costs_a_miss_not_wrong_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm_module, "block_key", lambda parent, tokens: 42)
    manager = BlockManager(num_blocks=8, block_size=2)
    first = seq([1, 2, 3])
    manager.allocate(first)
    first.num_computed_tokens = 3
    manager.register_computed(first)
    other = seq([8, 9, 3])  # same key, different tokens
    manager.allocate(other)
    assert other.num_cached_tokens == 0
    assert set(other.block_table).isdisjoint(first.block_table)


def test_prefix_caching_off_never_shares() -> None:
    manager = BlockManager(num_blocks=8, block_size=2, prefix_caching=False)
    first = seq([1, 2, 3])
    manager.allocate(first)
    first.num_computed_tokens = 3
    manager.register_computed(first)
    second = seq([1, 2, 3])
    manager.allocate(second)
    assert second.num_cached_tokens == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alloc", "free", "grow"]), st.integers(0, 5), st.integers(1, 9)),
        max_size=40,
    )
)
def test_reference_counts_always_match_the_block_tables(
    ops: list[tuple[str, int, int]],
) -> None:
    manager = BlockManager(num_blocks=12, block_size=3)
    live: list[Sequence] = []
    for op, pick, size in ops:
        if op == "alloc":
            s = seq([pick % 2] * size)  # few distinct prompts: plenty of prefix hits
            if manager.can_allocate(s):
                manager.allocate(s)
                s.num_computed_tokens = len(s)
                manager.register_computed(s)
                live.append(s)
        elif op == "free" and live:
            manager.free(live.pop(pick % len(live)))
        elif op == "grow" and live:
            s = live[pick % len(live)]
            if manager.can_append(s, 1):
                manager.append(s, 1)
                s.output_token_ids.append(size)
                s.num_computed_tokens += 1
                manager.register_computed(s)
        held: dict[int, int] = {}
        for s in live:
            for block in s.block_table:
                held[block] = held.get(block, 0) + 1
        assert all(manager.ref_count(b) == count for b, count in held.items())
        assert manager.num_free_blocks == manager.num_blocks - len(held)
