"""The block pool under every registered eviction policy.

A hypothesis state machine drives a small pool with the verbs the KV cache manager uses
(allocate, cache, lookup + touch, release tail first) against a model of what must hold: every
block never-used, in use or evictable; never-used blocks handed out first, lowest id first;
victims only from the evictable set (in exact release order for the LRU-queue policies); a key
findable exactly while some block holds it; `verify()` after every step.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from policies.eviction.lru import LRUPolicy
from policies.registry import EVICTION_POLICIES
from tests.helpers.serving import make_pool


def policy_variants() -> list:
    """Every registered eviction policy, plus leaves_only=False for those that have the option."""
    out = []
    for name in sorted(EVICTION_POLICIES):
        fields = {f.name for f in dataclasses.fields(EVICTION_POLICIES[name].config_cls)}
        out.append(pytest.param(name, {}, id=name))
        if "leaves_only" in fields:
            out.append(pytest.param(name, {"leaves_only": False}, id=f"{name}-any-node"))
    return out


CACHING = [p for p in policy_variants() if EVICTION_POLICIES[p.values[0]].cls.enables_caching]


def test_every_policy_is_covered():
    # The registry is filled by importing policies; an empty one would make this suite vacuous.
    assert {"lru", "none", "lfu", "cost_aware"} <= set(EVICTION_POLICIES)
    assert not EVICTION_POLICIES["none"].cls.enables_caching


# -- the state machine -------------------------------------------------------------------------
class _Req:
    """A request's hold on the pool: its blocks in chain order; the first len(keys) are keyed."""

    def __init__(self, blocks: list, keys: list) -> None:
        self.blocks = blocks
        self.keys = keys


class PoolMachine(RuleBasedStateMachine):
    policy_name = "lru"
    overrides: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self.pool = None

    @initialize(n=st.integers(8, 24))
    def setup(self, n):
        self.n = n
        self.pool = make_pool(self.policy_name, n, self.overrides)
        self.policy = self.pool.policy
        self.caching = self.policy.enables_caching
        self.exact_lru = isinstance(self.policy, LRUPolicy)
        self.leaves_only = bool(getattr(self.policy.cfg, "leaves_only", False))
        self.never = list(range(n))  # never-used ids, ascending
        self.ref: dict[int, int] = {}
        self.obj: dict[int, object] = {}  # every block handed out so far
        self.key_of: dict[int, int] = {}  # block id -> key, for keyed blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()  # in release order
        self.reqs: list[_Req] = []
        self.registry: dict[tuple, int] = {}  # (parent key, token choice) -> key
        self.parent_of: dict[int, int | None] = {}  # key -> its parent key
        self.counter = itertools.count(10_000)

    # -- helpers -------------------------------------------------------------------------------
    def _check_leaves_first(self, victims: list) -> None:
        """Replay the victims in order against the model (taken before the allocation): a block
        with cached children may go only when no evictable block is a leaf."""
        keyed = dict(self.key_of)
        evictable = set(self.evictable)
        for v in victims:
            children: dict[int, int] = {}
            for key in keyed.values():
                parent = self.parent_of[key]
                if parent is not None:
                    children[parent] = children.get(parent, 0) + 1

            def is_leaf(bid):
                return bid not in keyed or children.get(keyed[bid], 0) == 0

            if not is_leaf(v):
                leaves = sorted(b for b in evictable if is_leaf(b))
                assert not leaves, f"leaves-only policy evicted non-leaf {v} while leaves {leaves} were evictable"
            evictable.discard(v)
            keyed.pop(v, None)

    def _allocate(self, k: int) -> list:
        pool = self.pool
        assert k <= pool.num_free
        from_never = self.never[:k]
        n_evict = k - len(from_never)
        peeked = None
        if k == 1 and n_evict == 1:
            peeked = self.policy.victim()
            assert self.policy.victim() is peeked, "victim() must only peek"
            assert peeked.block_id in self.evictable and peeked.ref_cnt == 0 and peeked in self.policy
        expected_lru = list(self.evictable)[:n_evict]
        before = set(self.evictable)
        blocks = pool.allocate(k)
        ids = [b.block_id for b in blocks]
        assert len(set(ids)) == k
        assert ids[: len(from_never)] == from_never, f"never-used blocks first, lowest id first: {ids} vs {from_never}"
        victims = ids[len(from_never):]
        assert set(victims) <= before, f"victims {victims} not all from the evictable set {before}"
        if self.leaves_only:
            self._check_leaves_first(victims)
        if self.exact_lru:
            assert victims == expected_lru, f"LRU queue order: {victims} != {expected_lru}"
        if peeked is not None:
            assert victims == [peeked.block_id], "allocate(1) must take the block victim() named"
        del self.never[: len(from_never)]
        for v in victims:
            del self.evictable[v]
            self.key_of.pop(v, None)
        for b in blocks:
            assert b.ref_cnt == 1 and b.key is None and b.depth == -1 and b.parent_key is None
            self.ref[b.block_id] = 1
            self.obj[b.block_id] = b
        return blocks

    # -- rules ---------------------------------------------------------------------------------
    @precondition(lambda self: self.pool is not None)
    @rule(k=st.integers(1, 6))
    def new_request(self, k):
        k = min(k, self.pool.num_free)
        if k == 0:
            return
        self.reqs.append(_Req(self._allocate(k), []))

    @precondition(lambda self: self.pool is not None and self.reqs)
    @rule(i=st.integers(0, 63), k=st.integers(1, 3))
    def extend(self, i, k):
        k = min(k, self.pool.num_free)
        if k == 0:
            return
        r = self.reqs[i % len(self.reqs)]
        r.blocks.extend(self._allocate(k))

    @precondition(lambda self: self.pool is not None and self.caching
                  and any(len(r.keys) < len(r.blocks) for r in self.reqs))
    @rule(i=st.integers(0, 63), choice=st.integers(0, 1))
    def cache_next(self, i, choice):
        cands = [r for r in self.reqs if len(r.keys) < len(r.blocks)]
        r = cands[i % len(cands)]
        parent = r.keys[-1] if r.keys else None
        key = self.registry.setdefault((parent, choice), next(self.counter))
        self.parent_of[key] = parent
        b = r.blocks[len(r.keys)]
        assert b.key is None and b.ref_cnt >= 1
        self.pool.cache(b, key, len(r.keys), parent)
        chain = (len(r.keys), parent) if self.pool.track_chain else (-1, None)  # written only if read
        assert (b.key, b.depth, b.parent_key) == (key, *chain)
        r.keys.append(key)
        self.key_of[b.block_id] = key
        found = self.pool.lookup(key)
        assert found is not None and found.key == key

    @precondition(lambda self: self.pool is not None and self.caching and self.registry)
    @rule(path=st.lists(st.integers(0, 7), min_size=1, max_size=6), extra=st.integers(0, 2))
    def hit(self, path, extra):
        """Walk a prefix from the root through cached keys (as a lookup does), take what it found."""
        blocks, keys, parent = [], [], None
        for p in path:
            options = [k for c in (0, 1) if (k := self.registry.get((parent, c))) is not None and self.pool.lookup(k)]
            if not options:
                break
            key = options[p % len(options)]
            b = self.pool.lookup(key)
            chain = (len(keys), parent) if self.pool.track_chain else (-1, None)
            assert b.key == key and (b.depth, b.parent_key) == chain
            blocks.append(b)
            keys.append(key)
            parent = key
        if not blocks:
            return
        free = self.pool.num_free
        n_evictable = sum(1 for b in blocks if b.ref_cnt == 0)
        assert n_evictable == sum(1 for b in blocks if b.block_id in self.evictable)
        self.pool.touch(blocks)
        assert self.pool.num_free == free - n_evictable
        for b in blocks:
            assert b not in self.policy and b.key is not None
            if self.ref[b.block_id] == 0:
                del self.evictable[b.block_id]
            self.ref[b.block_id] += 1
            assert b.ref_cnt == self.ref[b.block_id]
        r = _Req(blocks, keys)
        self.reqs.append(r)
        k = min(extra, self.pool.num_free)
        if k:
            r.blocks.extend(self._allocate(k))

    @precondition(lambda self: self.pool is not None and self.reqs)
    @rule(i=st.integers(0, 63))
    def release(self, i):
        r = self.reqs.pop(i % len(self.reqs))
        tail_first = list(reversed(r.blocks))
        self.pool.release(tail_first)
        for b in tail_first:
            self.ref[b.block_id] -= 1
            if self.ref[b.block_id] == 0:
                self.evictable[b.block_id] = None
        for b in r.blocks:
            if b.key is not None:
                found = self.pool.lookup(b.key)
                assert found is not None and found.key == b.key, "a released keyed block must stay findable"

    @precondition(lambda self: self.pool is not None)
    @rule(extra=st.integers(1, 3))
    def over_allocate(self, extra):
        free, used = self.pool.num_free, self.pool.num_used
        with pytest.raises(RuntimeError):
            self.pool.allocate(free + extra)
        assert (self.pool.num_free, self.pool.num_used) == (free, used)

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def consistent(self):
        if self.pool is None:
            return
        pool, policy = self.pool, self.policy
        pool.verify()
        in_use = sum(1 for c in self.ref.values() if c > 0)
        assert pool.num_used == in_use
        assert pool.num_free == self.n - in_use == len(self.never) + len(self.evictable)
        assert len(policy) == len(self.evictable)
        for bid, b in self.obj.items():
            assert b.ref_cnt == self.ref[bid]
            assert (b in policy) == (bid in self.evictable), f"{b!r}: membership in the evictable set"
            assert b.key == self.key_of.get(bid)
        live = set(self.key_of.values())
        for key in self.registry.values():
            found = pool.lookup(key)
            if key in live:
                assert found is not None and found.key == key
                assert self.key_of.get(found.block_id) == key
            else:
                assert found is None, f"key {key} was evicted from every block but lookup returns {found!r}"


@pytest.mark.parametrize("name,overrides", policy_variants())
def test_pool_state_machine(name, overrides):
    machine = type(f"PoolMachine_{name}", (PoolMachine,), {"policy_name": name, "overrides": overrides})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=50, stateful_step_count=60, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )


# -- targeted examples ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides", policy_variants())
def test_never_used_blocks_first_lowest_id_first(name, overrides):
    pool = make_pool(name, 8, overrides)
    a = pool.allocate(3)
    assert [b.block_id for b in a] == [0, 1, 2]
    pool.release(list(reversed(a)))
    # Three evictable blocks exist now, yet the never-used ones are handed out first.
    b = pool.allocate(2)
    assert [x.block_id for x in b] == [3, 4]
    c = pool.allocate(3)
    assert [x.block_id for x in c] == [5, 6, 7]
    assert pool.num_free == 3 and pool.num_used == 5
    d = pool.allocate(3)
    assert sorted(x.block_id for x in d) == [0, 1, 2]
    assert pool.num_free == 0 and pool.num_used == 8
    pool.verify()


@pytest.mark.parametrize("name,overrides", policy_variants())
def test_allocate_more_than_free_raises_and_changes_nothing(name, overrides):
    pool = make_pool(name, 8, overrides)
    held = pool.allocate(5)
    with pytest.raises(RuntimeError):
        pool.allocate(4)
    assert pool.num_free == 3 and pool.num_used == 5
    pool.verify()
    pool.release(held[:2])
    assert pool.num_free == 5
    with pytest.raises(RuntimeError):
        pool.allocate(6)
    pool.verify()
    assert len(pool.allocate(5)) == 5
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    assert pool.num_free == 0
    pool.verify()


@pytest.mark.parametrize("name,overrides", CACHING)
def test_released_keyed_block_findable_until_evicted(name, overrides):
    pool = make_pool(name, 4, overrides)
    (a,) = pool.allocate(1)
    pool.cache(a, 77, 0, None)
    assert pool.lookup(77) is a
    pool.release([a])
    assert a.ref_cnt == 0 and a in pool.policy
    assert pool.lookup(77) is a, "a released block keeps its key"
    others = pool.allocate(3)  # the never-used blocks: `a` is not touched
    assert a not in others and pool.lookup(77) is a and a.key == 77
    # A hit takes it back and a release puts it back, still findable.
    pool.touch([a])
    assert a.ref_cnt == 1 and a not in pool.policy
    pool.release([a])
    assert pool.lookup(77) is a
    (again,) = pool.allocate(1)  # only `a` is free: it is evicted
    assert again is a
    assert a.key is None and pool.lookup(77) is None
    assert pool.num_evictions >= 1
    pool.verify()


@pytest.mark.parametrize("name,overrides", CACHING)
def test_duplicate_key_stays_findable_until_both_twins_evicted(name, overrides):
    # Two requests computed the same prefix at once: two blocks with one key.
    pool = make_pool(name, 2, overrides)
    a, b = pool.allocate(2)
    pool.cache(a, 5, 0, None)
    pool.cache(b, 5, 0, None)
    assert pool.lookup(5) in (a, b)
    pool.release([a])
    pool.release([b])
    pool.verify()
    (x,) = pool.allocate(1)
    assert x in (a, b)
    survivor = b if x is a else a
    assert pool.lookup(5) is survivor
    (y,) = pool.allocate(1)
    assert y is survivor and pool.lookup(5) is None
    pool.verify()


def test_none_policy_reuses_in_release_order():
    pool = make_pool("none", 4)
    blocks = pool.allocate(4)
    pool.release([blocks[2], blocks[0]])
    pool.release([blocks[3]])
    got = [b.block_id for b in pool.allocate(3)]
    assert got == [2, 0, 3]
