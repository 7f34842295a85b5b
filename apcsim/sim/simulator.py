"""The SimPy driver of the serving loop (`apcsim.loop`): step durations from the cost model.

Two processes: arrivals (the frontend's requests falling due on SimPy's clock) and the engine
(schedule -> cost model -> update). The engine skips quiet stretches of pure decode in one
timeout (see `Scheduler.quiet_steps`), so the cost of a run grows with events (arrivals,
completions, block allocations, preemptions), not with generated tokens.
"""

from __future__ import annotations

import numpy as np
import simpy

from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.interrupt import deferred
from apcsim.loop import ServingLoop
from apcsim.outputs.metrics import MetricsCollector
from apcsim.outputs.requestlog import RequestLog
from apcsim.sim.cost_model import CostModel


class Simulation(ServingLoop):
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
        use_timestamps: bool = True,
        on_step=None,
        progress=None,
        keep_requests: bool = True,
        log: RequestLog | None = None,
        on_arrival=None,
    ) -> None:
        super().__init__(specs, scheduler, max_concurrency=max_concurrency, output_seed=output_seed,
                         use_timestamps=use_timestamps, verify_every_step=verify_every_step, on_step=on_step,
                         keep_requests=keep_requests, log=log, on_arrival=on_arrival)
        self.env = simpy.Environment()
        self.cost = cost_model
        self.skip_quiet = skip_quiet
        self.progress = progress  # apcsim.progress.RequestProgress or None: told of finished requests
        self._arrivals_changed = self.env.event()  # a request finished: follow-ups or the gate moved
        self._work = self.env.event()  # the scheduler got work while the engine was idle

    @property
    def next_arrival_time(self) -> float:
        return self.frontend.next_arrival_time

    def _notify(self, queued: int) -> None:
        if queued and not self._work.triggered:
            self._work.succeed()

    def _arrival_process(self):
        env, fe = self.env, self.frontend
        while True:
            self._notify(fe.deliver(env.now))
            t = fe.next_due_time
            if t < float("inf"):
                wake = env.timeout(t - env.now)
            elif fe.has_future_requests or self.scheduler.has_work:
                wake = None  # follow-ups or blocked requests may still come
            else:
                # Nothing will ever arrive again. Wake an idle engine so that it sees that too:
                # when the last arrival was rejected nothing else would (found by the fuzz test).
                if not self._work.triggered:
                    self._work.succeed()
                return
            changed = self._arrivals_changed
            yield (changed if wake is None else (wake | changed))
            if changed.triggered:
                self._arrivals_changed = env.event()

    def _engine_process(self):
        env, sched = self.env, self.scheduler
        while True:
            if not sched.has_work:
                if not self.frontend.has_future_requests:
                    return
                self._work = env.event()
                yield self._work
                continue
            plan = self.next_plan(env.now)
            duration = self.cost.step_time(plan)
            yield env.timeout(duration)
            result = self.complete(plan, env.now, duration)
            if result.finished and self.progress is not None:
                self.progress.advance(len(result.finished))
            if result.finished and not self._arrivals_changed.triggered:
                self._arrivals_changed.succeed()
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
        with deferred():  # Ctrl-C/kill stop the run only at a step boundary (`next_plan`)
            self.env.run(until=engine)
        if self.progress is not None:
            self.progress.close()
        return self.metrics
