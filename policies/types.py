"""The small types policies decide on. Nothing here imports the simulator or the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol


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


class BlockRun:
    """Blocks that enter the free queue together as one entry, in eviction order: a parked range
    of pending keys (apcsim.core.pending_keys), which nobody can hit while it has no keys.

    The run names its blocks by id (`ids`; `of` is the pool's list of blocks by id), and
    `ids[next:]` are still queued. Until `keyed` the pool keeps no per-block state for them (each
    keeps the ref_cnt 1 of the range that holds it) and hands them out by id, so entering and
    leaving the queue touches no block object in Python. Once keyed, they are ordinary evictable
    blocks where they stand (ref_cnt 0); a hit takes one out (its id joins `removed`) and the
    queue skips it when it gets there. `pos` is the queue's own bookkeeping (where the entry
    stands)."""

    __slots__ = ("ids", "of", "next", "keyed", "removed", "pos")

    def __init__(self, ids: list[int], of: list[Block]) -> None:
        self.ids = ids
        self.of = of
        self.next = 0
        self.keyed = False
        self.removed: set[int] = set()
        self.pos = 0

    def queued(self) -> list[Block]:
        """The blocks still queued (removed ones included), in order (for checks and keying)."""
        return list(map(self.of.__getitem__, self.ids[self.next :]))

    def __repr__(self) -> str:
        return f"BlockRun({len(self.ids) - self.next} of {len(self.ids)} queued, keyed={self.keyed})"


class Clock:
    """The serving core's current time in seconds (simulated or wall clock, the executor's).

    The scheduler sets `now` at the start of every step and when a step's results are applied
    (which is when finished requests release their blocks), so a policy reading it in a hook sees
    the time of the event that called the hook."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


class FutureUses(Protocol):
    """The offline oracle a policy that knows the future (`belady`) consults; built by the core
    from the whole workload (see `apcsim.core.future`).

    `next_use(key)` is the arrival rank of the earliest request not yet admitted whose prompt
    can hit the block with this key (math.inf if none). `subscribe(fn)` registers `fn(keys)`,
    called when a request is admitted for the first time with its prompt's keys: their next
    use has just moved later."""

    def next_use(self, key: int) -> float: ...

    def subscribe(self, fn: Callable[[list[int]], None]) -> None: ...


@dataclass(frozen=True)
class PolicyContext:
    """What the serving core tells a policy when it builds it.

    `recompute_cost(depth)` is the time in seconds to recompute the block at `depth` (its
    `block_size` tokens attending to `depth * block_size` tokens of prefix), from the cost model.
    `clock` is the current time (for policies with durations: `priority_lru`, `pinned_ttl`).
    `future` is set only for policies that declare `needs_future` (`belady`).
    """

    block_size: int
    num_blocks: int
    recompute_cost: Callable[[int], float]
    clock: Clock = field(default_factory=Clock)
    future: Optional[FutureUses] = None


class SchedulableRequest(Protocol):
    """The fields of a request a scheduling policy may read. `block_keys` holds the keys of the
    prompt's leading full blocks, at least as many as the cache probe (`cached_blocks`) found."""

    @property
    def priority(self) -> int: ...

    @property
    def num_tokens(self) -> int: ...

    arrival_time: float
    admit_seq: int
    block_keys: list[int]
