"""FIFO: evict the keyed block that was cached earliest; hits change nothing.

Order is the time a block got its key (`on_insert`), not when it was released, so a hot system
prompt cached at the start is the first to go once it is evictable. Prefix dependence: none is
taken into account. A chain is cached head first, so FIFO evicts a parent before its children,
which stay resident but unreachable until they age out too; that waste is part of what FIFO is
measured for here. Keyless blocks go first (see `_keyless`).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class FIFOConfig(EvictionConfig):
    name: str = "fifo"


@register_eviction("fifo", FIFOConfig)
class FIFOPolicy(KeylessFirstPolicy):
    uses_tree = False
    uses_depth = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._seq = itertools.count()
        self._inserted: dict[int, int] = {}  # block_id -> insertion order, while it has a key
        self._members: dict[int, Block] = {}
        self._heap: list[tuple[int, int]] = []  # (insertion order, block_id); lazy deletion

    def on_insert(self, block: Block) -> None:
        self._inserted[block.block_id] = next(self._seq)

    def _kadd(self, block: Block) -> None:
        self._members[block.block_id] = block
        heapq.heappush(self._heap, (self._inserted[block.block_id], block.block_id))
        if len(self._heap) > 2 * len(self._members) + 1024:
            # Each hit-and-release pushes a duplicate; rebuild so the heap stays O(members).
            self._heap = sorted({(self._inserted[b], b) for b in self._members})

    def _kremove(self, block: Block, evicted: bool) -> None:
        del self._members[block.block_id]
        if evicted:  # its key goes, and its insertion order with it
            del self._inserted[block.block_id]

    def _kvictim(self) -> Block:
        heap = self._heap
        while True:
            seq, bid = heap[0]
            if bid in self._members and self._inserted[bid] == seq:
                return self._members[bid]
            heapq.heappop(heap)

    def _klen(self) -> int:
        return len(self._members)

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._members

    def verify(self) -> None:
        super().verify()
        for bid, b in self._members.items():
            assert b.key is not None and b.ref_cnt == 0 and bid in self._inserted, f"FIFO member {b!r}"
