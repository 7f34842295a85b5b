"""A shared base for policies that are a priority key per block (lowest key evicted first).

A heap with lazy deletion: each entry carries a stamp drawn from a counter that never repeats,
and an entry whose stamp is not the block's live one (the block was acquired, evicted or
re-pushed since) is skipped. Ties on the key go to the earliest release (its position in the
release order is fixed when the block enters the evictable set, and kept if it becomes a
leaf later).
"""

from __future__ import annotations

import abc
import heapq
import itertools
from dataclasses import dataclass

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.types import Block, PolicyContext


@dataclass
class PriorityEvictionConfig(EvictionConfig):
    #: Only blocks with no cached children are candidates, so a prefix is never cut out of the
    #: middle of a chain while its (then unreachable) tail stays resident, as SGLang's radix
    #: cache evicts leaves only. false: any evictable block by key.
    leaves_only: bool = True


class PriorityEvictionPolicy(EvictionPolicy):
    def __init__(self, cfg: PriorityEvictionConfig, ctx: PolicyContext) -> None:
        super().__init__(cfg, ctx)
        self.leaves_only = cfg.leaves_only
        self._heap: list[tuple] = []
        self._version: dict[int, int] = {}  # block_id -> stamp of its live heap entry
        self._members: dict[int, Block] = {}  # the evictable set
        self._released_at: dict[int, int] = {}  # block_id -> position in the release order
        self._order = itertools.count()  # release order: tie-break after the key
        self._stamps = itertools.count()  # never reset, so a stale entry can never look live

    @abc.abstractmethod
    def priority(self, block: Block) -> tuple:
        """The block's eviction key; smaller is evicted first. Called when it becomes a candidate."""

    def _key(self, block: Block) -> tuple:
        return (0,) if block.key is None else (1, *self.priority(block))  # keyless: free to reuse

    def _push(self, block: Block) -> None:
        bid = block.block_id
        if self.leaves_only and block.num_children > 0:
            self._version.pop(bid, None)
            return
        v = next(self._stamps)
        self._version[bid] = v
        heapq.heappush(self._heap, (self._key(block), self._released_at[bid], bid, v))
        if len(self._heap) > 2 * len(self._version) + 1024:
            # Hits leave dead entries behind; rebuild so the heap stays O(evictable set).
            self._heap = [e for e in self._heap if self._version.get(e[2]) == e[3]]
            heapq.heapify(self._heap)

    def on_release(self, block: Block) -> None:
        self._members[block.block_id] = block
        self._released_at[block.block_id] = next(self._order)
        self._push(block)

    def _leave(self, block: Block) -> None:
        del self._members[block.block_id]
        del self._released_at[block.block_id]
        self._version.pop(block.block_id, None)

    def on_acquire(self, block: Block) -> None:
        self._leave(block)

    def on_evict(self, block: Block) -> None:
        self._leave(block)

    def on_became_leaf(self, block: Block) -> None:
        if block.block_id not in self._version:  # not yet a candidate (leaves_only): now it is
            self._push(block)

    def victim(self) -> Block:
        heap = self._heap
        while heap:
            _, _, bid, v = heap[0]
            if self._version.get(bid) == v:
                b = self._members[bid]
                if not (self.leaves_only and b.num_children > 0):
                    return b
                del self._version[bid]  # gained a child through a twin block: not a leaf now
            heapq.heappop(heap)
        if not self._members:
            raise LookupError("victim() on an empty evictable set")
        # Every evictable block has a cached child in use. That happens only when a request holds
        # a duplicate of a chain's parent (two requests computed the same prefix at once); fall
        # back to the lowest key among all members. Rare, so a scan is fine.
        return min(self._members.values(), key=self._key)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, block: Block) -> bool:
        return block.block_id in self._members

    def verify(self) -> None:
        for bid, blk in self._members.items():
            assert blk.ref_cnt == 0, f"evictable block {bid} has ref_cnt {blk.ref_cnt}"
            if not (self.leaves_only and blk.num_children > 0):
                assert bid in self._version, f"evictable leaf {bid} is not a candidate"
        assert set(self._version) <= set(self._members), "heap entries for blocks outside the set"
        if self._members:
            assert self.victim().block_id in self._members
