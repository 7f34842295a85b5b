"""The small types policies decide on. Nothing here imports the simulator or the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class Block:
    """One KV block of the pool.

    `key` is the chained hash of the whole prefix up to and including this block, or None when the
    block holds nothing reusable. `depth` is the block's index in its prefix (0 = first block).
    `parent_key` is the key of the block before it in its prefix. `num_children` counts the cached
    blocks whose parent key is this block's key: a block with none is a leaf of the cached prefix
    forest, which lets a policy evict leaves first.
    """

    __slots__ = ("block_id", "ref_cnt", "key", "depth", "parent_key", "num_children")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.key: int | None = None
        self.depth = -1
        self.parent_key: int | None = None
        self.num_children = 0

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_cnt}, key={self.key}, depth={self.depth})"


@dataclass(frozen=True)
class PolicyContext:
    """What the serving core tells a policy when it builds it.

    `recompute_cost(depth)` is the time in seconds to recompute the block at `depth` (its
    `block_size` tokens attending to `depth * block_size` tokens of prefix), from the cost model.
    """

    block_size: int
    num_blocks: int
    recompute_cost: Callable[[int], float]


class SchedulableRequest(Protocol):
    """The fields of a request a scheduling policy may read."""

    @property
    def priority(self) -> int: ...

    arrival_time: float
    admit_seq: int
