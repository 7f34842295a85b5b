"""LRU in vLLM V1's exact order.

vLLM keeps one free queue: a request's blocks are appended when freed, in reverse order (its
chain's tail first), and allocation pops from the head. So among blocks released together the
tail is reused before the head, and a hit takes a block out of the queue. An OrderedDict gives
O(1) append, removal and head.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.registry import register_eviction
from policies.types import Block

_block_id = attrgetter("block_id")


@dataclass
class LRUConfig(EvictionConfig):
    name: str = "lru"


@register_eviction("lru", LRUConfig)
class LRUPolicy(EvictionPolicy):
    uses_tree = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._queue: OrderedDict[int, Block] = OrderedDict()  # head = next victim

    def on_release(self, block: Block) -> None:
        self._queue[block.block_id] = block

    def on_release_many(self, blocks: list[Block]) -> None:
        self._queue.update(zip(map(_block_id, blocks), blocks))

    def on_acquire(self, block: Block) -> None:
        del self._queue[block.block_id]

    def victim(self) -> Block:
        return next(iter(self._queue.values()))

    def on_evict(self, block: Block) -> None:
        del self._queue[block.block_id]

    def evict(self, n: int) -> list[Block]:
        queue = self._queue
        return list(map(queue.pop, list(islice(queue, n))))  # the n oldest, oldest first

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, block: Block) -> bool:
        return block.block_id in self._queue

    def verify(self) -> None:
        for bid, blk in self._queue.items():
            assert blk.block_id == bid and blk.ref_cnt == 0, f"LRU queue holds {blk!r}"
