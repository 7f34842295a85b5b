"""The SimPy simulation: an arrival process and the engine loop schedule -> cost model -> update.

The engine loop skips quiet stretches of pure decode in one timeout (see
`Scheduler.quiet_steps`), so the cost of a run grows with events (arrivals, completions, block
allocations, preemptions), not with generated tokens.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

import numpy as np
import simpy

from apcsim.core.request import Request, RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.metrics import MetricsCollector
from apcsim.sim.cost_model import CostModel


class Simulation:
    def __init__(
        self,
        specs: list[RequestSpec],
        scheduler: Scheduler,
        cost_model: CostModel,
        *,
        max_concurrency: int | None = None,
        output_seed: int = 0,
        skip_quiet: bool = True,
        verify_every_step: bool = False,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.env = simpy.Environment()
        self.scheduler = scheduler
        self.cost = cost_model
        self.metrics = MetricsCollector(scheduler)
        self.requests = [Request(spec=s, index=i, output_seed=output_seed) for i, s in enumerate(specs)]
        self.max_concurrency = max_concurrency
        self.skip_quiet = skip_quiet
        self.verify_every_step = verify_every_step
        self._by_id = {r.request_id: r for r in self.requests}
        if len(self._by_id) != len(self.requests):
            raise ValueError("request ids are not unique")
        self._children: dict[str, list[Request]] = {}
        self._pending: list[tuple[float, int, Request]] = []  # future arrivals: (time, seq, request)
        self._seq = itertools.count()
        for r in self.requests:
            parent = r.spec.parent_id
            if parent is None:
                self._push_arrival(r.spec.arrival_time, r)
            elif parent not in self._by_id:
                raise ValueError(f"request {r.request_id}: parent {parent!r} is not in the workload")
            else:
                self._children.setdefault(parent, []).append(r)
        self._blocked: deque[Request] = deque()  # due, waiting for a max_concurrency slot
        self._in_flight = 0
        self._arrivals_changed = self.env.event()
        self._work = self.env.event()

    # -- arrivals ------------------------------------------------------------------------------
    def _push_arrival(self, t: float, r: Request) -> None:
        heapq.heappush(self._pending, (t, next(self._seq), r))

    @property
    def next_arrival_time(self) -> float:
        """When the next request reaches the engine, as far as is known now (inf if none)."""
        if self._pending and (self.max_concurrency is None or self._in_flight < self.max_concurrency):
            return self._pending[0][0]
        return float("inf")

    def _send(self, r: Request) -> None:
        if self.max_concurrency is not None and self._in_flight >= self.max_concurrency:
            self._blocked.append(r)
            return
        self._in_flight += 1
        if self.scheduler.add_request(r, self.env.now):
            if not self._work.triggered:
                self._work.succeed()
        else:
            self._done(r)  # rejected: frees its slot and releases its follow-ups

    def _done(self, r: Request) -> None:
        self._in_flight -= 1
        for child in self._children.pop(r.request_id, ()):
            # The user reads the answer (or the error) and types the next turn.
            self._push_arrival(max(child.spec.arrival_time, self.env.now + child.spec.think_time_s), child)
        if not self._arrivals_changed.triggered:
            self._arrivals_changed.succeed()
        while self._blocked and self._in_flight < self.max_concurrency:
            self._send(self._blocked.popleft())

    def _arrival_process(self):
        env = self.env
        while True:
            if self._pending:
                t = self._pending[0][0]
                if t <= env.now:
                    _, _, r = heapq.heappop(self._pending)
                    self._send(r)
                    continue
                wake = env.timeout(t - env.now)
            elif self._children or self._blocked or self.scheduler.has_work:
                wake = None  # follow-ups or blocked requests may still come
            else:
                return
            changed = self._arrivals_changed
            yield (changed if wake is None else (wake | changed))
            if changed.triggered:
                self._arrivals_changed = env.event()

    # -- the engine loop -----------------------------------------------------------------------
    def _engine_process(self):
        env, sched, cost, metrics = self.env, self.scheduler, self.cost, self.metrics
        while True:
            if not sched.has_work:
                if not self._pending and not self._children and not self._blocked:
                    return
                self._work = env.event()
                yield self._work
                continue
            plan = sched.schedule(env.now)
            if plan.is_empty:
                raise RuntimeError(
                    f"step {plan.step}: nothing schedulable with {len(sched.running)} running and "
                    f"{sched.num_waiting} waiting requests"
                )
            duration = cost.step_time(plan)
            yield env.timeout(duration)
            result = sched.update(plan, env.now)
            metrics.record_step(env.now, duration, plan.num_requests, plan.num_tokens, result)
            for r in result.finished:
                self._done(r)
            if self.verify_every_step:
                sched.verify()
            yield env.timeout(0)  # let arrivals due now reach the queue before the next schedule
            if self.skip_quiet:
                yield from self._skip_quiet_stretch()

    def _skip_quiet_stretch(self):
        sched = self.scheduler
        k = sched.quiet_steps()
        if k < 2:
            return
        n = len(sched.running)
        times = self.cost.decode_stretch_times(n, sched.cohort_context_sum, k)  # [k]
        # End times of the steps, summed one step at a time from now exactly as stepping one by one
        # would (np.cumsum adds left to right), so skipping changes no float bit of any result.
        now = self.env.now
        ends = np.cumsum(np.concatenate(([now], times)))[1:]
        # Step j >= 1 starts at ends[j-1]; only steps that start before the next arrival are quiet
        # for sure (an arrival at a step's start is seen by that step's schedule).
        m = 1 + int(np.searchsorted(ends[: k - 1], self.next_arrival_time, side="left"))
        if m < 2:
            return
        # now + (end - now) == end: the subtraction is exact whenever end <= 2 * now (Sterbenz).
        yield self.env.timeout(float(ends[m - 1]) - now)
        sched.advance(m, self.env.now)
        self.metrics.record_stretch(self.env.now, times[:m], n)
        if self.verify_every_step:
            sched.verify()

    def run(self) -> MetricsCollector:
        self.env.process(self._arrival_process())
        engine = self.env.process(self._engine_process())
        self.env.run(until=engine)
        return self.metrics
