"""The LRU policy against an independent reference prefix cache with vLLM V1's semantics.

The reference below is written from the documented rules only (DESIGN.md, "Prefix-caching
semantics"): only full blocks are cached, under a key that names the whole prefix (and the
tenant's salt); a lookup walks the prompt's full blocks and stops at the first miss; hits are
capped so that at least the last prompt token is computed; never-used blocks are handed out
first, lowest id first; freed blocks join the tail of one free queue in reverse order (a chain's
tail first) and reuse takes its head; a hit takes its block out of the queue; a key held by
several blocks is found in the block that got it first. With `keyless_first` (vLLM 0.32), freed
blocks without a key go to the queue's front instead, the first freed first, ahead of the
never-used ones.

Requests are served one at a time, so the reference needs no scheduler: the real core is driven
either through the KVCacheManager verbs directly (prompt only, in random chunks) or through the
whole simulator with max_concurrency=1 (prompt and generated tokens, chunked prefill).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apcsim.core.block_pool import BlockPool
from apcsim.core.cache_config import CacheConfig
from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.request import Request, RequestSpec, Status
from apcsim.sim.simulator import Simulation
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from policies.types import PolicyContext


class RefPrefixCache:
    """A tiny LRU prefix cache: a dict of keys and one recency-ordered free queue."""

    def __init__(self, num_blocks: int, block_size: int, caching: bool = True, keyless_first: bool = False) -> None:
        self.num_blocks = num_blocks
        self.bs = block_size
        self.caching = caching
        self.keyless_first = keyless_first
        self.front: list[int] = []  # keyless_first: freed keyless blocks, reused first (index 0 next)
        self.next_never = 0  # blocks [next_never, num_blocks) were never used
        self.free_queue: OrderedDict[int, None] = OrderedDict()  # head = reused next
        self.key_of: dict[int, object] = {}
        self.holders: dict[object, list[int]] = {}  # key -> blocks holding it, first cached first
        self.evictions = 0

    def serve(self, tokens: list[int], salt, total_tokens: int, tag) -> tuple[int, list[int]]:
        """One request alone: look up its prompt, take blocks for `total_tokens` tokens of KV,
        cache its full blocks, free it. Returns (hit tokens, its block ids)."""
        bs, p = self.bs, len(tokens)
        prompt_keys = [(salt, tuple(tokens[: (i + 1) * bs])) for i in range(p // bs)]
        hits: list[int] = []
        if self.caching:
            for key in prompt_keys[: (p - 1) // bs]:  # the last prompt token is always computed
                if not self.holders.get(key):
                    break
                hits.append(self.holders[key][0])
        for b in hits:
            del self.free_queue[b]
        need = -(-total_tokens // bs) - len(hits)
        assert need <= self.num_blocks - self.next_never + len(self.free_queue) + len(self.front), "trace does not fit"
        new: list[int] = []
        for _ in range(need):
            if self.front:
                b = self.front.pop(0)
            elif self.next_never < self.num_blocks:
                b = self.next_never
                self.next_never += 1
            else:
                b, _ = self.free_queue.popitem(last=False)
                key = self.key_of.pop(b, None)
                if key is not None:
                    self.holders[key].remove(b)
                    self.evictions += 1
            new.append(b)
        blocks = hits + new
        if self.caching:
            for i in range(len(hits), total_tokens // bs):
                # Blocks past the prompt's full blocks hold generated tokens: unique to this request.
                key = prompt_keys[i] if i < len(prompt_keys) else (tag, i)
                self.key_of[blocks[i]] = key
                self.holders.setdefault(key, []).append(blocks[i])
        keyless = []
        for b in reversed(blocks):
            if self.keyless_first and b not in self.key_of:
                keyless.append(b)
            else:
                self.free_queue[b] = None
        self.front[:0] = keyless
        return len(hits) * bs, blocks


def test_reference_sanity():
    # The reference itself, on the seed example's shape: a shared prefix hits, the cap holds.
    ref = RefPrefixCache(num_blocks=16, block_size=4)
    shared = list(range(8))
    assert ref.serve(shared + [100, 101], None, 10, "a")[0] == 0
    assert ref.serve(shared + [200, 201], None, 10, "b")[0] == 8
    assert ref.serve(shared, None, 8, "c")[0] == 4, "at least the last prompt token is computed"
    assert ref.serve(shared + [100], "t", 9, "d")[0] == 0, "another tenant's salt never hits"


def make_kv(policy: str, num_blocks: int, block_size: int, keyless_first: bool = False) -> KVCacheManager:
    entry = EVICTION_POLICIES[policy]
    ctx = PolicyContext(block_size=block_size, num_blocks=num_blocks, recompute_cost=lambda d: float(d + 1))
    pool = BlockPool(num_blocks, entry.cls(entry.config_cls(), ctx), free_keyless_first=keyless_first)
    return KVCacheManager(pool, block_size)


def spec(i: int, tokens, salt=None, output_len: int = 1) -> RequestSpec:
    return RequestSpec(f"r{i}", np.asarray(tokens, dtype=np.int32), output_len, cache_salt=salt)


@st.composite
def traces(draw):
    bs = draw(st.sampled_from([1, 2, 4, 8]))
    num_blocks = draw(st.integers(3, 20))
    alphabet = st.integers(0, 2)  # tiny: blocks coincide often, also by accident
    segments = [draw(st.lists(alphabet, min_size=1, max_size=3 * bs + 2)) for _ in range(4)]
    reqs = []
    for _ in range(draw(st.integers(1, 25))):
        parts = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
        tokens = [t for i in parts for t in segments[i]] + draw(st.lists(alphabet, max_size=bs + 1))
        tokens = tokens[: num_blocks * bs]
        salt = draw(st.sampled_from([None, None, None, "tenant-b"]))
        chunks = draw(st.lists(st.integers(1, 3 * bs), min_size=1, max_size=6))
        reqs.append((tokens, salt, chunks))
    return bs, num_blocks, reqs


@pytest.mark.parametrize("keyless_first", [False, True], ids=["keyless-tail", "keyless-first"])
@pytest.mark.parametrize("policy", ["lru", "none"])
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(trace=traces())
def test_kv_cache_manager_matches_reference_one_request_at_a_time(policy, keyless_first, trace):
    bs, num_blocks, reqs = trace
    kv = make_kv(policy, num_blocks, bs, keyless_first)
    ref = RefPrefixCache(num_blocks, bs, caching=(policy != "none"), keyless_first=keyless_first)
    for i, (tokens, salt, chunks) in enumerate(reqs):
        req = Request(spec=spec(i, tokens, salt), index=i)
        computed = kv.get_computed_blocks(req)
        want_hit, want_blocks = ref.serve(tokens, salt, len(tokens), ("req", i))
        assert len(computed) * bs == want_hit, f"request {i}: hit tokens"
        # Prefill in chunks, as chunked prefill does; the first chunk takes the hits.
        first = True
        k = 0
        while first or req.num_computed_tokens < len(tokens):
            left = len(tokens) - req.num_computed_tokens - (len(computed) * bs if first else 0)
            n = min(chunks[k % len(chunks)], left)
            k += 1
            assert kv.allocate_slots(req, n, computed if first else None), f"request {i} alone must fit"
            first = False
            req.num_computed_tokens += n
        assert req.num_computed_tokens == len(tokens)
        assert req.block_ids == want_blocks, f"request {i}: block table"
        kv.pool.verify()
        kv.free(req)
        kv.pool.verify()
    assert kv.pool.num_evictions == ref.evictions


def _random_trace(rng: np.random.Generator, bs: int, num_blocks: int, n: int):
    segments = [rng.integers(0, 3, int(rng.integers(1, 4 * bs + 3))).tolist() for _ in range(5)]
    out = []
    for _ in range(n):
        parts = rng.integers(0, 5, int(rng.integers(1, 4)))
        tokens = [t for i in parts for t in segments[i]] + rng.integers(0, 3, int(rng.integers(0, bs + 2))).tolist()
        output_len = int(rng.integers(1, 2 * bs + 4))
        tokens = tokens[: max(1, num_blocks * bs - output_len)]  # prompt + output fit the cache
        salt = "tenant-b" if rng.random() < 0.2 else None
        out.append((tokens, salt, output_len))
    return out


@pytest.mark.parametrize("keyless_first", [False, True], ids=["keyless-tail", "keyless-first"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULING_POLICIES))
def test_simulator_serving_one_at_a_time_matches_reference(scheduler, keyless_first, cost_model, scheduler_factory):
    """The whole serving core (scheduler, lazy decode, chunked prefill, simulator) with
    max_concurrency=1: every request's prefix hit equals the reference's, generated tokens'
    blocks included (they fill the cache and get evicted like any other)."""
    total_hits = total_evictions = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        bs = int(rng.choice([1, 2, 4, 8]))
        num_blocks = int(rng.integers(6, 24))
        trace = _random_trace(rng, bs, num_blocks, 20)
        budget = int(rng.integers(8, 40))
        # The reference has no null block: give the core the same number of usable blocks.
        cache = CacheConfig(null_block=False, free_keyless_first=keyless_first)
        sched = scheduler_factory("lru", scheduler, num_blocks=num_blocks, bs=bs, cache=cache,
                                  max_num_batched_tokens=budget, max_num_seqs=4, chunked_prefill=True)
        specs = [spec(i, t, salt, out) for i, (t, salt, out) in enumerate(trace)]
        sim = Simulation(specs, sched, cost_model, max_concurrency=1, output_seed=seed, verify_every_step=True)
        sim.run()
        ref = RefPrefixCache(num_blocks, bs, keyless_first=keyless_first)
        for i, ((tokens, salt, out), req) in enumerate(zip(trace, sim.requests)):
            assert req.status is Status.FINISHED, (seed, i, req.rejected_reason)
            assert req.num_preemptions == 0
            want, _ = ref.serve(tokens, salt, len(tokens) + out - 1, ("req", i))
            assert req.num_cached_tokens == want, f"seed {seed} request {i}: {req.num_cached_tokens} != {want}"
            total_hits += want
        assert sched.kv.pool.num_evictions == ref.evictions, f"seed {seed}"
        total_evictions += ref.evictions
    assert total_hits > 0 and total_evictions > 0, "the traces must exercise hits and evictions"


@pytest.mark.parametrize("policy", ["lru", "s3fifo", "lfu"])
def test_a_waiting_requests_memoised_lookup_equals_a_fresh_walk(policy, monkeypatch):
    """`get_computed_blocks` memoises a waiting request's lookup between calls (it is asked every
    step while the request waits). Whatever serving others does in between (hits, inserts,
    evictions), the memo's answer must be a fresh walk's. A lookup that found nothing is not
    walked again after evictions alone: nothing can start to hit without an insert."""
    bs, num_blocks = 2, 12
    rng = np.random.default_rng(0)
    kv = make_kv(policy, num_blocks, bs)
    segments = [rng.integers(0, 3, int(rng.integers(1, 7))).tolist() for _ in range(4)]
    walks = []
    real_walk = KVCacheManager._walk
    monkeypatch.setattr(KVCacheManager, "_walk", lambda self, req, hits, n: (walks.append(req), real_walk(self, req, hits, n))[1])
    waiting = [Request(spec=spec(100 + j, [t for i in rng.integers(0, 4, 3) for t in segments[i]] + [j]), index=100 + j)
               for j in range(4)]
    served = stood = 0
    for step in range(300):
        for w in waiting:
            memo_before = w.hit_memo
            walks.clear()
            got = kv.get_computed_blocks(w)
            if memo_before is not None and not memo_before[2] and memo_before[1] == kv.pool.num_inserts:
                assert not walks, f"step {step}: an empty lookup was walked again without an insert"
                stood += 1
            fresh = Request(spec=w.spec, index=w.index)
            assert got == kv.get_computed_blocks(fresh), f"step {step}: {w.request_id}'s memoised lookup"
        # Serve one request alone: a hit, new blocks (maybe evicting), its full blocks keyed, freed.
        tokens = [t for i in rng.integers(0, 4, int(rng.integers(1, 4))) for t in segments[i]][: num_blocks * bs]
        r = Request(spec=spec(served, tokens), index=served)
        served += 1
        computed = kv.get_computed_blocks(r)
        assert kv.allocate_slots(r, len(tokens) - len(computed) * bs, computed)
        kv.free(r)
        kv.pool.verify()
    assert kv.pool.num_evictions > 50 and kv.pool.num_inserts > 50 and stood > 0
