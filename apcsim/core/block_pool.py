"""The KV block pool: blocks, ref counts, the key -> block map and the evictable set.

Every block is in exactly one of four places: free without a key (only with
`free_keyless_first`: handed out first, the last freed first), never used (handed out next,
lowest id first), in use (ref_cnt > 0), or evictable (ref_cnt == 0, ordered by the eviction
policy). A block with a key is findable under that key; two blocks may hold the same key when two
requests computed the same prefix at once (vLLM keeps both; lookups return the earliest cached
that is still resident).

A freed block whose key is not made yet (a parked block of a pending range,
apcsim.core.pending_keys) enters the evictable set without a key, where only parked blocks are
keyless (parking needs `free_keyless_first`): its eviction counts as a keyed block's, and the
pool tells `on_evict_parked` how many it evicted. A range's blocks enter the queue as one
`BlockRun` entry and keep the ref_cnt 1 of the range that holds them (the one exception to
"evictable => ref_cnt 0"), so that parking and evicting them write nothing per block; keyed
later (`key_parked`), they become ordinary evictable blocks where they stand.

`free_keyless_first` is vLLM's free queue since 0.32 (`BlockPool.free_blocks` prepends the freed
blocks that have no hash, "LIFO reuse of non-cached blocks"): a request's partial tail block is
reused before any never-used or cached block, so cached blocks live longer. Without it a keyless
block joins the evictable set in release order, as vLLM did before.
"""

from __future__ import annotations

from functools import partial
from itertools import islice, takewhile
from operator import attrgetter, is_not

from policies.eviction.base import EvictionPolicy
from policies.types import Block, BlockRun

_is_block = partial(is_not, None)
_block_id = attrgetter("block_id")


class BlockPool:
    def __init__(self, num_blocks: int, policy: EvictionPolicy, *, free_keyless_first: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.policy = policy
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._never_used = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id
        self.free_keyless_first = free_keyless_first
        self._keyless: list[int] = []  # free keyless blocks, a stack: pop() gives the next to reuse
        # key -> the block lookups return (the first cached with that key still resident);
        # later twins with the same key wait in `_twins` in insertion order.
        self.cached: dict[int, Block] = {}
        self._twins: dict[int, list[Block]] = {}
        # Chain structure (num_children) costs time on every cache and evict; policies that do
        # not read it (LRU) switch it off.
        self.track_children = policy.uses_tree
        self.children_of: dict[int, int] = {}  # key -> cached blocks whose parent_key it is
        # Block.depth and parent_key likewise: written only where a reader needs them (the policy,
        # or a host tier's pool, which copies them; apcsim.core.build turns it on then). Off, a
        # keyed block keeps depth -1 and parent_key None, as a keyless one.
        self.track_chain = policy.uses_tree or policy.uses_depth
        # Keyed blocks evicted so far, and calls that entered keys: a lookup's answer changes only
        # when one of them does (`KVCacheManager.get_computed_blocks` keeps it till then).
        self.num_evictions = 0
        self.num_inserts = 0
        self._policy_on_insert = type(policy).on_insert is not EvictionPolicy.on_insert
        self._policy_on_hit = type(policy).on_hit is not EvictionPolicy.on_hit
        # The host tier's write-back hook (apcsim.core.host_tier): called with the victims of an
        # allocation before their keys are dropped. None without a host tier.
        self.on_evict_keyed = None
        # Called with the number of parked blocks an allocation evicted (the keyless victims of
        # the policy), set by the pending keys when they park (apcsim.core.pending_keys).
        self.on_evict_parked = None

    @property
    def num_free(self) -> int:
        """Blocks that an allocation can take now: free keyless, never used and evictable."""
        return len(self._keyless) + len(self._never_used) + len(self.policy)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def lookup(self, key: int) -> Block | None:
        return self.cached.get(key)

    def cached_prefix(self, keys) -> list[Block]:
        """The blocks cached under `keys`, in order, up to the first key not cached (the walk
        runs in C: lookups stop at the first miss)."""
        return list(takewhile(_is_block, map(self.cached.get, keys)))

    def touch(self, blocks: list[Block]) -> None:
        """A request takes cached blocks it hit: ref counts up, evictable ones leave the set."""
        policy = self.policy
        if not self._policy_on_hit:
            acquire = policy.on_acquire
            for b in blocks:
                if not b.ref_cnt:
                    acquire(b)
                b.ref_cnt += 1
            return
        for b in blocks:
            if b.ref_cnt == 0:
                policy.on_acquire(b)
            b.ref_cnt += 1
            policy.on_hit(b)

    def allocate(self, n: int) -> list[Block]:
        """`n` blocks with ref_cnt 1 and no key: free keyless ones first, then never-used ones, then
        the policy's victims."""
        return list(map(self.blocks.__getitem__, self.allocate_ids(n)))

    def allocate_ids(self, n: int) -> list[int]:
        """`allocate(n)` as block ids (what a block table holds): victims out of parked runs are
        handed out without touching their blocks."""
        if n > self.num_free:
            raise RuntimeError(f"allocate({n}) with only {self.num_free} free blocks")
        keyless, never_used = self._keyless, self._never_used
        out: list[int] = []
        k = 0
        if keyless or never_used:  # else (a full pool's steady state) every block is a victim
            blocks = self.blocks
            for stack in (keyless, never_used):
                j = min(n - k, len(stack))
                if j:
                    out += stack[: -j - 1 : -1]
                    del stack[len(stack) - j :]
                    k += j
            for i in out:
                blocks[i].ref_cnt = 1
        if k < n:
            policy = self.policy
            if self.track_children:
                # Each eviction may make its parent a leaf, a candidate for the next victim.
                for _ in range(n - k):
                    (b,) = policy.evict(1)
                    if self.on_evict_keyed is not None:
                        self.on_evict_keyed((b,))
                    self._evict(b)
                    b.ref_cnt = 1
                    out.append(b.block_id)
                return out
            if self.on_evict_parked is not None:  # parked runs in the queue: see release_parked
                ids, plain = policy.evict_ids(n - k)
                self._take_victims(plain, len(ids) - len(plain))
            else:
                victims = policy.evict(n - k)
                if self.on_evict_keyed is not None:
                    self.on_evict_keyed(victims)
                self._take_victims(victims)
                ids = list(map(_block_id, victims))
            if out:
                out += ids
            else:
                out = ids
        return out

    def _evict(self, b: Block) -> None:
        """Drop the key of a block the policy just gave up (it has left the evictable set)."""
        key = b.key
        if key is None:  # never a parked block: parking needs a pool that does not track children
            return
        if self.cached[key] is b:
            twins = self._twins.get(key)
            if twins:
                self.cached[key] = twins.pop(0)
                if not twins:
                    del self._twins[key]
            else:
                del self.cached[key]
        else:
            twins = self._twins[key]
            twins.remove(b)
            if not twins:
                del self._twins[key]
        pk = b.parent_key
        if pk is not None and self.track_children:
            left = self.children_of[pk] - 1
            if left:
                self.children_of[pk] = left
            else:
                del self.children_of[pk]
            for parent in self._with_key(pk):
                parent.num_children = left
                if left == 0 and parent.ref_cnt == 0:
                    self.policy.on_became_leaf(parent)
        b.key = b.parent_key = None
        b.depth = -1
        b.num_children = 0
        self.num_evictions += 1

    def _take_victims(self, victims: list[Block], parked: int = 0) -> None:
        """`_evict` and ref_cnt 1 for many blocks when children are not tracked, in one pass:
        the hot path of LRU. `parked` more victims came out of parked runs, which need nothing
        per block (keyless, and their ref_cnt is 1 already): only their count."""
        cached, twins = self.cached, self._twins
        n = 0
        for b in victims:
            b.ref_cnt = 1
            key = b.key
            if key is None:
                continue
            if twins and key in twins:
                self._evict(b)
                continue
            del cached[key]
            b.key = None
            n += 1
        if parked:
            n += parked
            self.on_evict_parked(parked)
        if self.track_chain:  # else depth and parent_key are already -1 and None
            for b in victims:
                b.parent_key = None
                b.depth = -1
        self.num_evictions += n

    def _with_key(self, key: int) -> list[Block]:
        first = self.cached.get(key)
        if first is None:
            return []
        return [first, *self._twins.get(key, ())]

    def cache(self, b: Block, key: int, depth: int, parent_key: int | None) -> None:
        """Give an in-use block its key: its KV is now reusable by any request with this prefix."""
        self.num_inserts += 1
        b.key = key
        if self.track_chain:
            b.depth = depth
            b.parent_key = parent_key
        if self.track_children:
            b.num_children = self.children_of.get(key, 0)  # children may outlive an evicted twin
            if parent_key is not None:
                n = self.children_of.get(parent_key, 0) + 1
                self.children_of[parent_key] = n
                for parent in self._with_key(parent_key):
                    parent.num_children = n
        first = self.cached.setdefault(key, b)
        if first is not b:
            self._twins.setdefault(key, []).append(b)
        self.policy.on_insert(b)

    def cache_chain(self, blocks: list[Block], keys: list[int], first_depth: int) -> None:
        """`cache` for consecutive blocks of one chain: blocks[j] gets keys[first_depth + j]
        (the pool tracks chains or the policy sees inserts; `cache_chain_ids` keys the rest)."""
        if self.track_children or self._policy_on_insert:
            for j, b in enumerate(blocks):
                d = first_depth + j
                self.cache(b, keys[d], d, keys[d - 1] if d else None)
            return
        self.num_inserts += 1
        cached, twins = self.cached, self._twins
        d = first_depth
        pk = keys[d - 1] if d else None
        for b in blocks:
            key = keys[d]
            b.key, b.depth, b.parent_key = key, d, pk
            if cached.setdefault(key, b) is not b:
                twins.setdefault(key, []).append(b)
            pk = key
            d += 1

    def cache_chain_ids(self, block_ids, keys: list[int], first_depth: int) -> None:
        """`cache_chain` for blocks named by id (a request's block table): the hot path looks
        each block up as it keys it, with no list of the blocks built first."""
        if self.track_chain or self._policy_on_insert:
            self.cache_chain(list(map(self.blocks.__getitem__, block_ids)), keys, first_depth)
            return
        self.num_inserts += 1
        blocks, cached, twins = self.blocks, self.cached, self._twins
        for i, key in zip(block_ids, islice(keys, first_depth, None)):
            b = blocks[i]
            b.key = key
            if cached.setdefault(key, b) is not b:
                twins.setdefault(key, []).append(b)

    def release(self, blocks) -> None:
        """Drop one reference to each block, in the given order (the order they become evictable)."""
        self.release_ids(map(_block_id, blocks))

    def release_ids(self, block_ids) -> None:
        """`release` for blocks named by id, in the given order (a request's block table,
        reversed): each block is looked up as its count drops, with no list of them built first."""
        blocks = self.blocks
        freed = []
        keyless = []
        if not self.free_keyless_first:
            append = freed.append
            for i in block_ids:
                b = blocks[i]
                rc = b.ref_cnt - 1
                b.ref_cnt = rc
                if not rc:
                    append(b)
        else:
            for i in block_ids:
                b = blocks[i]
                rc = b.ref_cnt - 1
                b.ref_cnt = rc
                if not rc:
                    if b.key is None:
                        keyless.append(i)
                    else:
                        freed.append(b)
        if keyless:
            # vLLM prepends them in order: the first released is the next reused.
            self._keyless.extend(reversed(keyless))
        if freed:
            self.policy.on_release_many(freed)

    def release_parked(self, block_ids: list[int]) -> BlockRun | None:
        """`release_ids` for a parked range's blocks (apcsim.core.pending_keys), in eviction
        order (a list the run keeps): nobody else holds them and they have no key, yet they join
        the evictable set, as one entry (a `BlockRun`, returned), not the keyless stack. Nothing
        is written per block: each keeps ref_cnt 1, the range's hold, which the allocation that
        evicts it takes over (`verify` and `apcsim.core.invariants` count it so)."""
        if not block_ids:
            return None
        run = BlockRun(block_ids, self.blocks)  # the caller's fresh list: kept, not copied
        self.policy.on_release_run(run)
        return run

    def key_parked(self, run: BlockRun) -> None:
        """The run's queued blocks just got their keys (`cache_chain_ids`) where they stand: they
        become ordinary evictable blocks, which a hit may take."""
        for b in run.queued():
            b.ref_cnt = 0
        self.policy.key_run(run)

    def verify(self) -> None:
        """Check every invariant of the pool; raises AssertionError naming the broken one."""
        never = set(self._never_used)
        assert len(never) == len(self._never_used), "a block is twice in the never-used stack"
        keyless = set(self._keyless)
        assert len(keyless) == len(self._keyless), "a block is twice in the keyless free stack"
        assert self.free_keyless_first or not keyless, "keyless free stack used without free_keyless_first"
        children: dict[int, int] = {}
        by_key: dict[int, list[Block]] = {}
        parking = self.on_evict_parked is not None
        for b in self.blocks:
            queued = b in self.policy
            parked = parking and queued and b.key is None  # in a run not keyed: held by its range
            assert not parked or b.ref_cnt == 1, f"parked {b!r}: ref count is not its range's"
            where = [b.block_id in keyless, b.block_id in never, b.ref_cnt > 0 and not parked, queued]
            assert b.ref_cnt >= 0, f"{b!r}: negative ref count"
            assert sum(where) == 1, f"{b!r}: in keyless-free/never-used/in-use/evictable = {where}"
            assert not where[0] or b.key is None, f"{b!r}: a keyed block in the keyless free stack"
            if b.key is None:
                assert b.parent_key is None and b.num_children == 0 and b.depth == -1, f"keyless {b!r} has chain state"
                continue
            by_key.setdefault(b.key, []).append(b)
            if not self.track_chain:
                assert b.depth == -1 and b.parent_key is None, f"{b!r}: chain state written though not tracked"
                continue
            assert b.depth >= 0 and (b.parent_key is None) == (b.depth == 0), f"{b!r}: depth and parent disagree"
            if b.parent_key is not None:
                children[b.parent_key] = children.get(b.parent_key, 0) + 1
        assert set(by_key) == set(self.cached), "the key map and the keyed blocks disagree"
        assert all(self._twins.values()) and set(self._twins) <= set(self.cached), "stale twin lists"
        for key, same in by_key.items():
            listed = self._with_key(key)
            assert sorted(x.block_id for x in listed) == sorted(x.block_id for x in same), f"key {key}: map lists {listed}, blocks {same}"
            if self.track_children:
                for b in same:
                    assert b.num_children == children.get(key, 0), f"{b!r}: num_children {b.num_children} != {children.get(key, 0)}"
        if self.track_children:
            assert children == self.children_of, "children_of disagrees with the cached blocks' parent keys"
        self.policy.verify()
