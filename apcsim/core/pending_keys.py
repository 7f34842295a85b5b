"""Block keys made and inserted when someone could tell, not when the blocks fill.

vLLM keys a request's full blocks as they fill (prompt blocks at schedule time, decode blocks
at their boundary). Keying costs a hash and a few calls per block, and on most traces most keys
are never looked up: a prompt's blocks past its first new one are found again only by a request
with the same prefix. So a request's full blocks past its first new one may stay *pending*:
counted as keyed by the scheduler, hashed and inserted into the pool's key map later, in one
call, or never if nobody could reach them before they are evicted.

Each pending range is an `_Entry`: request R's blocks from `first` on, full within
`num_tokens` tokens; its parent is R's key `first - 1`, which R keyed at once (`defer` keys R's
first new block at once, so a parent is R's own block and two requests rarely share one).
Pending is exact because of invariant P, kept for every entry E of request R with parent p:
  (a) R's key `first` is not in the pool's key map;
  (b) no other entry has parent p.
Keys chain, so (up to a 64-bit hash collision) E's keys then equal no key anywhere: the pool
state after inserting them late is the one inserting them at once would give, and a lookup can
reach them only through p at the walk's frontier. So E is flushed (its keys made and inserted)
before: a lookup whose walk stops right after p (`settle_lookup`); another request keying a
block whose parent is p (`defer`, `before_caching`). Registering an entry checks (a) and (b)
and keys at once when either fails.

An entry outlives its request's hold on the blocks (parked by `free`, where the pool's policy is
vLLM's plain free queue, keyless blocks are freed to the front of it, and the request's output
is fixed): the freed blocks enter the free queue as they are, without a key, as one entry
(`BlockRun`; each keeps ref_cnt 1, the range's hold), and nothing is written per block. In that
queue every keyless block is then a parked one (a keyless block of any other kind goes to the
keyless stack), and the queue evicts in the order blocks entered it: the tails of the oldest
parked entries' runs, in the order they were parked (`_parked`). The pool counts their
evictions as keyed blocks' (`num_evictions`) and tells `BlockPool.on_evict_parked`; an entry's
run says how many of its blocks are left (`resident`), and the entry goes when its last block
does. A flush after the free keys the blocks
still resident, where they stand in the queue, and the entry stops being parked. Parking is
exact because in that queue a parked block is evicted before its parent block: the request
frees its table tail first, and any later hit on the parent walks through p to the frontier
and flushes the entry first. (The same queue evicts an entry's blocks tail
first, so the resident ones are always a prefix of them.) A parked entry lets its request go
and keeps what its keys are made from (the keys made already; the request's content chain, a
view of its ids and an int an id; for the rest at most `block_size` tokens a block, or a window
of a lazy prompt, which holds a few numbers and what its own reads keep), so memory follows the
pool, not the number of requests served.
Elsewhere (another policy, an engine's sampled output) the entry is flushed at the free, as
its blocks would have been keyed by then.

An own range: a request whose prompt starts with content no other request names
(`ContentIds.unique`, a trace row's own pieces) keys nothing at its first admission. None of its
keys is anywhere yet, and only the request could ever reach one (its lookups skip the walk till
then: `UNSEEN_PREFIX`), so all its blocks wait, the first too, in a range filed under no parent;
its end moves at the request's leaves, not at each decode block boundary
(`Request.own_pending_range`). At a finish the blocks are parked with nothing to key them from;
at a preemption the first block is keyed then, and the rest becomes an ordinary range under it,
which the request's own lookup flushes when it comes back.

Only where nothing else reads the key map or hooks an insert: no host tier (its write-through
and the loads read keys), no `verify_tokens`, no eviction policy that tracks chains or sees
inserts, and no cluster router probing the pool (`apcsim.cluster.replica` turns it off).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from apcsim.core.kv_cache_manager import KVCacheManager, chain_keys
from apcsim.core.lazy_prompt import LazyPrompt
from apcsim.core.request import Request, output_stream
from policies.types import BlockRun


class _Entry:
    """One pending range: request `req`'s blocks from `first` on, full within `num_tokens`
    tokens, under parent key `parent`. `blocks` is None while `req` holds them; once parked,
    their ids in chain order, of which the first `resident` are still in the pool (the free
    queue evicts them tail first: they entered it together, as `run`, tail first, and nothing
    can hit them); 0 once flushed (`run` is then None). A parked entry lets its request go and
    keeps only what its keys are made from (`_Parked`; None where nobody can reach the range:
    see `PendingKeys.free`)."""

    __slots__ = ("owner", "req", "parent", "first", "num_tokens", "blocks", "parked", "run")

    def __init__(self, owner: PendingKeys, req: Request, parent: int, first: int, num_tokens: int) -> None:
        self.owner = owner
        self.req: Request | None = req
        self.parent = parent
        self.first = first
        self.num_tokens = num_tokens
        self.blocks: list[int] | None = None
        self.parked: _Parked | None = None
        self.run: BlockRun | None = None  # the free queue's entry for the parked blocks

    @property
    def resident(self) -> int:
        """Parked blocks still in the pool: those its run has not handed out yet."""
        run = self.run
        return 0 if run is None else len(run.ids) - run.next

    def gone(self) -> None:
        """The pool evicted the last parked block: nothing is left to key."""
        if self.parent is not None:  # else an own range that finished: filed nowhere
            del self.owner._by_parent[self.parent]


class _Parked:
    """A parked range's keys without its request: those made already (`known`), then the
    request's content chain where its content keys go on, and for the rest their tokens: the
    prompt's as a copy (a window, for a lazy prompt), the output's as a copy of a fixed answer or
    as the simulated stream's coordinates (made again when needed). At most `block_size` tokens
    a parked block, so memory follows the pool, not the prompts."""

    __slots__ = ("known", "parent", "start", "chain", "prompt", "answer", "stream")

    def __init__(self, r: Request, start: int, stop: int, block_size: int) -> None:
        self.known = r.block_keys[start:stop]
        self.start = start
        self.chain = self.prompt = self.answer = self.stream = None
        k = start + len(self.known)
        self.parent = r.block_keys[k - 1]  # start >= 1: every range's parent is its request's block
        chain = r.content_chain
        if chain is not None and k < min(stop, chain.num_blocks):
            self.chain = chain  # its keys never change: sharing it with the request is safe
            k = min(stop, chain.num_blocks)
        if k == stop:
            return
        a, b, p = k * block_size, stop * block_size, r.prompt_len
        if a < p:
            tokens = r.spec.prompt_token_ids
            # A lazy prompt's window holds a few numbers; an array's slice is copied so that the
            # request's whole prompt can go.
            self.prompt = tokens.window(a, min(b, p)) if isinstance(tokens, LazyPrompt) else tokens[a : min(b, p)].copy()
        if b > p:
            oa, ob = max(a - p, 0), b - p
            if r.spec.output_token_ids is not None:
                self.answer = r.spec.output_token_ids[oa:ob].copy()
            else:
                self.stream = (r.output_seed, r.index, oa, ob)

    def keys(self, n: int, block_size: int, algo) -> list[int]:
        """The keys of the range's first n blocks."""
        if n <= len(self.known):
            return self.known[:n]
        keys = list(self.known)
        if self.chain is not None:
            keys += self.chain.keys(self.start + len(keys), self.start + n)
            if len(keys) == n:
                return keys
        parts = [t[:] for t in (self.prompt, self.answer) if t is not None]
        if self.stream is not None:
            seed, index, oa, ob = self.stream
            parts.append(output_stream(seed, index, ob)[oa:])
        tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
        rest = (n - len(keys)) * block_size
        return keys + chain_keys(tokens[:rest], block_size, keys[-1] if keys else self.parent, algo)


class PendingKeys:
    def __init__(self, kv: KVCacheManager) -> None:
        self.kv = kv
        self.enabled = True  # a caller that reads the pool itself (a cluster replica) turns it off
        self._by_parent: dict[int, _Entry] = {}  # every entry, by parent key (P(b))
        self._held: dict[Request, _Entry] = {}  # the entries whose request still holds the blocks
        self._park = False  # whether entries outlive the free (set by `usable`)
        # Parked entries in the order they entered the free queue (flushed ones are skipped):
        # the pool evicts their blocks in this order.
        self._parked: deque[_Entry] = deque()

    def usable(self, host_tier) -> bool:
        kv = self.kv
        pool = kv.pool
        ok = (self.enabled and kv.enable_caching and host_tier is None and kv.on_cached is None
              and not kv.verify_tokens and not pool.track_children and not pool._policy_on_insert)
        # Parked blocks are keyed later without their depth and parent key, which only a pool that
        # tracks chains would write (it does not for the plain free queue, unless a host tier asks).
        # Only where other keyless blocks never enter the queue (free_keyless_first): the pool
        # tells a parked block by its having no key.
        self._park = ok and pool.policy.plain_free_queue and not pool.track_chain and pool.free_keyless_first
        if self._park:
            pool.on_evict_parked = self._evicted
        return ok

    def _evicted(self, n: int) -> None:
        """The pool evicted n parked blocks, out of the runs of the oldest parked entries: those
        whose runs are spent go."""
        parked = self._parked
        while parked and not parked[0].resident:
            entry = parked.popleft()
            if entry.run is not None:  # else it was flushed: no longer filed
                entry.gone()

    def __bool__(self) -> bool:
        return bool(self._by_parent)

    def _parent(self, r: Request, first: int) -> int:
        return r.block_keys[first - 1] if first else self.kv.hash_algo.root(r.spec.cache_salt)

    def defer(self, r: Request, num_tokens: int) -> None:
        """`kv.cache_full_blocks(r, num_tokens)`, made now or left pending (see the module doc)."""
        entry = self._held.get(r)
        if entry is not None:  # r's blocks past `first` wait already: the range grows
            entry.num_tokens = num_tokens
            return
        kv = self.kv
        first, num_full = r.num_cached_blocks, num_tokens // kv.block_size
        if num_full <= first:
            return
        if first == 0 and num_full > 1 and r.num_cached_tokens < 0 and r.spec.own_content:
            # A prompt of its own, at its first admission: none of its keys is anywhere, and
            # nobody but r could ever reach one, so every block waits, the first too, in a range
            # filed under no parent (an own range: see `free` for when r needs keys).
            self._held[r] = _Entry(self, r, None, 0, num_tokens)
            r.own_pending_range = True
            return
        self._flush_parent(self._parent(r, first))  # a sibling under the same parent filled first
        if num_full == first + 1:
            kv.cache_full_blocks(r, num_tokens)
            return
        keys = kv.block_keys(r, first + 2)
        cached = kv.pool.cached
        if keys[first] in cached or keys[first + 1] in cached or keys[first] in self._by_parent:
            # A twin (its place among equal keys is now) or P would break: all now.
            self.before_caching(r, num_tokens, first)
            kv.cache_full_blocks(r, num_tokens)
            return
        kv.cache_full_blocks(r, (first + 1) * kv.block_size)  # the parent of the rest: r's own
        entry = _Entry(self, r, keys[first], first + 1, num_tokens)
        self._by_parent[entry.parent] = entry
        self._held[r] = entry
        # Its keys chain from content no other request names: only r could reach the range, and r
        # looks nothing up while it runs, so nothing flushes it before r leaves the cohort (which
        # moves its end to all of r's full blocks, as each boundary would have).
        r.own_pending_range = r.spec.own_content

    def holds(self, r: Request) -> bool:
        """Whether r's blocks past its first new one wait as a range r holds: keying more of
        them (`defer`) then only moves the range's end, touching nothing in the pool."""
        return r in self._held

    def free(self, r: Request, finished: bool = False) -> None:
        """`kv.free(r)`, r's pending blocks parked in the free queue, or keyed first where they
        cannot be (see the module doc). `finished`: r is done (not preempted); if its prompt
        starts with content no other request names (`ContentIds.unique`), nothing can reach
        its parked range any more (every key of it chains from that content, and r will never
        look it up again), so what its keys are made from is not kept."""
        entry = self._held.get(r)
        if entry is None:
            self.kv.free(r)
            return
        if not (self._park and r.outputs_fixed):
            self._flush(entry)
            self.kv.free(r)
            return
        del self._held[r]
        r.own_pending_range = False
        bs = self.kv.block_size
        stop = entry.num_tokens // bs
        if finished and r.spec.own_content:
            entry.parked = None
        else:
            if entry.parent is None:
                # An own range, and r will look its blocks up again (preempted): key its first
                # block now, as `defer` keys a range's parent, and file the rest under it. Nobody
                # could have told that key's absence so far (the range was r's alone).
                self.kv.cache_full_blocks(r, bs)
                entry.first = 1
                entry.parent = r.block_keys[0]
                self._by_parent[entry.parent] = entry
            entry.parked = _Parked(r, entry.first, stop, bs)
        entry.blocks = r.block_ids[entry.first : stop]
        entry.req = None
        self._parked.append(entry)
        entry.run = self.kv.free(r, parked=(entry.first, stop))

    def _flush(self, entry: _Entry) -> None:
        if entry.parent is not None:  # else an own range (`defer`), held: filed nowhere
            del self._by_parent[entry.parent]
        kv, r = self.kv, entry.req
        if entry.blocks is None:
            del self._held[r]
            r.own_pending_range = False
            kv.cache_full_blocks(r, entry.num_tokens)
            return
        ids = entry.blocks[: entry.resident]
        if entry.parked is None:
            raise RuntimeError("another request reached the parked blocks of a finished request whose content ids "
                               "were marked unique (ContentIds.unique): it names the same content")
        kv.pool.cache_chain_ids(ids, entry.parked.keys(len(ids), kv.block_size, kv.hash_algo), 0)
        kv.pool.key_parked(entry.run)
        entry.parked = entry.run = None  # keyed where they stand: `_evicted` skips it

    def _flush_parent(self, parent: int) -> None:
        entry = self._by_parent.get(parent)
        if entry is not None:
            self._flush(entry)

    def settle_lookup(self, r: Request) -> None:
        """Before a lookup of waiting request r: flush whoever r's walk would reach."""
        kv = self.kv
        max_blocks = (r.num_tokens - 1) // kv.block_size
        while self._by_parent:
            m = len(kv.get_computed_blocks(r))
            if m >= max_blocks:
                return
            entry = self._by_parent.get(self._parent(r, m))
            if entry is None:
                return
            self._flush(entry)

    def before_caching(self, r: Request, num_tokens: int, first: int) -> None:
        """Before r's blocks `first` .. full within `num_tokens` get keys at once: flush every
        entry whose parent is the parent of one of them (keeps P(a))."""
        num_full = num_tokens // self.kv.block_size
        if num_full <= first or not self._by_parent:
            return
        keys = self.kv.block_keys(r, num_full)
        parents = keys[max(first - 1, 0) : num_full - 1]
        by_parent = self._by_parent
        if first == 0:
            self._flush_parent(self._parent(r, 0))
        if not by_parent.keys().isdisjoint(parents):
            for p in parents:
                self._flush_parent(p)

    def parked_blocks(self):
        """The ids of the blocks parked ranges hold (one reference each, see BlockRun)."""
        for entry in self._parked:
            yield from entry.blocks[: entry.resident]

    def verify(self) -> None:
        """Check P(b)'s bookkeeping and the parked blocks (call between steps)."""
        for parent, entry in self._by_parent.items():
            assert entry.parent == parent, f"entry under {parent} filed under another parent"
            if entry.blocks is None:
                assert self._held.get(entry.req) is entry, f"held entry of {entry.req.request_id} not held"
                continue
            assert entry.req is None and 0 < entry.resident <= len(entry.blocks), f"parked entry under {parent}"
            run = entry.run
            assert run.ids[run.next :] == entry.blocks[: entry.resident][::-1], f"parked entry under {parent}: its run holds other blocks"
            for b in entry.blocks[: entry.resident]:
                block = self.kv.pool.blocks[b]
                assert block.key is None and block.ref_cnt == 1, f"parked {block!r} not unkeyed and held by its range"
        assert all(self._by_parent.get(e.parent) is e for e in self._held.values() if e.parent is not None), \
            "a held entry is not filed"
        assert all(e.first == 0 and e.req.own_pending_range for e in self._held.values() if e.parent is None), \
            "an entry under no parent is not an own range"
        parked = [e for e in self._parked if e.resident]
        assert all(self._by_parent.get(e.parent) is e for e in parked if e.parent is not None), "a parked entry is not filed"
        assert all(e.parked is None for e in parked if e.parent is None), "an own range parked with keys to make"
        assert sum(e.parent is not None for e in parked) == sum(e.blocks is not None for e in self._by_parent.values()), \
            "a filed parked entry is not queued"
        if self._park:  # every keyless block in the free queue is a parked one
            pool = self.kv.pool
            free_keyless = sum(b.key is None and b in pool.policy for b in pool.blocks)
            assert free_keyless == sum(e.resident for e in parked), "keyless blocks in the free queue are not the parked ones"
