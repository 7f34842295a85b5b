"""Decode blocks keyed lazily (apcsim.core.pending_keys) decide exactly what keying them at each
block boundary decides: same plans (block tables included), same hits, same metrics, even when
requests quote the output of requests still decoding and when two requests fill equal blocks."""

from __future__ import annotations

import numpy as np
import pytest

from apcsim.core.pending_keys import PendingKeys
from apcsim.core.request import RequestSpec
from apcsim.sim.simulator import Simulation
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


def run(specs, eviction: str, lazy: bool, num_blocks: int, budget: tuple[int, int, int]):
    tokens, seqs, cap = budget
    sched = build_scheduler(eviction, num_blocks=num_blocks, bs=BS, max_num_batched_tokens=tokens, max_num_seqs=seqs,
                            long_prefill_token_threshold=cap)
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


def test_the_quoting_runs_reach_pending_blocks(monkeypatch):
    """The runs above exercise the flushes: quoters' lookups stop at a decoding leader's pending
    blocks, and a quoter's prefill caches a block under a pending leader's parent."""
    flushes = {"lookup": 0, "caching": 0}

    def counting(name, fn):
        def wrapped(self, *args):
            n = len(self._target)
            fn(self, *args)
            flushes[name] += n - len(self._target)
        return wrapped

    monkeypatch.setattr(PendingKeys, "settle_lookup", counting("lookup", PendingKeys.settle_lookup))
    monkeypatch.setattr(PendingKeys, "before_caching", counting("caching", PendingKeys.before_caching))
    for seed in range(6):
        for budget in BUDGETS:
            run(quoting_specs(seed), "lru", True, 400, budget)
    assert flushes["lookup"] > 0 and flushes["caching"] > 0


def test_off_for_a_host_tier_or_an_insert_hook():
    sched = build_scheduler("lru", num_blocks=32, bs=BS)
    assert sched.pending_keys.usable(None)
    assert not sched.pending_keys.usable(object())
    sched.kv.on_cached = lambda blocks: None
    assert not sched.pending_keys.usable(None)
