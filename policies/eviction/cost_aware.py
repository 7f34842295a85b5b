"""Cost-aware eviction: GreedyDual-Size-Frequency over recompute time.

Losing a block costs the time to recompute it on its next use, and that grows with its depth in
the prompt because its tokens attend to the whole prefix before them. The policy keeps the blocks
whose loss would cost the most: key = L + frequency * recompute_cost(depth), with the cost taken
from the cost model (`PolicyContext.recompute_cost`) and L the key of the last evicted block
(GreedyDual's aging, so blocks that were valuable long ago do not stay forever). Frequency is 1
when cached plus 1 per hit. Leaves first: a parent is never evicted under its cached child,
whose recompute cost is higher yet which would be unreachable without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction._priority import PriorityEvictionConfig, PriorityEvictionPolicy
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class CostAwareConfig(PriorityEvictionConfig):
    name: str = "cost_aware"


@register_eviction("cost_aware", CostAwareConfig)
class CostAwarePolicy(PriorityEvictionPolicy):
    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._freq: dict[int, int] = {}
        self._h: dict[int, float] = {}
        self._cost_by_depth: list[float] = []  # memo of ctx.recompute_cost
        self.age = 0.0

    def _cost(self, depth: int) -> float:
        memo = self._cost_by_depth
        while len(memo) <= depth:
            memo.append(float(self.ctx.recompute_cost(len(memo))))
        return memo[depth]

    def on_insert(self, block: Block) -> None:
        self._freq[block.block_id] = 1

    def on_hit(self, block: Block) -> None:
        self._freq[block.block_id] += 1

    def on_release(self, block: Block) -> None:
        if block.key is not None:
            self._h[block.block_id] = self.age + self._freq[block.block_id] * self._cost(block.depth)
        super().on_release(block)

    def priority(self, block: Block) -> tuple:
        return (self._h[block.block_id],)

    def on_evict(self, block: Block) -> None:
        if block.block_id in self._h:
            self.age = self._h.pop(block.block_id)
        self._freq.pop(block.block_id, None)
        super().on_evict(block)
