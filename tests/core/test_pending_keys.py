"""Decode blocks keyed lazily (apcsim.core.pending_keys) decide exactly what keying them at each
block boundary decides: same plans (block tables included), same hits, same metrics, even when
requests quote the output of requests still decoding and when two requests fill equal blocks."""

from __future__ import annotations

import numpy as np
import pytest

from apcsim.core.cache_config import CacheConfig
from apcsim.core.content_ids import ContentIds
from apcsim.core.pending_keys import PendingKeys, _Entry, _Parked
from apcsim.core.request import RequestSpec
from apcsim.sim.simulator import Simulation
from apcsim.workloads.mooncake import TablePrompt
from policies.eviction.lru import LRUPolicy
from tests.helpers.serving import COST, build_scheduler

BS = 4


def quoting_specs(seed: int) -> list[RequestSpec]:
    """Leaders with fixed answers; quoters that arrive while a leader decodes and whose prompt is
    the leader's prompt, part of its answer (up to past what it has decoded) and a tail; pairs of
    identical requests (equal prompts and answers: their decode blocks have equal keys)."""
    rng = np.random.default_rng(seed)
    specs: list[RequestSpec] = []
    t = 0.0
    for i in range(6):
        prompt = rng.integers(0, 1000, int(rng.integers(3, 30)), dtype=np.int32)
        answer = rng.integers(0, 1000, int(rng.integers(20, 60)), dtype=np.int32)
        copies = 2 if i % 3 == 0 else 1
        for c in range(copies):
            specs.append(RequestSpec(f"lead{i}.{c}", prompt, len(answer), arrival_time=t, output_token_ids=answer))
        for j in range(3):
            quoted = int(rng.integers(1, len(answer)))
            tail = rng.integers(0, 1000, int(rng.integers(1, 10)), dtype=np.int32)
            specs.append(RequestSpec(f"quote{i}.{j}", np.concatenate([prompt, answer[:quoted], tail]),
                                     int(rng.integers(1, 20)), arrival_time=t + 0.0005 * (j + 1) * quoted))
        t += float(rng.exponential(0.01))
    return specs


# (budget, max_num_seqs, prefill cap): the last two make quoters prefill no faster than leaders
# decode, so a leader fills blocks that a quoter caches a step later.
BUDGETS = [(16, 4, 0), (4, 4, 0), (16, 4, 1)]


def family_specs(seed: int) -> list[RequestSpec]:
    """Prompts from a few shared prefixes (two tenants), each with its own tail or none, several
    sent twice at once (equal keys computed together: twins), arriving faster than they are
    served, so that a small pool evicts and preempts all the time."""
    rng = np.random.default_rng(seed)
    stems = [rng.integers(0, 1000, int(rng.integers(2, 40)), dtype=np.int32) for _ in range(4)]
    specs: list[RequestSpec] = []
    t = 0.0
    for i in range(40):
        stem = stems[int(rng.integers(0, len(stems)))][: int(rng.integers(1, 41))]
        prompt = np.concatenate([stem, rng.integers(0, 1000, int(rng.integers(0, 12)), dtype=np.int32)])
        salt = "b" if rng.random() < 0.2 else None
        for c in range(2 if rng.random() < 0.25 else 1):
            specs.append(RequestSpec(f"f{i}.{c}", prompt, int(rng.integers(1, 30)), arrival_time=t, cache_salt=salt))
        t += float(rng.exponential(0.002))
    return specs


def content_family_specs(seed: int) -> list[RequestSpec]:
    """family_specs with prompts named by content ids (8-token ids: two blocks each) and read
    lazily from a token table, on half of them a tail past the ids (a part of the stem's own, so
    that later requests hit it too): a parked range then goes on with its request's content
    chain where the keys made before the free stop, and past the ids with tokens."""
    rng = np.random.default_rng(seed)
    span = 2 * BS
    table = rng.integers(0, 1000, (12, span), dtype=np.int32)
    stems = [rng.integers(0, len(table), int(rng.integers(2, 9))) for _ in range(4)]
    tails = [rng.integers(0, 1000, 12, dtype=np.int32) for _ in stems]
    specs: list[RequestSpec] = []
    t = 0.0
    for i in range(40):
        s = int(rng.integers(0, len(stems)))
        rows = stems[s][: int(rng.integers(1, 9))]
        full = rng.random() < 0.5
        covered = len(rows) * span if full else int(rng.integers(1, len(rows) * span + 1))
        tail = tails[s][: int(rng.integers(1, 13))] if full else None
        ids = ContentIds(rows.astype(np.int64), span, covered, "test-table")
        prompt = TablePrompt(table.__getitem__, ids, tail)
        salt = "b" if rng.random() < 0.2 else None
        for c in range(2 if rng.random() < 0.25 else 1):
            specs.append(RequestSpec(f"c{i}.{c}", prompt, int(rng.integers(1, 30)), arrival_time=t, cache_salt=salt,
                                     content_ids=ids))
        t += float(rng.exponential(0.002))
    return specs


def run(specs, eviction: str, lazy: bool, num_blocks: int, budget: tuple[int, int, int], cache: CacheConfig | None = None):
    tokens, seqs, cap = budget
    sched = build_scheduler(eviction, num_blocks=num_blocks, bs=BS, max_num_batched_tokens=tokens, max_num_seqs=seqs,
                            long_prefill_token_threshold=cap, cache=cache)
    sched.pending_keys.enabled = lazy
    steps = []

    def on_step(plan, result):
        steps.append((plan.step, [(c.request_id, c.num_new_tokens, c.num_context_tokens, c.block_ids)
                                  for c in plan.chunks], plan.num_cohort, plan.preempted,
                      [r.request_id for r in result.finished]))

    sim = Simulation(specs, sched, COST, on_step=on_step, verify_every_step=True)
    summary = sim.run().summary(sim.requests)
    hits = [r.num_cached_tokens for r in sim.requests]
    return steps, summary, hits, sched


@pytest.mark.parametrize("eviction", ["lru", "slru"])  # the policies it is on for
@pytest.mark.parametrize("num_blocks", [48, 400])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_decode_keys_decide_as_eager_ones(eviction, num_blocks, budget, seed):
    specs = quoting_specs(seed)
    eager = run(specs, eviction, False, num_blocks, budget)
    lazy = run(specs, eviction, True, num_blocks, budget)
    assert lazy[3]._lazy and not eager[3]._lazy
    assert lazy[:3] == eager[:3]
    assert sum(lazy[2]) > 0  # quoters hit the leaders' answers


@pytest.mark.parametrize("eviction", ["lru", "slru"])
@pytest.mark.parametrize("keyless_first", [True, False])
@pytest.mark.parametrize("num_blocks", [24, 60])  # 24: preemptions; both: constant eviction
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("make_specs", [family_specs, content_family_specs])
def test_pending_prompt_blocks_and_freed_ones_decide_as_eager_ones(make_specs, eviction, keyless_first, num_blocks, seed):
    specs = make_specs(seed)
    cache = CacheConfig(free_keyless_first=keyless_first)
    eager = run(specs, eviction, False, num_blocks, (32, 8, 0), cache)
    lazy = run(specs, eviction, True, num_blocks, (32, 8, 0), cache)
    assert lazy[3].kv.use_content_keys
    assert lazy[:3] == eager[:3]
    assert sum(lazy[2]) > 0 and lazy[1]["num_evictions"] > 0
    if num_blocks == 24:
        assert lazy[1]["num_preemptions"] > 0


def test_the_quoting_runs_reach_pending_blocks(monkeypatch):
    """The runs above exercise every path: quoters' lookups stop at a leader's pending blocks, a
    quoter keys a block under a pending leader's parent, freed requests' pending blocks are
    flushed where they stand in the free queue (and hit there, out of their keyed run), and
    evicted unkeyed to the last."""
    counts = {"lookup": 0, "caching": 0, "parked": 0, "evicted": 0, "run_hit": 0}
    cause = []

    def within(name, fn):
        def wrapped(self, *args):
            cause.append(name)
            try:
                return fn(self, *args)
            finally:
                cause.pop()
        return wrapped

    flush, gone = PendingKeys._flush, _Entry.gone

    def counting_flush(self, entry):
        if cause:
            counts[cause[-1]] += 1
        counts["parked"] += entry.blocks is not None
        flush(self, entry)

    def counting_gone(self):
        counts["evicted"] += 1
        gone(self)

    acquire = LRUPolicy.on_acquire

    def counting_acquire(self, block):
        counts["run_hit"] += block in self._in_run
        acquire(self, block)

    monkeypatch.setattr(LRUPolicy, "on_acquire", counting_acquire)
    monkeypatch.setattr(PendingKeys, "settle_lookup", within("lookup", PendingKeys.settle_lookup))
    monkeypatch.setattr(PendingKeys, "defer", within("caching", PendingKeys.defer))
    monkeypatch.setattr(PendingKeys, "_flush", counting_flush)
    monkeypatch.setattr(_Entry, "gone", counting_gone)
    for seed in range(6):
        for budget in BUDGETS:
            for num_blocks in (48, 400):
                run(quoting_specs(seed), "lru", True, num_blocks, budget)
    assert all(counts.values()), counts


def test_off_for_a_host_tier_or_an_insert_hook():
    sched = build_scheduler("lru", num_blocks=32, bs=BS)
    assert sched.pending_keys.usable(None)
    assert not sched.pending_keys.usable(object())
    sched.kv.on_cached = lambda blocks: None
    assert not sched.pending_keys.usable(None)


def test_parked_ranges_go_on_with_their_content_chain(monkeypatch):
    """The content runs above flush parked ranges whose keys go on from the request's content
    chain (keys made before the free stop short of the ids' end), and past it from tokens."""
    used = {"chain": 0, "chain then tokens": 0}
    keys = _Parked.keys

    def counting_keys(self, n, block_size, algo):
        out = keys(self, n, block_size, algo)
        if self.chain is not None and n > len(self.known):
            used["chain"] += 1
            used["chain then tokens"] += self.start + n > self.chain.num_blocks
        return out

    monkeypatch.setattr(_Parked, "keys", counting_keys)
    for seed in range(4):
        for num_blocks in (24, 60):
            run(content_family_specs(seed), "lru", True, num_blocks, (32, 8, 0), CacheConfig(free_keyless_first=True))
    assert all(used.values()), used
