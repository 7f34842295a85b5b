"""LFU with dynamic aging (LFU-DA).

A block's frequency is 1 when it is cached plus 1 per hit. Its key when it becomes evictable is
frequency + L, where L is the key of the last block evicted; so a block that was hot long ago
ages out once newer blocks' keys climb past it, instead of staying forever as under plain LFU.
Ties go to the block released earliest, and among blocks released together to the chain's tail
first (the pool releases tail first), which is LRU's order. Leaves are evicted first (see
`PriorityEvictionConfig.leaves_only`).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction._priority import PriorityEvictionConfig, PriorityEvictionPolicy
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class LFUConfig(PriorityEvictionConfig):
    name: str = "lfu"


@register_eviction("lfu", LFUConfig)
class LFUPolicy(PriorityEvictionPolicy):
    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._freq: dict[int, int] = {}
        self._key_at_release: dict[int, float] = {}
        self.age = 0.0  # L: the key of the last evicted block

    def on_insert(self, block: Block) -> None:
        self._freq[block.block_id] = 1

    def on_hit(self, block: Block) -> None:
        self._freq[block.block_id] += 1

    def on_release(self, block: Block) -> None:
        if block.key is not None:
            self._key_at_release[block.block_id] = self._freq[block.block_id] + self.age
        super().on_release(block)

    def priority(self, block: Block) -> tuple:
        return (self._key_at_release[block.block_id],)

    def on_evict(self, block: Block) -> None:
        if block.block_id in self._key_at_release:  # a cached block (keyless ones do not age L)
            self.age = self._key_at_release.pop(block.block_id)
        self._freq.pop(block.block_id, None)
        super().on_evict(block)

    def verify(self) -> None:
        super().verify()
        for bid in self._members:
            blk = self._members[bid]
            assert blk.key is None or bid in self._key_at_release, f"evictable cached block {bid} has no key"
