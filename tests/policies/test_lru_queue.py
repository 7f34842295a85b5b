"""The LRU's list-with-holes queue (policies/eviction/lru.py) against an OrderedDict model of
vLLM's free queue: random releases, hits, batch and single evictions, with both compactions
forced often, must give the same victims in the same order."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

import policies.eviction.lru as lru_mod
from policies.eviction.lru import LRUConfig, LRUPolicy
from policies.types import Block, PolicyContext


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("compact_at", [2, 7, 4096])
def test_lru_queue_matches_an_ordered_dict(seed, compact_at, monkeypatch):
    monkeypatch.setattr(lru_mod, "_COMPACT_AT", compact_at)
    rng = random.Random(seed)
    blocks = [Block(i) for i in range(60)]
    policy = LRUPolicy(LRUConfig(), PolicyContext(block_size=4, num_blocks=len(blocks), recompute_cost=lambda d: 1.0))
    model: OrderedDict[int, Block] = OrderedDict()
    held = list(blocks)  # not in the queue (ref_cnt 1)
    for b in held:
        b.ref_cnt = 1
    compactions = 0
    for _ in range(600):
        op = rng.random()
        if op < 0.35 and held:  # release a batch, in the order given
            batch = rng.sample(held, rng.randint(1, min(len(held), 12)))
            for b in batch:
                b.ref_cnt = 0
                held.remove(b)
                model[b.block_id] = b
            if len(batch) == 1 and rng.random() < 0.5:
                policy.on_release(batch[0])
            else:
                policy.on_release_many(batch)
        elif op < 0.6 and model:  # a hit takes a queued block
            b = model.pop(rng.choice(list(model)))
            before = policy._compactions
            policy.on_acquire(b)
            compactions += policy._compactions != before
            b.ref_cnt = 1
            held.append(b)
        elif op < 0.9 and model:  # allocation takes the n oldest
            n = rng.randint(1, len(model))
            want = [model.popitem(last=False)[1] for _ in range(n)]
            assert policy.evict(n) == want
            for b in want:
                b.ref_cnt = 1
                held.append(b)
        elif model:  # one at a time, as a tree-using pool would
            v = policy.victim()
            assert v is next(iter(model.values()))
            policy.on_evict(v)
            del model[v.block_id]
            v.ref_cnt = 1
            held.append(v)
        assert len(policy) == len(model)
        assert all((b in policy) == (b.block_id in model) for b in blocks)
        policy.verify()
    if compact_at == 2:
        assert compactions > 0, "the hole compaction never ran"


def test_evicting_more_than_queued_is_an_error():
    policy = LRUPolicy(LRUConfig(), PolicyContext(block_size=4, num_blocks=2, recompute_cost=lambda d: 1.0))
    policy.on_release(Block(0))
    with pytest.raises(IndexError):
        policy.evict(2)


def test_verify_catches_a_broken_queue():
    """verify() must fail on the two ways the dead-entry bookkeeping can go wrong."""
    ctx = PolicyContext(block_size=4, num_blocks=3, recompute_cost=lambda d: 1.0)
    twice = LRUPolicy(LRUConfig(), ctx)
    a, b = Block(0), Block(1)
    twice.on_release_many([a, b, a])  # `a` live twice: released again without a hit
    with pytest.raises(AssertionError, match="live twice"):
        twice.verify()
    overcounted = LRUPolicy(LRUConfig(), ctx)
    overcounted.on_release(a)
    overcounted.on_acquire(a)
    overcounted._dead[a] += 1  # more dead entries than the queue holds
    with pytest.raises(AssertionError, match="dead entries"):
        overcounted.verify()
