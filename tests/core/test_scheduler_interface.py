"""The scheduler contract: a plan is an immutable value that stays valid after `update()` (its
cohort listed later equals the cohort listed when it was planned), and a second scheduler written
against `SchedulerInterface` alone drives the simulator's serving loop to the end."""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np
import pytest

from apcsim.core.build import make_scheduler
from apcsim.core.interface import SchedulerInterface, SchedulerStats, StepResult
from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import Request, RequestSpec, Status
from apcsim.core.scheduler import Scheduler
from apcsim.hardware import HardwareConfig, ModelConfig
from apcsim.mathutil import cdiv as _cdiv
from apcsim.sim.cost_model import RooflineCostModel
from apcsim.sim.simulator import Simulation
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES

COST = RooflineCostModel(HardwareConfig(), ModelConfig())


def _specs(n: int, seed: int = 0) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 1000, 40, dtype=np.int32)
    out, t = [], 0.0
    for i in range(n):
        own = rng.integers(0, 1000, int(rng.integers(1, 60)), dtype=np.int32)
        t += float(rng.exponential(0.005))
        out.append(RequestSpec(f"q{i}", np.concatenate([shared, own]), int(rng.integers(1, 90)), arrival_time=t))
    return out


class _Watching:
    """The cost model, plus each plan and its cohort as listed at the moment it was planned."""

    def __init__(self) -> None:
        self.seen: list[tuple[StepPlan, tuple[ScheduledChunk, ...]]] = []

    def step_time(self, plan: StepPlan) -> float:
        self.seen.append((plan, plan.cohort_chunks()))
        return COST.step_time(plan)

    def __getattr__(self, name):
        return getattr(COST, name)


@pytest.mark.parametrize("num_blocks", [400, 60])  # 60: preemptions and skipped cohort members
def test_a_plan_stays_valid_after_update(num_blocks):
    bs = 4
    specs = _specs(150)
    sc = SCHEDULING_POLICIES["fcfs"].config_cls(max_num_batched_tokens=128, max_num_seqs=64)
    sched = make_scheduler(EVICTION_POLICIES["lru"].config_cls(), sc, num_blocks=num_blocks, block_size=bs,
                           recompute_cost=lambda d: COST.recompute_time(bs, d * bs), specs=specs)
    watch = _Watching()
    Simulation(specs, sched, watch, skip_quiet=False, verify_every_step=True).run()
    assert sum(len(c) for _, c in watch.seen) > 1000, "the cohort must be large and long-lived to test anything"
    for plan, listed_then in watch.seen:
        assert plan.cohort_chunks() == listed_then, f"step {plan.step}: the plan changed after update"
        assert len(listed_then) == plan.num_cohort
        assert sum(c.num_context_tokens for c in listed_then) == plan.cohort_context_sum
        for c in listed_then:  # a member's table holds the block its token goes into
            assert len(c.block_ids) == _cdiv(c.num_context_tokens + 1, bs), f"step {plan.step}: {c}"
        with pytest.raises(dataclasses.FrozenInstanceError):
            plan.num_cohort = 0  # type: ignore[misc]
    assert isinstance(sched, SchedulerInterface)
    # The cohort's history was restarted along the way, and plans of older histories still list right.
    assert len({id(p.cohort.history) for p, _ in watch.seen if p.cohort is not None}) > 1
    if num_blocks == 60:
        assert sched.stats.num_preemptions > 0


class _Keeping(_Watching):
    """Keeps the plans without listing them, and says it prices the cohort by its aggregates."""

    reads_cohort_tables = False

    def step_time(self, plan: StepPlan) -> float:
        self.seen.append((plan, ()))
        return COST.step_time(plan)


def _cohort_run(cost, on_step=None):
    specs = _specs(60)
    sc = SCHEDULING_POLICIES["fcfs"].config_cls(max_num_batched_tokens=128, max_num_seqs=64)
    sched = make_scheduler(EVICTION_POLICIES["lru"].config_cls(), sc, num_blocks=60, block_size=4,
                           recompute_cost=lambda d: COST.recompute_time(4, d * 4), specs=specs)
    sim = Simulation(specs, sched, cost, verify_every_step=True, on_step=on_step)
    return sim, sim.run().summary(sim.requests)


def test_the_simulator_keeps_cohort_tables_only_for_a_reader():
    """Without an on_step hook and with a cost model that prices the cohort by its aggregates the
    scheduler keeps no member tables (and its plans refuse to list the cohort, rather than list it
    empty); a hook, or a cost model that does not say so, gets the tables. The decisions are
    the same either way (verify runs every step in both modes)."""
    blind, m_blind = _cohort_run(_Keeping())
    assert not blind.scheduler.cohort.tables
    with_cohort = [p for p, _ in blind.executor.cost.seen if p.num_cohort]
    assert with_cohort and blind.scheduler.stats.num_preemptions > 0
    with pytest.raises(RuntimeError, match="no cohort block tables"):
        with_cohort[0].cohort_chunks()
    hooked, m_hooked = _cohort_run(_Keeping(), on_step=lambda plan, result: None)
    listing, m_listing = _cohort_run(_Watching())
    assert hooked.scheduler.cohort.tables and listing.scheduler.cohort.tables
    assert m_blind == m_hooked == m_listing


def test_verify_without_tables_sees_a_member_table_change():
    """Without tables a member is its anchor and table length: a block appended while it is a
    member (the invariant the tables-kept check compares tables for) still fails `verify`."""
    specs = _specs(3, seed=1)
    sched2 = make_scheduler(EVICTION_POLICIES["lru"].config_cls(),
                            SCHEDULING_POLICIES["fcfs"].config_cls(max_num_batched_tokens=128, max_num_seqs=8),
                            num_blocks=64, block_size=4, recompute_cost=lambda d: COST.recompute_time(4, d * 4),
                            specs=specs)
    sched2.drop_cohort_tables()
    for i, spec in enumerate(specs):
        sched2.add_request(Request(spec=spec, index=i), 0.0)
    now = 0.0
    while not len(sched2.cohort):
        plan = sched2.schedule(now)
        now += COST.step_time(plan)
        sched2.update(plan, now)
    sched2.verify()
    member = next(r for r in sched2.running if r.anchor_step >= 0)
    member.block_ids.append(sched2.kv.pool.allocate_ids(1)[0])
    with pytest.raises(AssertionError, match="block table changed"):
        sched2.verify()


class OneByOneFcfs(SchedulerInterface):
    """A second scheduler in one class: first come first served, every running request handled
    one by one in every step (no lazy cohort, so no quiet steps), no preemption: a request is
    admitted only while the pool can hold its whole sequence."""

    def __init__(self, kv, max_num_seqs: int) -> None:
        self.kv, self.stats, self.step, self.running = kv, SchedulerStats(), 0, []
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()
        self._reserved = 0  # blocks the running requests will need in all

    def add_request(self, req: Request, now: float) -> bool:
        req.arrival_time = now
        if _cdiv(req.prompt_len + req.max_output_tokens, self.kv.block_size) > self.kv.pool.num_blocks:
            req.status, req.rejected_reason = Status.REJECTED, "too long for the cache"
            self.stats.num_rejected += 1
            return False
        req.status = Status.WAITING
        self.waiting.append(req)
        return True

    def _blocks(self, r: Request) -> int:
        return _cdiv(r.prompt_len + r.max_output_tokens, self.kv.block_size)

    def schedule(self, now: float) -> StepPlan:
        while self.waiting and len(self.running) < self.max_num_seqs \
                and self._reserved + self._blocks(self.waiting[0]) <= self.kv.pool.num_blocks:
            r = self.waiting.popleft()
            r.status, r.first_scheduled_time, r.num_cached_tokens = Status.RUNNING, now, 0
            self._reserved += self._blocks(r)
            self.running.append(r)
        chunks = []
        for r in self.running:
            new = r.num_tokens - r.num_computed_tokens
            assert self.kv.allocate_slots(r, new), "the reservation guarantees the blocks"
            chunks.append(ScheduledChunk(r.request_id, new, r.num_computed_tokens, tuple(r.block_ids), True))
        return StepPlan(self.step, tuple(chunks))

    def update(self, plan: StepPlan, now: float) -> StepResult:
        res = StepResult()
        for c in plan.chunks:
            r = next(q for q in self.running if q.request_id == c.request_id)
            r.num_computed_tokens += c.num_new_tokens
            r.num_output_tokens += 1
            if r.first_token_time < 0:
                r.first_token_time = now
                res.first_tokens.append(r)
            else:
                res.itl_samples.append(now - r.last_token_time)
            r.last_token_time = now
            if r.num_output_tokens >= r.max_output_tokens:
                self.running.remove(r)
                self._reserved -= self._blocks(r)
                self.kv.free(r)
                r.status, r.finish_time = Status.FINISHED, now
                res.finished.append(r)
        self.step += 1
        return res

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)


def test_a_second_scheduler_is_one_class():
    specs = _specs(60, seed=1)
    bs = 4
    ref = make_scheduler(None, SCHEDULING_POLICIES["fcfs"].config_cls(), num_blocks=300, block_size=bs,
                         recompute_cost=lambda d: 0.0)
    alt = OneByOneFcfs(ref.kv, max_num_seqs=8)  # borrow a cache manager without prefix caching
    sim = Simulation(specs, alt, COST)
    m = sim.run().summary(sim.requests)
    assert m["num_finished"] == len(specs) and m["output_tokens"] == sum(s.output_len for s in specs)
    assert m["mean_batch_size"] > 2, "requests must run side by side"
    assert all(r.status is Status.FINISHED for r in sim.requests)
    assert [r.num_output_tokens for r in sim.requests] == [s.output_len for s in specs]
    assert alt.kv.pool.num_used == 0
    assert not isinstance(alt, Scheduler)
