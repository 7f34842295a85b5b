"""The simulator's executor (`apcsim.loop.Executor`): a step takes the cost model's duration on
SimPy's clock.

Two SimPy processes: arrivals (the frontend's requests falling due, each at its time) and the
loop's body (`ServingLoop.body`). After a step the executor skips a quiet stretch of pure decode
in one timeout (see `Scheduler.quiet_steps`), and the step after it too when that step only
finishes requests (`Scheduler.finish_closes_stretch`), so the cost of a run grows with events
(arrivals, admissions, preemptions), not with generated tokens. Unless a hook or the cost model
may list a plan's cohort, the scheduler keeps no block tables for it (`prepare`).
"""

from __future__ import annotations

import simpy

from apcsim.core.plan import StepPlan
from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler, StepResult
from apcsim.interrupt import safe_point
from apcsim.loop import ServingLoop, Waits
from apcsim.sim.cost_model import CostModel
from apcsim.sim.events import first_of, pass_alone, wait_as_first_of
from apcsim.sim.gc_pause import fewer_collections


class SimPyExecutor:
    """Plans run for `cost.step_time(plan)` simulated seconds; `skip_quiet` runs a stretch of
    steps that change nothing but time and the decodes' new blocks (no arrival, completion,
    admission or preemption) in one event."""

    # Whether a skipped stretch may allocate the decodes' new blocks (`Scheduler.advance`): the
    # pool then changes only when the stretch is applied, which is right only if nobody looks at
    # the pool while the stretch runs (a cluster's router does: `apcsim.cluster.replica`).
    allocating_stretches = True

    def __init__(self, cost: CostModel, *, skip_quiet: bool = True, env: simpy.Environment | None = None) -> None:
        """`env`: a clock shared with other executors (a cluster's replicas); by default its own."""
        self.env = env if env is not None else simpy.Environment()
        self.cost = cost
        # A quiet stretch's step times as a list of floats (what the stretch code reads): the
        # model's own list where it has one (`CostModel.decode_stretch_list`), else its array's.
        self._stretch_times = getattr(cost, "decode_stretch_list", None) or self._stretch_times_of_array
        self.skip_quiet = skip_quiet
        self._arrivals_changed = self.env.event()  # a request finished: follow-ups or the gate moved
        self._work = self.env.event()  # the scheduler got work while the loop was idle
        # Seconds steps waited on host-tier copies beyond their compute (apcsim.core.host_tier).
        self.transfer_stall_s = 0.0

    def now(self) -> float:
        return self.env.now

    def prepare(self, loop: ServingLoop) -> None:
        """Before the loop's first step."""
        if loop.on_step is None and not getattr(type(self.cost), "reads_cohort_tables", True):
            # The cost model prices a plan's cohort by its size and total context, and no hook
            # sees the plans: nobody lists the members, so nobody reads their block tables.
            loop.scheduler.drop_cohort_tables()

    def drive(self, loop: ServingLoop) -> None:
        self.prepare(loop)
        self.env.process(self._arrivals(loop))
        with fewer_collections():
            self.env.run(until=self.env.process(loop.body()))

    def run_plan(self, plan: StepPlan) -> Waits[float]:
        transfers = plan.transfers
        if transfers is None:
            duration = self.cost.step_time(plan)
        else:  # copies overlap the step's compute; the step ends when both are done
            compute = self.cost.step_time(plan) if plan.num_requests else 0.0
            duration = max(compute, transfers.seconds)
            self.transfer_stall_s += duration - compute
        wait = pass_alone(self.env, duration)
        if wait is not None:
            yield wait
        return duration

    def wait_for_work(self, loop: ServingLoop) -> Waits[None]:
        self._work = self.env.event()
        yield self._work

    def after_step(self, loop: ServingLoop, result: StepResult) -> Waits[None]:
        while True:
            if result.finished and loop.frontend.arrivals_moved and not self._arrivals_changed.triggered:
                # A finish released a follow-up or a gate slot: the arrivals process looks again.
                # (After other finishes its wake would only renew its timeout for the same time.)
                self._arrivals_changed.succeed()
            if self.env.peek() <= self.env.now:
                # Let arrivals due now reach the queue before the next schedule (with nothing else
                # due now, the wait would change nothing).
                yield self.env.timeout(0)
            if not self.skip_quiet:
                return
            closing = yield from self._skip_quiet_stretch(loop)
            if closing is None:
                return  # the next step is stepped
            # The stretch ended with a step that finished requests: a step boundary, where a
            # deferred Ctrl-C/kill may end the run (a draining batch may step no plan for long).
            safe_point()
            result = closing  # then what follows any step

    def _notify(self, queued: int) -> None:
        if queued and not self._work.triggered:
            self._work.succeed()

    def _arrivals(self, loop: ServingLoop):
        env, fe = self.env, loop.frontend
        while True:
            self._notify(fe.deliver(env.now))
            fe.arrivals_moved = False  # what finishes released so far is seen here
            t = fe.next_due_time
            if t < float("inf"):
                wake = env.timeout(t - env.now)
            elif fe.has_future_requests or loop.scheduler.has_work:
                wake = None  # follow-ups or blocked requests may still come
            else:
                # Nothing will ever arrive again. Wake an idle loop so that it sees that too:
                # when the last arrival was rejected nothing else would (found by the fuzz test).
                if not self._work.triggered:
                    self._work.succeed()
                return
            if wake is not None and fe.arrivals_fixed:
                # No finish can move an arrival (no follow-ups left, no gate): `changed` would
                # never fire, so the timeout alone, resumed where `first_of` would resume.
                yield from wait_as_first_of(env, wake)
                continue
            changed = self._arrivals_changed
            yield (changed if wake is None else first_of(env, wake, changed))
            if changed.triggered:
                self._arrivals_changed = env.event()

    def _stretch_times_of_array(self, num_seqs: int, context_sum: int, num_steps: int) -> list[float]:
        return self.cost.decode_stretch_times(num_seqs, context_sum, num_steps).tolist()

    def _skip_quiet_stretch(self, loop: ServingLoop) -> Waits[StepResult | None]:
        """Skip the quiet steps from now on, if there are at least two, and the step after them
        too if it only finishes members (`Scheduler.finish_closes_stretch`; not when `on_step`
        wants every step's plan). Returns that closing step's result, None without one."""
        sched = loop.scheduler
        allocating = self.allocating_stretches
        k = sched.quiet_steps(allocating=allocating)
        closing = allocating and loop.on_step is None and sched.finish_closes_stretch(k)
        if k < 2 and not closing:
            return None
        n = len(sched.running)
        times = self._stretch_times(n, sched.cohort_context_sum, k + closing)  # [k (+1)]
        # End times of the steps, summed one step at a time from now exactly as stepping one by
        # one would, so skipping changes no float bit of any result. Step j >= 1 starts at
        # ends[j-1]; only steps that start before the next arrival are quiet for sure (an arrival
        # at a step's start is seen by that step's schedule).
        now = end = self.env.now
        arrival = loop.frontend.next_arrival_time
        ends = []
        for d in times:
            if ends and end >= arrival:
                break
            end += d
            ends.append(end)
        m = len(ends)
        if allocating and (m >= 2 or closing):
            m = sched.stretch_fit(m)
        closing = closing and m == k + 1  # else the closing step is cut off: it is stepped
        quiet = m - closing
        if quiet >= 2 or (closing and quiet):
            quiet = yield from self._wait_stretch(ends, quiet, now)
            allocated = sched.advance(quiet, self.env.now, ends[:quiet] if allocating else None)
            loop.metrics.record_stretch(self.env.now, times[:quiet], n, allocated, ends, now)
            if loop.verify_every_step:
                sched.verify()
        if not closing:
            return None
        # The closing step: its own timeout, as stepping's (its start plus its duration, the
        # same bits), so that the quiet steps' row above saw the queue before it.
        start = self.env.now
        wait = pass_alone(self.env, times[quiet])
        if wait is not None:
            yield wait
        end = self.env.now
        allocated = sched.advance(1, end, [end])
        result = sched.finish_stretch(end)
        loop.metrics.record_stretch(end, times[quiet:], n, allocated, [end], start)
        loop.release_finished(result, end)
        return result

    def _wait_stretch(self, ends: list[float], m: int, now: float) -> Waits[int]:
        """Let the first `m` steps of a quiet stretch (ending at `ends`) pass; returns how many
        did (all of them: nothing reaches this scheduler before the next arrival it knows of)."""
        # now + (end - now) == end: the subtraction is exact whenever end <= 2 * now (Sterbenz).
        wait = pass_alone(self.env, ends[m - 1] - now)
        if wait is not None:
            yield wait
        return m


class Simulation(ServingLoop):
    """The serving loop on a `SimPyExecutor` (the arguments of both, in one call)."""

    def __init__(self, specs: list[RequestSpec], scheduler: Scheduler, cost_model: CostModel, *,
                 skip_quiet: bool = True, **loop_kw) -> None:
        super().__init__(specs, scheduler, SimPyExecutor(cost_model, skip_quiet=skip_quiet), **loop_kw)
