"""Belady's MIN adapted to prefix caching: evict the evictable block whose next use is farthest
in the future. An offline policy: it reads the workload's future from `PolicyContext.future`
(`apcsim.core.future.FutureOracle`), so it is a reference point, not something to deploy.

Next use is measured in request arrival rank: the earliest request not yet admitted whose
prompt can hit the block's key (never again: infinity). It is the bound *for the given arrival
order and scheduler*: the scheduling policy, preemptions and timing are those of the run, and
belady only chooses victims. With prefix caching MIN is not provably optimal (blocks are not
independent: a hit needs the whole prefix, and batching changes which requests overlap), so
policies can in principle beat it by a little; docs/policies.md reports any that do.

Prefix dependence: a request that can hit a child can hit its parent, so next_use(parent) <=
next_use(child) always, and ties go to the deeper block; so a parent is never evicted while a
child of it with an equal or later next use is evictable, and the cache is eaten from chain
tails as under leaves-first policies, without needing the tree. Remaining ties (same next use,
same depth) go to the least recently released. Keyless blocks go first.

A block's next use only moves later, when a request that could hit it is admitted; the oracle
reports those keys (`subscribe`) and the policy re-files the evictable blocks holding them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.registry import register_eviction
from policies.types import Block


@dataclass
class BeladyConfig(EvictionConfig):
    name: str = "belady"


@register_eviction("belady", BeladyConfig)
class BeladyPolicy(EvictionPolicy):
    uses_tree = False
    needs_future = True

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if ctx.future is None:
            raise ValueError("belady needs the workload's future (PolicyContext.future)")
        self.future = ctx.future
        self.future.subscribe(self._uses_spent)
        self._members: dict[int, Block] = {}
        self._by_key: dict[int, set[int]] = {}  # key -> evictable block ids holding it
        self._released_at: dict[int, int] = {}
        self._order = itertools.count()
        self._stamps = itertools.count()
        self._stamp: dict[int, int] = {}  # block_id -> stamp of its live heap entry
        self._heap: list[tuple] = []  # min-heap of (sort key, release order, block_id, stamp)

    def _sort_key(self, block: Block) -> tuple:
        if block.key is None:
            return (0,)
        nu = self.future.next_use(block.key)
        return (1, -nu, -block.depth)  # farthest next use first, then deepest

    def _push(self, block: Block) -> None:
        bid = block.block_id
        s = next(self._stamps)
        self._stamp[bid] = s
        heapq.heappush(self._heap, (self._sort_key(block), self._released_at[bid], bid, s))
        if len(self._heap) > 2 * len(self._members) + 1024:
            self._heap = [e for e in self._heap if self._stamp.get(e[2]) == e[3]]
            heapq.heapify(self._heap)

    def _uses_spent(self, keys: list[int]) -> None:
        by_key, members = self._by_key, self._members
        for k in keys:
            for bid in by_key.get(k, ()):
                self._push(members[bid])

    def on_release(self, block: Block) -> None:
        bid = block.block_id
        self._members[bid] = block
        self._released_at[bid] = next(self._order)
        if block.key is not None:
            self._by_key.setdefault(block.key, set()).add(bid)
        self._push(block)

    def _leave(self, block: Block) -> None:
        bid = block.block_id
        del self._members[bid], self._released_at[bid], self._stamp[bid]
        if block.key is not None:
            same = self._by_key[block.key]
            same.discard(bid)
            if not same:
                del self._by_key[block.key]

    def on_acquire(self, block: Block) -> None:
        self._leave(block)

    def on_evict(self, block: Block) -> None:
        self._leave(block)

    def victim(self) -> Block:
        heap = self._heap
        while heap:
            _, _, bid, s = heap[0]
            if self._stamp.get(bid) == s:
                return self._members[bid]
            heapq.heappop(heap)
        raise LookupError("victim() on an empty evictable set")

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, block: Block) -> bool:
        return block.block_id in self._members

    def verify(self) -> None:
        assert set(self._stamp) == set(self._members), "heap entries and members disagree"
        for bid, b in self._members.items():
            assert b.ref_cnt == 0, f"evictable {b!r} is in use"
        if self._members:
            v = self.victim()
            best = max(self._members.values(), key=lambda b: (b.key is None, self.future.next_use(b.key) if b.key is not None else math.inf))
            if v.key is not None:
                assert best.key is not None and self.future.next_use(v.key) == self.future.next_use(best.key), "the victim's next use is not the farthest"
