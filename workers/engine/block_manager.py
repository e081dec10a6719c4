"""Paged KV-cache bookkeeping: a pool of fixed-size blocks with reference counts.

Every mutating call has a check that the scheduler asks first (`can_allocate`/`allocate`,
`can_append`/`append`), so a step never half-mutates state.

Prefix caching: a full block is keyed by a chained hash of (the previous block's hash, its
own tokens), so equal prefixes map to equal keys. A new sequence reuses every leading full
block whose key is known (the stored tokens are compared too, so a hash collision can only
cost a miss, never wrong output). Blocks whose reference count drops to zero keep their
contents and key in an LRU free pool: a later request with the same prefix revives them;
allocation takes the least recently freed block and forgets its key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from workers.engine.sequence import Sequence


@dataclass
class _Block:
    ref_count: int = 0
    key: int | None = None  # set once the block is full and its KV is computed
    tokens: tuple[int, ...] = ()


def block_key(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._by_key: dict[int, int] = {}
        self.prefix_hits = 0  # tokens served from the cache, for metrics
        self.prefix_queries = 0  # prompt tokens looked up

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    # -- admission ----------------------------------------------------------------------
    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the leading full blocks of `seq` already in the cache.

        The block holding the last token is never taken from the cache: the step must
        compute at least that token to get the logits for the next one.
        """
        if not self.prefix_caching:
            return []
        hits: list[int] = []
        parent: int | None = None
        size = self.block_size
        for index in range((len(seq) - 1) // size):
            tokens = tuple(seq.tokens_between(index * size, (index + 1) * size))
            key = block_key(parent, tokens)
            block_id = self._by_key.get(key)
            if block_id is None or self._blocks[block_id].tokens != tokens:
                break
            hits.append(block_id)
            parent = key
        return hits

    def _new_blocks_needed(self, seq: Sequence, hits: list[int]) -> int:
        total = seq.blocks_needed(len(seq), self.block_size)
        # A hit on a block nobody holds takes it out of the free pool, like a new block.
        revived = sum(1 for block_id in hits if self._blocks[block_id].ref_count == 0)
        return total - len(hits) + revived

    def can_allocate(self, seq: Sequence) -> bool:
        return self._new_blocks_needed(seq, self._cached_prefix(seq)) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table, f"sequence {seq.seq_id} already holds blocks"
        hits = self._cached_prefix(seq)
        if self._new_blocks_needed(seq, hits) > self.num_free_blocks:
            raise RuntimeError("allocate() without room: call can_allocate() first")
        for block_id in hits:
            self._take(block_id)
        seq.block_table = list(hits)
        for _ in range(seq.blocks_needed(len(seq), self.block_size) - len(hits)):
            seq.block_table.append(self._take_free())
        cached = len(hits) * self.block_size
        seq.num_computed_tokens = cached
        seq.num_cached_tokens = min(cached, seq.num_prompt_tokens)
        self.prefix_hits += seq.num_cached_tokens
        self.prefix_queries += seq.num_prompt_tokens

    # -- growth -------------------------------------------------------------------------
    def blocks_to_append(self, seq: Sequence, num_new_tokens: int) -> int:
        end = seq.num_computed_tokens + num_new_tokens
        return max(0, seq.blocks_needed(end, self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_to_append(seq, num_new_tokens) <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for the next `num_new_tokens` tokens' KV entries."""
        needed = self.blocks_to_append(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError("append() without room: call can_append() first")
        seq.block_table.extend(self._take_free() for _ in range(needed))

    def register_computed(self, seq: Sequence) -> None:
        """Key every block of `seq` that is full and computed, so later prompts can reuse it."""
        if not self.prefix_caching:
            return
        size = self.block_size
        parent: int | None = None
        for index in range(seq.num_computed_tokens // size):
            block = self._blocks[seq.block_table[index]]
            if block.key is None:
                tokens = tuple(seq.tokens_between(index * size, (index + 1) * size))
                block.key, block.tokens = block_key(parent, tokens), tokens
                self._by_key.setdefault(block.key, seq.block_table[index])
            parent = block.key

    # -- release ------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks nobody holds return to the pool."""
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    # -- internals ----------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.key is not None and self._by_key.get(block.key) == block_id:
            del self._by_key[block.key]
        block.key, block.tokens, block.ref_count = None, (), 1
        return block_id
