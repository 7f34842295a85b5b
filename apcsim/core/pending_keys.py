"""Decode blocks keyed when someone could tell, not at every block boundary (the scheduler's).

A decoding request fills a block every `block_size` steps and the scheduler gives it its key at
the request's next event (`apcsim.core.cohort`). Keying costs a few calls per block; most such
keys are never looked up before the request is freed. So a decoding request's filled blocks may
stay *pending*: counted as keyed by the scheduler, inserted into the pool later, in one call.

Pending is exact because of invariant P, kept for every pending request R whose first pending
block is `fp` (its parent: R's key `fp - 1`, or R's root seed when fp == 0):
  (a) R's key `fp` is not in the pool's key map;
  (b) no other pending request has the same parent.
Keys chain, so (up to a 64-bit hash collision) R's pending keys then equal no key anywhere: the
pool state after inserting them late is the one inserting them at once would give, and a
lookup can reach them only through R's parent at the walk's frontier. So R is flushed (its
pending blocks keyed) before: a lookup whose walk stops right after R's parent; another
request caching a block whose parent is R's parent; R taking a new block table entry outside a
boundary, leaving the cohort, or being freed. Registering R checks (a) and (b) and keys at once
(after flushing the other request, which filled its blocks first) when either fails.

Only where nothing else reads the key map or hooks an insert: no host tier (its write-through
and the loads read keys), no `verify_tokens`, no eviction policy that tracks chains or sees
inserts, and no cluster router probing the pool (`apcsim.cluster.replica` turns it off).
"""

from __future__ import annotations

from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.request import Request


class PendingKeys:
    def __init__(self, kv: KVCacheManager) -> None:
        self.kv = kv
        self.enabled = True  # a caller that reads the pool itself (a cluster replica) turns it off
        self._by_parent: dict[int, Request] = {}  # pending parent key -> its request (P(b))
        self._target: dict[Request, tuple[int, int]] = {}  # R -> (parent, tokens keyed by now)

    def usable(self, host_tier) -> bool:
        kv = self.kv
        pool = kv.pool
        return (self.enabled and kv.enable_caching and host_tier is None and kv.on_cached is None
                and not kv.verify_tokens and not pool.track_children and not pool._policy_on_insert)

    def __bool__(self) -> bool:
        return bool(self._target)

    def _parent(self, r: Request, first: int) -> int:
        return r.block_keys[first - 1] if first else self.kv.hash_algo.root(r.spec.cache_salt)

    def defer(self, r: Request, num_tokens: int) -> None:
        """`kv.cache_full_blocks(r, num_tokens)`, made now or left pending (see the module doc)."""
        entry = self._target.get(r)
        if entry is not None:
            self._target[r] = (entry[0], num_tokens)
            return
        kv = self.kv
        first, num_full = r.num_cached_blocks, num_tokens // kv.block_size
        if num_full <= first:
            return
        keys = kv.block_keys(r, num_full)
        parent = self._parent(r, first)
        other = self._by_parent.get(parent)
        if other is not None:
            self.flush(other)  # filled its blocks first: they are keyed first
        if keys[first] in kv.pool.cached:
            kv.cache_full_blocks(r, num_tokens)  # a twin: its place among equal keys is now
            return
        self._by_parent[parent] = r
        self._target[r] = (parent, num_tokens)

    def flush(self, r: Request) -> None:
        """Key r's pending blocks now (nothing if it has none)."""
        entry = self._target.pop(r, None)
        if entry is not None:
            del self._by_parent[entry[0]]
            self.kv.cache_full_blocks(r, entry[1])

    def settle_lookup(self, r: Request) -> None:
        """Before a lookup of waiting request r: flush whoever r's walk would reach."""
        kv = self.kv
        max_blocks = (r.num_tokens - 1) // kv.block_size
        while self._target:
            m = len(kv.get_computed_blocks(r))
            if m >= max_blocks:
                return
            other = self._by_parent.get(self._parent(r, m))
            if other is None:
                return
            self.flush(other)

    def before_caching(self, r: Request, num_tokens: int, first: int) -> None:
        """Before r's blocks `first` .. full within `num_tokens` get keys eagerly: flush every
        pending request whose parent is the parent of one of them (keeps P(a))."""
        num_full = num_tokens // self.kv.block_size
        if num_full <= first or not self._target:
            return
        keys = self.kv.block_keys(r, num_full)
        parents = keys[max(first - 1, 0) : num_full - 1]
        by_parent = self._by_parent
        if first == 0 and self._parent(r, 0) in by_parent:
            self.flush(by_parent[self._parent(r, 0)])
        if not by_parent.keys().isdisjoint(parents):
            for p in parents:
                other = by_parent.get(p)
                if other is not None:
                    self.flush(other)
