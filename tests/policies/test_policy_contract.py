"""The policy contracts (policies/eviction/base.py, policies/scheduling/base.py), run against every
registered policy, and each policy's own documented ordering rule.

Eviction policies are driven through a real BlockPool, which calls their hooks as the contract
says; the tests observe them through `victim()`, `len()` and `in` only.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apcsim.core.block_pool import BlockPool
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from policies.types import Clock
from tests.helpers.serving import make_pool, roofline_recompute


def caching_variants() -> list:
    out = []
    for name in sorted(EVICTION_POLICIES):
        entry = EVICTION_POLICIES[name]
        if not entry.cls.enables_caching:
            continue
        out.append(pytest.param(name, {}, id=name))
        if "leaves_only" in {f.name for f in dataclasses.fields(entry.config_cls)}:
            out.append(pytest.param(name, {"leaves_only": False}, id=f"{name}-any-node"))
    return out


def leaves_only_policies() -> list:
    return [name for name in sorted(EVICTION_POLICIES)
            if "leaves_only" in {f.name for f in dataclasses.fields(EVICTION_POLICIES[name].config_cls)}
            and EVICTION_POLICIES[name].config_cls().leaves_only]


def cached_block(pool: BlockPool, key: int, depth: int = 0, parent: int | None = None):
    """One block allocated, given `key` (parent key made up when depth > 0) and kept in use."""
    (b,) = pool.allocate(1)
    if depth > 0 and parent is None:
        parent = -(key + 1)  # a parent key no block holds: the block is a leaf at `depth`
    pool.cache(b, key, depth, parent)
    return b


def evict_order(pool: BlockPool, n: int) -> list:
    """Allocate n blocks one at a time once nothing is never-used; the victims' ids in order."""
    out = []
    for _ in range(n):
        v = pool.policy.victim()
        (got,) = pool.allocate(1)
        assert got is v, "allocate must take the block victim() named"
        out.append(got.block_id)
    pool.verify()
    return out


def test_there_are_policies_to_check():
    assert {"lru", "lfu", "cost_aware"} <= {p.values[0] for p in caching_variants()}
    assert {"lfu", "cost_aware"} <= set(leaves_only_policies())
    assert {"fcfs", "priority"} <= set(SCHEDULING_POLICIES)


# -- the eviction contract, every caching policy ---------------------------------------------------
@pytest.mark.parametrize("name,overrides", caching_variants())
def test_len_and_membership_track_the_hooks(name, overrides):
    pool = make_pool(name, 6, overrides)
    pol = pool.policy
    assert len(pol) == 0
    a, b, c, d = pool.allocate(4)
    assert len(pol) == 0, "never-used and in-use blocks are not evictable"
    pool.cache(a, 1, 0, None)
    pool.cache(b, 2, 1, 1)
    pool.release([b, a])
    assert len(pol) == 2 and a in pol and b in pol and c not in pol
    pool.release([d, c])  # keyless blocks are evictable too
    assert len(pol) == 4 and c in pol and d in pol
    pool.touch([pool.lookup(1)])  # on_acquire: a leaves the set, keeping its key
    assert len(pol) == 3 and a not in pol and a.key == 1 and a.ref_cnt == 1
    assert pool.num_free == 2 + 3
    pool.allocate(2)  # the never-used ones: nothing evicted
    assert len(pol) == 3
    v = pol.victim()
    assert v in pol and v.ref_cnt == 0 and v is not a
    assert pol.victim() is v and len(pol) == 3, "victim() only peeks"
    (got,) = pool.allocate(1)
    assert got is v and v not in pol and len(pol) == 2
    pool.release([a])
    assert len(pol) == 3 and a in pol
    pool.verify()


@pytest.mark.parametrize("name,overrides", caching_variants())
@pytest.mark.parametrize("seed", range(4))
def test_victim_is_always_an_evictable_block(name, overrides, seed):
    """A random life of a pool: every victim() is a member with ref_cnt 0 among the blocks handed
    out and since released, and len() is the size of that set."""
    rng = random.Random(seed)
    pool = make_pool(name, 12, overrides)
    pol = pool.policy
    held: list[list] = []  # requests' blocks, chain order
    parent_of: dict[int, int | None] = {}  # key -> parent key
    next_key = 1
    ever: dict[int, object] = {}  # blocks handed out so far
    evictions = hits_taken = 0
    for _ in range(300):
        if rng.random() < 0.5 and pool.num_free:
            hits: list = []
            parent = None
            if rng.random() < 0.6:  # walk a cached chain from a root, as a lookup does
                for _depth in range(rng.randint(1, 4)):
                    cands = [k for k, p in parent_of.items() if p == parent and pool.lookup(k) is not None]
                    if not cands:
                        break
                    parent = rng.choice(cands)
                    hits.append(pool.lookup(parent))
                hits_taken += sum(1 for b in hits if b.ref_cnt == 0)
                pool.touch(hits)
            k = min(rng.randint(1, 3), pool.num_free)  # the hits may have taken the last free ones
            evictions += max(0, k - (pool.num_free - len(pol)))
            new = pool.allocate(k) if k else []
            ever.update((b.block_id, b) for b in new)
            for j, b in enumerate(new[: rng.randint(0, len(new))]):
                twins = [key for key, p in parent_of.items() if p == parent]
                if twins and rng.random() < 0.3:
                    key = rng.choice(twins)  # another request computed the same block
                else:
                    key, next_key = next_key, next_key + 1
                parent_of[key] = parent
                pool.cache(b, key, len(hits) + j, parent)
                parent = key
            held.append(hits + new)
        elif held:
            chain = held.pop(rng.randrange(len(held)))
            pool.release(list(reversed(chain)))
        evictable = [b for b in ever.values() if b.ref_cnt == 0]
        assert len(pol) == len(evictable)
        assert all(b in pol for b in evictable)
        assert not any(b in pol for b in ever.values() if b.ref_cnt > 0)
        if evictable:
            v = pol.victim()
            assert v in pol and v.ref_cnt == 0 and ever.get(v.block_id) is v
        pool.verify()
    assert evictions > 20 and hits_taken > 5, "the random life must exercise evictions and hits"


# -- leaves first ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", leaves_only_policies())
def test_leaves_only_never_evicts_a_parent_while_a_leaf_is_evictable(name):
    # The parent is released before its child and so is older; cost-aware also finds it cheaper.
    # Leaves first means the child goes first all the same.
    for leaves_only, expect_first in ((True, "child"), (False, "parent")):
        pool = make_pool(name, 2, {"leaves_only": leaves_only})
        parent = cached_block(pool, 1)
        child = cached_block(pool, 2, depth=1, parent=1)
        assert parent.num_children == 1 and child.num_children == 0
        pool.release([parent])
        pool.release([child])
        first = pool.policy.victim()
        assert first is (child if expect_first == "child" else parent), (leaves_only, first)
        order = evict_order(pool, 2)
        expected = [child.block_id, parent.block_id] if leaves_only else [parent.block_id, child.block_id]
        assert order == expected


@pytest.mark.parametrize("name", leaves_only_policies())
def test_leaves_only_chain_goes_tail_to_head(name):
    pool = make_pool(name, 4)
    # A 4-block chain, released tail first, fills the pool.
    chain = [cached_block(pool, 10)]
    for d in range(1, 4):
        chain.append(cached_block(pool, 10 + d, depth=d, parent=10 + d - 1))
    pool.release(list(reversed(chain)))
    order = evict_order(pool, 1)
    assert order == [chain[-1].block_id], "only the chain's tail is a leaf"
    # The parent became a leaf when its child was evicted; it goes next, then its parent.
    assert evict_order(pool, 1) == [chain[2].block_id]
    assert evict_order(pool, 2) == [chain[1].block_id, chain[0].block_id]


@pytest.mark.parametrize("name", leaves_only_policies())
def test_leaves_only_falls_back_when_every_candidate_has_children(name):
    # A twin of a parent key holds a child in use: the evictable parent has a cached child and no
    # evictable block is a leaf. The pool must still be able to allocate.
    pool = make_pool(name, 2)
    parent = cached_block(pool, 1)
    child = cached_block(pool, 2, depth=1, parent=1)
    pool.release([parent])
    assert pool.num_free == 1 and parent.num_children == 1
    assert pool.policy.victim() is parent
    (got,) = pool.allocate(1)
    assert got is parent and pool.lookup(1) is None and pool.lookup(2) is child
    pool.verify()


# -- cost-aware --------------------------------------------------------------------------------
def test_cost_model_recompute_cost_grows_with_depth(cost_model):
    bs = 16
    costs = [cost_model.recompute_time(bs, d * bs) for d in range(6)]
    assert all(a < b for a, b in zip(costs, costs[1:]))


@pytest.mark.parametrize("leaves_only", [True, False])
def test_cost_aware_evicts_shallow_blocks_first_at_equal_frequency(leaves_only):
    pool = make_pool("cost_aware", 4, {"leaves_only": leaves_only}, cost=roofline_recompute(16), block_size=16)
    depths = [3, 0, 2, 1]  # released in this order: LRU would evict depth 3 first
    blocks = {d: cached_block(pool, 100 + d, depth=d) for d in depths}
    for d in depths:
        pool.release([blocks[d]])
    order = evict_order(pool, 4)
    assert order == [blocks[d].block_id for d in (0, 1, 2, 3)]


def test_cost_aware_keeps_the_more_frequently_hit_block_at_equal_depth():
    pool = make_pool("cost_aware", 2)
    hot = cached_block(pool, 1, depth=2)
    cold = cached_block(pool, 2, depth=2)
    pool.release([hot])
    for _ in range(2):
        pool.touch([pool.lookup(1)])
        pool.release([hot])
    pool.release([cold])  # released last, yet evicted first
    assert evict_order(pool, 2) == [cold.block_id, hot.block_id]


def test_cost_aware_ages_out_an_old_expensive_block():
    """GreedyDual: H = L + freq * cost(depth), L = H of the last victim. A depth-5 block (cost 6)
    released at L=0 has H=6; cold depth-0 blocks (cost 1) cycling through one slot get H = 1, 2,
    ... as L climbs, so the old block survives five evictions and is the sixth victim (the tie at
    H=6 goes to the block released earlier)."""
    pool = make_pool("cost_aware", 2)
    deep = cached_block(pool, 1, depth=5)
    pool.release([deep])
    key = 100
    cold = cached_block(pool, key)
    pool.release([cold])
    victims = []
    for _ in range(6):
        (b,) = pool.allocate(1)
        victims.append(b is deep)
        key += 1
        pool.cache(b, key, 0, None)
        pool.release([b])
    assert victims == [False] * 5 + [True]
    assert pool.lookup(1) is None


# -- LFU ---------------------------------------------------------------------------------------
def test_lfu_evicts_the_less_frequently_hit_block():
    pool = make_pool("lfu", 2)
    hot = cached_block(pool, 1)
    cold = cached_block(pool, 2)
    pool.release([hot])
    for _ in range(2):
        pool.touch([pool.lookup(1)])
        pool.release([hot])
    pool.release([cold])  # the most recently released: LRU would keep it
    assert pool.policy.victim() is cold
    assert evict_order(pool, 2) == [cold.block_id, hot.block_id]


@pytest.mark.parametrize("leaves_only", [True, False])
def test_lfu_ties_go_to_the_earliest_released(leaves_only):
    for first, second in ((1, 2), (2, 1)):
        pool = make_pool("lfu", 2, {"leaves_only": leaves_only})
        blocks = {1: cached_block(pool, 1), 2: cached_block(pool, 2)}
        pool.release([blocks[first]])
        pool.release([blocks[second]])
        assert evict_order(pool, 2) == [blocks[first].block_id, blocks[second].block_id]


@pytest.mark.parametrize("leaves_only", [True, False])
def test_lfu_ties_among_blocks_released_together_go_tail_first(leaves_only):
    pool = make_pool("lfu", 3, {"leaves_only": leaves_only})
    a = cached_block(pool, 1)
    b = cached_block(pool, 2, depth=1, parent=1)
    c = cached_block(pool, 3, depth=2, parent=2)
    pool.release([c, b, a])  # as the KV cache manager frees a request: tail first
    assert evict_order(pool, 3) == [c.block_id, b.block_id, a.block_id]


def test_lfu_a_parent_that_becomes_a_leaf_keeps_its_release_order():
    """Leaves first, ties by release: a chain [a, b] released together before an unrelated z, all
    at frequency 1. b is the only leaf of the chain, so it goes first; then a (released before z)
    must go before z, which is LRU's order (vLLM frees the chain before z arrives in the queue)."""
    pool = make_pool("lfu", 3)
    a = cached_block(pool, 1)
    b = cached_block(pool, 2, depth=1, parent=1)
    pool.release([b, a])
    z = cached_block(pool, 3)
    pool.release([z])
    assert evict_order(pool, 3) == [b.block_id, a.block_id, z.block_id]


@pytest.mark.parametrize("freq", [2, 5])
def test_lfu_aging_lets_an_old_hot_block_go(freq):
    """LFU-DA: key = frequency + L at release, L = key of the last victim. A block hit to
    frequency f at L=0 has key f; cold blocks cycling through one slot get keys 1, 2, ...; the
    hot block survives f-1 evictions and is the f-th victim (the tie at f goes to the block
    released earlier). Plain LFU would keep it forever."""
    pool = make_pool("lfu", 2)
    hot = cached_block(pool, 1)
    pool.release([hot])
    for _ in range(freq - 1):
        pool.touch([pool.lookup(1)])
        pool.release([hot])
    key = 100
    cold = cached_block(pool, key)
    pool.release([cold])
    victims = []
    for _ in range(freq):
        (b,) = pool.allocate(1)
        victims.append(b is hot)
        key += 1
        pool.cache(b, key, 0, None)
        pool.release([b])
    assert victims == [False] * (freq - 1) + [True]
    assert pool.lookup(1) is None and pool.lookup(key) is not None


# -- scheduling policies -------------------------------------------------------------------------
class _Req:
    def __init__(self, name: str, priority: int = 0, arrival_time: float = 0.0, admit_seq: int = -1,
                 num_tokens: int = 64, keys: tuple = (), cached: int = 0) -> None:
        self.name = name
        self._priority = priority
        self.arrival_time = arrival_time
        self.admit_seq = admit_seq
        self.num_tokens = num_tokens
        self.block_keys = list(keys)
        self.cached = cached  # leading blocks "in the cache" (what the probe reports)

    @property
    def priority(self) -> int:
        return self._priority

    def __repr__(self) -> str:
        return f"R({self.name}, p={self._priority}, t={self.arrival_time}, seq={self.admit_seq})"


def make_sched_policy(name: str, clock: Clock | None = None, block_size: int = 4, **cfg):
    entry = SCHEDULING_POLICIES[name]
    pol = entry.cls(entry.config_cls(**cfg))
    pol.bind(lambda r: r.cached, clock or Clock(), block_size)
    return pol


@pytest.mark.parametrize("name", sorted(SCHEDULING_POLICIES))
def test_scheduling_queue_contract(name):
    pol = make_sched_policy(name)
    assert len(pol) == 0
    reqs = [_Req(f"r{i}", 0, float(i)) for i in range(4)]
    for r in reqs:
        pol.add(r)
    assert len(pol) == 4 and set(pol) == set(reqs)
    assert pol.peek() is pol.peek() is reqs[0]
    assert pol.pop() is reqs[0] and len(pol) == 3
    for i, r in enumerate(reqs):
        r.admit_seq = i
    assert pol.victim(reqs) is reqs[-1], "equal priorities: the latest request is the victim"


def test_fcfs_serves_in_arrival_order_and_resumes_preempted_first():
    pol = make_sched_policy("fcfs")
    reqs = [_Req(f"r{i}", priority=(7 * i) % 3, arrival_time=float(i)) for i in range(5)]
    for r in reqs:
        pol.add(r)
    assert list(pol) == reqs
    first = pol.pop()
    assert first is reqs[0]
    pol.readd_preempted(first)  # it was admitted earliest: back to the head
    assert [pol.pop() for _ in range(5)] == reqs
    running = [_Req("a", 5, 0.0, 0), _Req("b", 0, 1.0, 1), _Req("c", 9, 2.0, 2)]
    assert make_sched_policy("fcfs").victim(running) is running[-1], "FCFS preempts the last admitted"


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), min_size=1, max_size=25))
def test_priority_order_lower_value_first_ties_by_arrival(entries):
    pol = make_sched_policy("priority")
    reqs = [_Req(f"r{i}", p, float(t)) for i, (p, t) in enumerate(entries)]
    for r in reqs:
        pol.add(r)
    expected = sorted(reqs, key=lambda r: (r.priority, r.arrival_time, int(r.name[1:])))
    assert list(pol) == expected
    assert pol.peek() is expected[0]
    assert [pol.pop() for _ in range(len(reqs))] == expected
    assert len(pol) == 0


def test_priority_preempted_request_goes_back_by_priority_and_arrival():
    pol = make_sched_policy("priority")
    early = _Req("early", 1, 0.0)
    pol.add(early)
    assert pol.pop() is early
    later_same = _Req("later_same", 1, 5.0)
    urgent = _Req("urgent", 0, 9.0)
    pol.add(later_same)
    pol.add(urgent)
    pol.readd_preempted(early)
    assert [pol.pop() for _ in range(3)] == [urgent, early, later_same]


def test_priority_preempted_request_keeps_its_arrival_order_among_equal_timestamps():
    pol = make_sched_policy("priority")
    reqs = [_Req(f"r{i}", 0, 0.0) for i in range(3)]  # one burst: equal timestamps
    for r in reqs:
        pol.add(r)
    first = pol.pop()
    assert first is reqs[0]
    pol.readd_preempted(first)
    assert [pol.pop() for _ in range(3)] == reqs


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=12))
def test_priority_victim_is_lowest_priority_latest(entries):
    """vLLM's rule: max(running, key=(priority, arrival_time)); of equals, the first in running order."""
    running = [_Req(f"r{i}", p, float(t), admit_seq=i) for i, (p, t) in enumerate(entries)]
    v = make_sched_policy("priority").victim(running)
    top = max(r.priority for r in running)
    worst = [r for r in running if r.priority == top]
    latest = max(r.arrival_time for r in worst)
    assert v.priority == top and v.arrival_time == latest
    assert v is [r for r in worst if r.arrival_time == latest][0]
