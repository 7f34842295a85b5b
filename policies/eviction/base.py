"""The eviction-policy contract.

The evictable set is every block with ref_cnt == 0 that has been handed out at least once
(never-used blocks stay with the pool, which hands them out first). A policy orders that set;
the pool owns the blocks and calls these hooks:

- `on_insert(block)`   the block got a key (its KV is now reusable); it may be in use.
- `on_hit(block)`      a request's lookup matched the block and is taking it.
- `on_release(block)`  ref_cnt dropped to 0: the block enters the evictable set. Blocks released
                       together arrive in eviction order (a chain's tail first, as vLLM frees).
- `on_acquire(block)`  a hit took an evictable block: it leaves the set, keeping its key.
- `victim()`           the block to reuse next; only peeks. Keyless blocks cost nothing to reuse.
- `on_evict(block)`    the victim leaves the set. Its key is still set; the pool drops it next.
- `on_became_leaf(block)` an evictable block's last cached child was just evicted.
- `before_release(request)` the KV cache manager is about to release `request`'s blocks (the
                       `on_release` calls for those that reach ref_cnt 0 follow); a policy that
                       takes per-request attributes (`priority_lru`'s retention priority) reads
                       `request.spec` here. Policies must not import the core: duck-typed.

Two batch forms exist for speed and default to the hooks above: `on_release_many(blocks)` and
`evict(n)` (n victims, each taken out of the set in turn; the pool asks for one at a time when
the policy uses the tree, since each eviction may make a new leaf). A policy that never reads
`Block.num_children` sets `uses_tree = False` and the pool stops maintaining it; one that reads
neither it nor `Block.depth`/`parent_key` also sets `uses_depth = False`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from policies.types import Block, PolicyContext


@dataclass
class EvictionConfig:
    name: str = "?"


class EvictionPolicy(abc.ABC):
    #: False only for the `none` policy: the pool then never caches or looks up blocks.
    enables_caching: bool = True
    #: Whether the policy reads Block.num_children / on_became_leaf (the pool maintains them only then).
    uses_tree: bool = True
    #: Whether the policy reads Block.depth or Block.parent_key (the pool writes them only then,
    #: or when it tracks the tree; otherwise they stay -1 and None).
    uses_depth: bool = True
    #: Whether the policy needs `PolicyContext.future` (the offline oracle; `belady` only).
    needs_future: bool = False
    #: Whether the order is exactly vLLM's free queue (release order; a hit takes its block out;
    #: reuse takes the oldest), on which the core relies to leave keys of freed blocks pending
    #: (apcsim.core.pending_keys). `lru` and `none` only; a subclass that changes a hook must set
    #: it back to False. Where the core parks blocks, such a policy also takes a parked range as
    #: one entry: `on_release_run(run)`, `key_run(run)` and `evict_ids(n)` (see `BlockRun` and
    #: policies/eviction/lru.py); `none` never sees one (it caches nothing, so nothing is parked).
    plain_free_queue: bool = False

    def __init__(self, cfg: EvictionConfig, ctx: PolicyContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    def on_insert(self, block: Block) -> None:
        pass

    def on_hit(self, block: Block) -> None:
        pass

    @abc.abstractmethod
    def on_release(self, block: Block) -> None: ...

    @abc.abstractmethod
    def on_acquire(self, block: Block) -> None: ...

    @abc.abstractmethod
    def victim(self) -> Block: ...

    @abc.abstractmethod
    def on_evict(self, block: Block) -> None: ...

    def on_became_leaf(self, block: Block) -> None:
        pass

    def before_release(self, request) -> None:
        pass

    def stats(self) -> dict:
        """Policy-specific counters for metrics.json (`policy_stats`), e.g. pins broken."""
        return {}

    def on_release_many(self, blocks: list[Block]) -> None:
        """`on_release` for each block, in order."""
        for b in blocks:
            self.on_release(b)

    def evict(self, n: int) -> list[Block]:
        """Take the next n victims out of the set, in order: victim() then on_evict() each."""
        out = []
        for _ in range(n):
            b = self.victim()
            self.on_evict(b)
            out.append(b)
        return out

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, block: Block) -> bool: ...

    def verify(self) -> None:
        """Raise AssertionError if the policy's own bookkeeping is inconsistent."""
