"""The LRU's list-with-holes queue (policies/eviction/lru.py) against an OrderedDict model of
vLLM's free queue: random releases, hits, batch and single evictions, with both compactions
forced often, must give the same victims in the same order; with runs (parked ranges entering
as one entry, keyed later) mixed in, too."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

import policies.eviction.lru as lru_mod
from policies.eviction.lru import LRUConfig, LRUPolicy
from policies.types import Block, BlockRun, PolicyContext


def _evict_one(policy: LRUPolicy, model: OrderedDict, held: list[Block]) -> Block:
    """victim() + on_evict(), as a tree-using pool takes blocks, checked against the model."""
    v = policy.victim()
    assert v is next(iter(model.values()))
    policy.on_evict(v)
    del model[v.block_id]
    v.ref_cnt = 1
    held.append(v)
    return v


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
            _evict_one(policy, model, held)
        assert len(policy) == len(model)
        assert all((b in policy) == (b.block_id in model) for b in blocks)
        policy.verify()
    if compact_at == 2:
        assert compactions > 0, "the hole compaction never ran"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("compact_at", [2, 7, 4096])
def test_lru_queue_with_runs_matches_an_ordered_dict(seed, compact_at, monkeypatch):
    """Runs enter as one entry each and leave block by block from the head; until keyed their
    blocks cannot be hit (and keep ref_cnt 1, as the pool leaves them); keyed, a hit may take
    any of them. `evict_ids` gives the victims' ids and names those that did not come out of an
    unkeyed run."""
    monkeypatch.setattr(lru_mod, "_COMPACT_AT", compact_at)
    rng = random.Random(seed)
    blocks = [Block(i) for i in range(80)]
    policy = LRUPolicy(LRUConfig(), PolicyContext(block_size=4, num_blocks=len(blocks), recompute_cost=lambda d: 1.0))
    model: OrderedDict[int, Block] = OrderedDict()
    in_unkeyed: dict[int, BlockRun] = {}  # queued members of runs not keyed yet
    unkeyed_runs: list[BlockRun] = []
    held = list(blocks)
    for b in held:
        b.ref_cnt = 1
    seen = {"run_hits": 0, "split": 0, "from_runs": 0}
    for _ in range(900):
        op = rng.random()
        if op < 0.2 and held:  # a plain release
            batch = rng.sample(held, rng.randint(1, min(len(held), 8)))
            for b in batch:
                b.ref_cnt = 0
                held.remove(b)
                model[b.block_id] = b
            policy.on_release_many(batch)
        elif op < 0.38 and held:  # a parked range: one run, counts left as they are
            batch = rng.sample(held, rng.randint(1, min(len(held), 12)))
            run = BlockRun([b.block_id for b in batch], blocks)
            for b in batch:
                held.remove(b)
                model[b.block_id] = b
                in_unkeyed[b.block_id] = run
            policy.on_release_run(run)
            unkeyed_runs.append(run)
        elif op < 0.45 and unkeyed_runs:  # the pool keys a run where it stands
            run = unkeyed_runs.pop(rng.randrange(len(unkeyed_runs)))
            queued = run.queued()
            assert [b.block_id for b in queued] == [i for i, r in in_unkeyed.items() if r is run]
            for b in queued:
                b.ref_cnt = 0
                del in_unkeyed[b.block_id]
            policy.key_run(run)
        elif op < 0.62:  # a hit takes a queued block that has a key
            hittable = [i for i in model if i not in in_unkeyed]
            if not hittable:
                continue
            b = model.pop(rng.choice(hittable))
            seen["run_hits"] += b in policy._in_run
            policy.on_acquire(b)
            b.ref_cnt = 1
            held.append(b)
        elif op < 0.9 and model:  # allocation takes the n oldest
            n = rng.randint(1, len(model))
            want = [model.popitem(last=False)[1] for _ in range(n)]
            if rng.random() < 0.5:
                assert policy.evict(n) == want
            else:
                got, plain = policy.evict_ids(n)
                assert got == [b.block_id for b in want]
                assert plain == [b for b in want if b.block_id not in in_unkeyed]
                seen["split"] += 1
            seen["from_runs"] += sum(b.block_id in in_unkeyed for b in want)
            for b in want:
                in_unkeyed.pop(b.block_id, None)
                b.ref_cnt = 1
                held.append(b)
        elif model:  # one at a time, as a tree-using pool would
            in_unkeyed.pop(_evict_one(policy, model, held).block_id, None)
        unkeyed_runs = [r for r in unkeyed_runs if r.next < len(r.ids)]
        assert len(policy) == len(model)
        assert all((b in policy) == (b.block_id in model) for b in blocks)
        policy.verify()
    assert seen["run_hits"] and seen["split"] and seen["from_runs"], seen


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
