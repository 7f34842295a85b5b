"""LRU among leaves, as SGLang's radix cache evicts: only a block with no cached child is a
candidate, and among candidates the least recently released goes first (blocks released
together: the chain's tail first). Prefix dependence is the rule itself: a prefix is eaten from
its tail, so nothing resident is ever unreachable. When every evictable block has a cached child
(a request holds a twin of a chain's parent), the lowest key among all goes, as in `_priority`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from policies.eviction._priority import PriorityEvictionPolicy
from policies.eviction.base import EvictionConfig
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class LeafLRUConfig(EvictionConfig):
    name: str = "leaf_lru"
    leaves_only: ClassVar[bool] = True  # the policy's definition, not an option


@register_eviction("leaf_lru", LeafLRUConfig)
class LeafLRUPolicy(PriorityEvictionPolicy):
    def priority(self, block: Block) -> tuple:
        return ()  # release order alone (the base's tie-break): LRU
