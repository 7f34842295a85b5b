"""GreedyDual-Size-Frequency with a prefix-aware size.

GDSF keeps objects by H = L + frequency * cost / size, L being the H of the last victim (aging).
Here the object is a block, its cost the time to recompute it (`PolicyContext.recompute_cost`),
and its size the number of blocks that must stay resident for a hit on it to count: the block
and its whole prefix, depth + 1. So H = L + freq * cost(depth) / (depth + 1), the recompute time
a hit saves per block of cache it needs. Unlike `cost_aware` (size 1, which favours deep blocks
because attention makes them dearer), this favours shallow shared prefixes unless a deep block
is hit often. Frequency is 1 when cached plus 1 per hit. Prefix dependence: leaves first (see
`PriorityEvictionConfig.leaves_only`), so a parent never goes under its cached child.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction._priority import PriorityEvictionConfig, PriorityEvictionPolicy
from policies.eviction.cost_aware import CostAwarePolicy
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class GDSFConfig(PriorityEvictionConfig):
    name: str = "gdsf"


@register_eviction("gdsf", GDSFConfig)
class GDSFPolicy(CostAwarePolicy):
    def on_release(self, block: Block) -> None:
        if block.key is not None:
            bid = block.block_id
            self._h[bid] = self.age + self._freq[bid] * self._cost(block.depth) / (block.depth + 1)
        PriorityEvictionPolicy.on_release(self, block)
