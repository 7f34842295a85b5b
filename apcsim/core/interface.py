"""The scheduler interface: the contract the serving loop (`apcsim.loop`) drives, in the manner of
vLLM V1's `v1/core/sched/interface.py`. A second scheduling algorithm is one file that subclasses
`SchedulerInterface`; `apcsim.core.scheduler.Scheduler` is vLLM V1's.

One step, for every executor (simulated or real):

    plan = sched.schedule(now)          # decide; the plan is an immutable value
    ... the executor runs `plan` ...
    result = sched.update(plan, now)    # apply what the step produced, at its end time

`add_request` may be called at any time between steps. A driver that can jump its clock (the
simulator) may instead, between steps, ask `quiet_steps()` and `advance(k, now)` to skip k steps
in which nothing but the decoding requests' counters would change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.plan import StepPlan
from apcsim.core.request import Request


@dataclass
class SchedulerStats:
    """Counters in vLLM's names. Queries and hits count prompt tokens at a request's first
    admission; a resumed request's lookups are counted apart, as vLLM V1 does."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    preempted_prefix_cache_queries: int = 0
    preempted_prefix_cache_hits: int = 0
    prompt_tokens_computed: int = 0  # prompt positions run through the model, recomputes included
    recomputed_tokens: int = 0  # tokens computed again after a preemption (prompt or output)
    num_preemptions: int = 0
    num_rejected: int = 0
    hash_collisions: int = 0  # verify_tokens: admissions whose lookup stopped at a key collision


@dataclass
class StepResult:
    """What one step produced, for the metrics and the front end."""

    finished: list[Request] = field(default_factory=list)
    first_tokens: list[Request] = field(default_factory=list)
    itl_samples: list[float] = field(default_factory=list)  # inter-token gaps handled one by one
    num_regular_decodes: int = 0  # decodes whose gap is exactly this step's duration (not in itl_samples)


class SchedulerInterface(ABC):
    """What the serving loop, the metrics and the drivers use of a scheduler. Besides the methods,
    an implementation exposes `kv` (its `KVCacheManager`), `stats` (a `SchedulerStats` it keeps
    current), `step` (the index of the next step to schedule, from 0) and `running` (the requests
    holding KV, in the order they run)."""

    kv: KVCacheManager
    stats: SchedulerStats
    step: int
    running: list[Request]

    @abstractmethod
    def add_request(self, req: Request, now: float) -> bool:
        """A request arrives at `now`. Queue it (status WAITING, arrival_time = now) and return
        True, or reject it (status REJECTED, `rejected_reason` set, `stats.num_rejected` counted)
        and return False if it could never run under this configuration."""

    @abstractmethod
    def schedule(self, now: float) -> StepPlan:
        """Plan step `self.step` at time `now`: which requests compute how many tokens, with which
        block tables (blocks are allocated here), which were preempted and how many prompt tokens
        were hashed. The plan is empty only if nothing at all can run (the loop treats that as an
        error). Must be followed by exactly one `update` with this plan before the next call."""

    @abstractmethod
    def update(self, plan: StepPlan, now: float) -> StepResult:
        """The executor ran `plan` and the step ended at `now`: advance the scheduled requests'
        counters, sample their tokens, free the blocks of the requests that finished, and move to
        the next step. Returns what the step produced."""

    @property
    @abstractmethod
    def has_work(self) -> bool:
        """True while a request is running or waiting (a further `schedule` would plan work)."""

    @property
    @abstractmethod
    def num_waiting(self) -> int:
        """Requests queued and not running (new, or preempted and not yet resumed)."""

    def quiet_steps(self, *, allocating: bool = False) -> int:
        """How many steps from now on would change nothing but the counters of requests that
        decode one token each: no chunk, allocation, finish, admission or preemption. 0 if the
        next step may do anything else; a scheduler that cannot tell returns 0 (the default), and
        the driver then runs every step. `allocating`: the driver lets `advance` make the decodes'
        block allocations (see `Scheduler.quiet_steps`); a scheduler may ignore it."""
        return 0

    @property
    def cohort_context_sum(self) -> int:
        """During a quiet stretch (after `quiet_steps()` > 0): the total context, in tokens with
        KV, of the `len(running)` requests that decode in the next step; each later quiet step
        adds one token per request. The driver prices a skipped stretch with it."""
        raise NotImplementedError(f"{type(self).__name__} has no quiet steps to skip")

    def stretch_fit(self, m: int) -> int:
        """How many of the next m steps of an allocating stretch the scheduler can skip (see
        `Scheduler.stretch_fit`); all of them by default."""
        return m

    def advance(self, k: int, now: float, step_ends=None) -> list[tuple[int, int]]:
        """Skip k >= 1 steps that `quiet_steps()` (called just before) promised quiet; `now` is
        the end time of the last of them. Only called with k <= quiet_steps(). `step_ends` and
        the result: see `Scheduler.advance` (a scheduler that ignores `allocating` returns [])."""
        raise NotImplementedError(f"{type(self).__name__} has no quiet steps to skip")

    def drop_cohort_tables(self) -> None:
        """Nobody will list the decode cohort's members of this run's plans
        (`StepPlan.cohort_chunks`): the scheduler may stop keeping their block tables. Called by
        a driver before the first step; the default keeps them."""

    def finish_closes_stretch(self, k: int) -> bool:
        """Whether the step after the k quiet steps may be skipped as the stretch's last one, its
        update done by `finish_stretch` (see `Scheduler.finish_closes_stretch`); never by default."""
        return False

    def finish_stretch(self, now: float) -> StepResult:
        """The update of the closing step `advance` just skipped (`finish_closes_stretch`):
        finish the requests whose last token it sampled."""
        raise NotImplementedError(f"{type(self).__name__} has no closing steps to skip")

    def verify(self) -> None:
        """Check internal invariants and raise AssertionError if one is broken (tests and
        `verify_every_step` call it between steps). The default checks nothing."""
