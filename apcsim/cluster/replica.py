"""One replica of a cluster: its executor on the shared clock, and the read-only view a router
gets of it.

A replica's loop is the single engine's `ServingLoop` on a `SimPyExecutor` that shares the
cluster's SimPy environment. What changes with neighbours: a request can reach this replica's
scheduler at any time (another replica's finish releases a follow-up or a gate slot, and the
router sends it here), so a skipped quiet stretch is cut short when one does: the steps that
started before the request arrived are skipped as planned, the rest are stepped, exactly as
single steps would have seen it.
"""

from __future__ import annotations

from bisect import bisect_left

import simpy

from apcsim.core.request import Request
from apcsim.core.scheduler import Scheduler, StepResult
from apcsim.loop import ServingLoop, Waits
from apcsim.sim.cost_model import CostModel
from apcsim.sim.simulator import SimPyExecutor


class ClusterClock:
    """The cluster's shared SimPy environment and the event that tells its arrivals process a
    request finished somewhere (follow-ups or a gate slot may have moved)."""

    def __init__(self) -> None:
        self.env = simpy.Environment()
        self.arrivals_changed = self.env.event()

    def signal_finished(self) -> None:
        if not self.arrivals_changed.triggered:
            self.arrivals_changed.succeed()


class ReplicaExecutor(SimPyExecutor):
    # A router probes this replica's pool at any time, also in the middle of a skipped stretch,
    # so a stretch must not change the pool: decode block allocations are stepped.
    allocating_stretches = False

    def __init__(self, cost: CostModel, clock: ClusterClock, *, skip_quiet: bool = True) -> None:
        super().__init__(cost, skip_quiet=skip_quiet, env=clock.env)
        self.clock = clock
        self._stretch_wake: simpy.Event | None = None
        self.num_stretches_cut = 0

    def drive(self, loop: ServingLoop) -> None:
        raise RuntimeError("a replica's loop is driven by its cluster (apcsim.cluster.simulation)")

    def new_work(self) -> None:
        """The router just queued a request here: wake the loop if it idles or skips a stretch."""
        if not self._work.triggered:
            self._work.succeed()
        if self._stretch_wake is not None and not self._stretch_wake.triggered:
            self._stretch_wake.succeed()

    def after_step(self, loop: ServingLoop, result: StepResult) -> Waits[None]:
        if result.finished:
            self.clock.signal_finished()
        yield self.env.timeout(0)  # let arrivals due now reach the queue before the next schedule
        if self.skip_quiet:
            yield from self._skip_quiet_stretch(loop)

    def _wait_stretch(self, ends: list[float], m: int, now: float) -> Waits[int]:
        env = self.env
        self._stretch_wake = wake = env.event()
        try:
            yield env.timeout(ends[m - 1] - now) | wake
        finally:
            self._stretch_wake = None
        t = env.now
        if wake.triggered and t < ends[m - 1]:
            # A request arrived at t: it is seen by the first step starting at or after t, so
            # the steps that started before t stay in the stretch and the rest are stepped.
            self.num_stretches_cut += 1
            m = 1 + bisect_left(ends, t, 0, m - 1)
            rest = ends[m - 1] - t
            if rest > 0:
                yield env.timeout(rest)
        return m


class ReplicaView:
    """What a router may observe of a replica (`policies.routing.base.ReplicaState`): the
    router's own counters of what it sent here, the scheduler's load, and a read-only probe of
    the KV cache (lookups only: no hit is taken, no policy is told)."""

    def __init__(self, index: int, scheduler: Scheduler) -> None:
        self.index = index
        self._sched = scheduler
        # The probe reads the pool's key map directly: every filled block must be keyed in it.
        scheduler.pending_keys.enabled = False
        self.num_blocks = scheduler.kv.pool.num_blocks
        self.requests_in_flight = 0
        self.tokens_in_flight = 0
        self.requests_routed = 0
        self.prompt_tokens_routed = 0

    @property
    def num_waiting(self) -> int:
        return self._sched.num_waiting

    @property
    def num_running(self) -> int:
        return len(self._sched.running)

    @property
    def kv_usage(self) -> float:
        pool = self._sched.kv.pool
        return pool.num_used / pool.num_blocks

    def cached_prefix_blocks(self, request) -> int:
        if not self._sched.kv.enable_caching:
            return 0
        lookup = self._sched.kv.pool.lookup
        n = 0
        for key in request.prompt_block_keys():
            if lookup(key) is None:
                break
            n += 1
        return n

    def sent(self, r: Request) -> None:
        self.requests_in_flight += 1
        self.tokens_in_flight += r.prompt_len + r.max_output_tokens
        self.requests_routed += 1
        self.prompt_tokens_routed += r.prompt_len

    def returned(self, r: Request) -> None:
        self.requests_in_flight -= 1
        self.tokens_in_flight -= r.prompt_len + r.max_output_tokens
