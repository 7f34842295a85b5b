"""Segmented LRU: a probationary and a protected segment, each LRU.

A block cached for the first time is probationary; a hit makes it protected. The protected
segment holds at most `protected_fraction` of the pool; when a hit pushes it over, its least
recently released evictable block is demoted to the probationary segment's newest end. The
victim is the probationary segment's least recently released evictable block, or the protected
one's if the probationary segment has none. Segment sizes count blocks in use too. Prefix
dependence is not used beyond release order: a chain released together goes tail first (as
vLLM's LRU), and the hit head of a shared prefix is protected while private tails stay
probationary, so tails go first. Keyless blocks go first (see `_keyless`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from policies.eviction._keyless import KeylessFirstPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class SLRUConfig(EvictionConfig):
    name: str = "slru"
    protected_fraction: float = 0.8


@register_eviction("slru", SLRUConfig)
class SLRUPolicy(KeylessFirstPolicy):
    uses_tree = False
    uses_depth = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if not 0.0 < cfg.protected_fraction < 1.0:
            raise ValueError(f"slru protected_fraction must be in (0, 1), got {cfg.protected_fraction}")
        self._cap = max(1, int(cfg.protected_fraction * ctx.num_blocks))
        self._protected: set[int] = set()  # keyed blocks in the protected segment, in use or not
        self._prob: OrderedDict[int, Block] = OrderedDict()  # evictable members, LRU first
        self._prot: OrderedDict[int, Block] = OrderedDict()

    def on_hit(self, block: Block) -> None:
        self._protected.add(block.block_id)
        if len(self._protected) > self._cap and self._prot:
            bid, b = self._prot.popitem(last=False)  # demote the protected LRU evictable block
            self._protected.discard(bid)
            self._prob[bid] = b

    def _kadd(self, block: Block) -> None:
        bid = block.block_id
        (self._prot if bid in self._protected else self._prob)[bid] = block

    def _kremove(self, block: Block, evicted: bool) -> None:
        bid = block.block_id
        if self._prob.pop(bid, None) is None:
            del self._prot[bid]
        if evicted:
            self._protected.discard(bid)

    def _kvictim(self) -> Block:
        return next(iter((self._prob or self._prot).values()))

    def _klen(self) -> int:
        return len(self._prob) + len(self._prot)

    def _kcontains(self, block: Block) -> bool:
        return block.block_id in self._prob or block.block_id in self._prot

    def verify(self) -> None:
        super().verify()
        assert set(self._prot) <= self._protected and not (set(self._prob) & self._protected), "segments disagree"
        if self._klen():
            assert self._kvictim() in self
