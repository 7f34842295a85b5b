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

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, block: Block) -> bool: ...

    def verify(self) -> None:
        """Raise AssertionError if the policy's own bookkeeping is inconsistent."""
