"""The one serving loop, shared by the simulator and the engine: its body is written here, once.

    ServingLoop.body():
        while requests are to come or in flight:
            nothing scheduled -> executor.wait_for_work()   (arrivals fall due on its clock)
            plan = next_plan(now)                          Scheduler.schedule -> StepPlan
            duration = executor.run_plan(plan)             the step takes its time on the clock
            complete(plan, now, duration)                  Scheduler.update -> metrics; finished
                                                           requests release their follow-ups
                                                           and their concurrency slots
            executor.after_step(result)                    arrivals due by now reach the queue

An `Executor` is the only thing a driver supplies: a clock and what a step costs on it.
`apcsim.sim.simulator` runs plans for the cost model's duration on SimPy's clock (and skips
stretches of quiet decode steps in one event); `engine.runner` runs a forward pass on the wall
clock. Requests fall due on the executor's clock, so it hands them to the frontend
(`Frontend.deliver`): SimPy's at each due time, even while a step runs; the wall clock's
between steps. Everything that decides what a request sees (arrival stamps, the gate,
follow-ups, rejections) lives here, so the two cannot drift apart. `apcsim.run.build_run`
builds the workload, seeds and scheduler both drivers run.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Protocol, Sequence, TypeVar

from apcsim.core.plan import StepPlan
from apcsim.core.request import Request, RequestSpec
from apcsim.core.scheduler import Scheduler, StepResult
from apcsim.interrupt import deferred, safe_point
from apcsim.outputs.metrics import MetricsCollector
from apcsim.outputs.requestlog import RequestLog, uses_priorities

if TYPE_CHECKING:
    from apcsim.workloads import Workload

T = TypeVar("T")
# What an executor's time-passing methods return: a generator that yields whatever its clock waits
# on (SimPy events; nothing on the wall clock) and returns the method's value.
Waits = Generator[Any, Any, T]


def _new_request(output_seed: int, index: int, spec: RequestSpec) -> Request:
    return Request(spec=spec, index=index, output_seed=output_seed)


class Frontend:
    """The clients' side: when each request reaches the scheduler.

    A request is due at its trace time (or at 0 with `use_timestamps=False`, as an offline
    benchmark sends everything at once); a follow-up turn is due `think_time_s` after its parent
    ends (at once offline), never before its own trace time. At most `max_concurrency` requests
    are in flight; a due request beyond that waits at the gate, first come first served, and is
    stamped with the time it passes. Invariant: every request is in exactly one of still to
    come from the workload (a lazy one has not made it yet), released and pending, waiting on
    its parent, blocked at the gate, in flight, or done.
    """

    def __init__(self, specs: Sequence[RequestSpec] | Workload, scheduler: Scheduler, *,
                 max_concurrency: int | None = None,
                 use_timestamps: bool = True, make_request: Callable[[int, RequestSpec], Request] | None = None,
                 on_done: Callable[[Request], None] | None = None,
                 on_send: Callable[[Request, bool], None] | None = None) -> None:
        """`specs`: a list, or a `Workload` whose specs are made as they fall due (one without
        follow-ups; it yields them in arrival order). `make_request(index, spec)` builds a spec's
        `Request` when it is handed to the scheduler (so only requests in flight exist);
        `on_done(r)` sees each request once as it leaves; `on_send(r, accepted)` each request as
        the scheduler takes it (or rejects it), in order."""
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.scheduler = scheduler
        self.max_concurrency = max_concurrency
        self.use_timestamps = use_timestamps
        self._make = make_request or (lambda i, s: Request(spec=s, index=i))
        self._on_done = on_done
        self._on_send = on_send
        # Entries are (index, spec) until sent: a RequestSpec is immutable workload data, the
        # mutable Request is made only when the request reaches the scheduler.
        self._pending: list[tuple[float, int, tuple[int, RequestSpec]]] = []  # released follow-ups: (due, seq, entry)
        self._seq = itertools.count()
        self._children: dict[str, list[tuple[int, RequestSpec]]] = {}  # parent id -> follow-ups waiting on it
        self._blocked: deque[tuple[int, RequestSpec]] = deque()  # due, waiting for a concurrency slot
        self._in_flight = 0
        # Set by a finish that released a follow-up or freed a gate slot (so the next due time
        # or the gate moved); the simulator's arrivals process clears it when it looks again.
        self.arrivals_moved = False
        # Requests that start something come from `_roots` in due order (ties: workload order),
        # one ahead: a lazy workload's are made only then. At equal due times a root goes before a
        # released follow-up, as when every root was queued before the run.
        if getattr(specs, "is_lazy", False):  # made from a SpecSource: never a follow-up
            self._roots: Iterator[tuple[int, RequestSpec]] = specs.entries()  # type: ignore[union-attr]
        else:
            self._roots = iter(self._register(specs.specs() if hasattr(specs, "specs") else specs))
        self._next_root: tuple[int, RequestSpec] | None = None
        self._root_due = float("inf")
        self._advance_root()

    def _register(self, specs: Sequence[RequestSpec]) -> list[tuple[int, RequestSpec]]:
        """Check a list's ids and parents, file its follow-ups under their parents; its roots in due order."""
        ids = {s.request_id for s in specs}
        if len(ids) != len(specs):
            raise ValueError("request ids are not unique")
        roots = []
        for i, s in enumerate(specs):
            parent = s.parent_id
            if parent is None:
                roots.append((i, s))
            elif parent not in ids:
                raise ValueError(f"request {s.request_id}: parent {parent!r} is not in the workload")
            else:
                self._children.setdefault(parent, []).append((i, s))
        if self.use_timestamps:
            roots.sort(key=lambda e: e[1].arrival_time)  # stable: ties keep workload order
        return roots

    def _advance_root(self) -> None:
        nxt = next(self._roots, None)
        self._next_root = nxt
        if nxt is None:
            self._root_due = float("inf")
        else:
            self._root_due = nxt[1].arrival_time if self.use_timestamps else 0.0

    def _push(self, t: float, entry: tuple[int, RequestSpec]) -> None:
        heapq.heappush(self._pending, (t, next(self._seq), entry))

    @property
    def gate_open(self) -> bool:
        return self.max_concurrency is None or self._in_flight < self.max_concurrency

    @property
    def arrivals_fixed(self) -> bool:
        """Whether no finish can move an arrival any more: no follow-up waits on a parent and no
        gate holds requests back (a lazy workload has no follow-ups)."""
        return not self._children and self.max_concurrency is None

    @property
    def next_due_time(self) -> float:
        """When the next pending request falls due (it may then wait at the gate); inf if none."""
        return min(self._root_due, self._pending[0][0]) if self._pending else self._root_due

    @property
    def next_arrival_time(self) -> float:
        """When the next request reaches the scheduler, as far as is known now (inf if none)."""
        return self.next_due_time if self.gate_open else float("inf")

    @property
    def has_future_requests(self) -> bool:
        """Requests not yet handed to the scheduler: pending, follow-ups, or blocked at the gate."""
        return bool(self._next_root is not None or self._pending or self._children or self._blocked)

    def deliver(self, now: float) -> int:
        """Hand every request due by `now` to the scheduler; returns how many it queued."""
        queued = 0
        pending = self._pending
        while True:
            # Stamped with its due time: a request that came while the engine was busy has been
            # waiting since then (a wall-clock driver sees it late; SimPy's sees it on time).
            if pending and pending[0][0] < self._root_due:
                if pending[0][0] > now:
                    return queued
                t, _, entry = heapq.heappop(pending)
            elif self._root_due <= now:
                t, entry = self._root_due, self._next_root
                self._advance_root()
            else:
                return queued
            queued += self._send(entry, t)  # type: ignore[arg-type]

    def _send(self, entry: tuple[int, RequestSpec], t: float) -> int:
        if not self.gate_open:
            self._blocked.append(entry)
            return 0
        self._in_flight += 1
        r = self._make(*entry)
        accepted = self.scheduler.add_request(r, t)
        if self._on_send is not None:
            self._on_send(r, accepted)
        if accepted:
            return 1
        return self.finish(r, t)  # rejected: frees its slot and releases its follow-ups

    def finish(self, r: Request, now: float) -> int:
        """`r` finished (or was rejected) at `now`: release its follow-ups and its slot; returns
        how many blocked requests the freed slot let through to the scheduler."""
        self._in_flight -= 1
        if self._on_done is not None:
            self._on_done(r)
        children = self._children.pop(r.request_id, ())
        for child in children:
            # The user reads the answer (or the error) and types the next turn.
            spec = child[1]
            t = max(spec.arrival_time, now + spec.think_time_s) if self.use_timestamps else now
            self._push(t, child)
        if children or self.max_concurrency is not None:
            self.arrivals_moved = True
        queued = 0
        while self._blocked and self.gate_open:
            queued += self._send(self._blocked.popleft(), now)
        return queued


class Executor(Protocol):
    """What a driver supplies to `ServingLoop`: a clock, and a way to run a step's plan on it.

    The methods that let time pass are generators, so that the loop's body can run as a SimPy
    process and yield a SimPy executor's events; a wall-clock executor's generators yield nothing
    and simply take the time they take. Arrivals fall due on the executor's clock, so handing
    them to the scheduler (`loop.frontend.deliver`) is the executor's job too.
    """

    def now(self) -> float:
        """The run's clock: seconds since it started."""
        ...

    def drive(self, loop: "ServingLoop") -> None:
        """Start the clock and run `loop.body()` to its end."""
        ...

    def run_plan(self, plan: StepPlan) -> Waits[float]:
        """Run the plan; returns at its end (`now()`) with how long it took."""
        ...

    def wait_for_work(self, loop: "ServingLoop") -> Waits[None]:
        """Nothing is scheduled but requests are still to come: return once one may have
        reached the scheduler."""
        ...

    def after_step(self, loop: "ServingLoop", result: StepResult) -> Waits[None]:
        """The step's update is done: arrivals due by now reach the scheduler before the next
        schedule. An executor may also run steps here that it knows change nothing but time
        (the simulator's quiet decode stretches), reporting them to the scheduler and metrics."""
        ...


class ServingLoop:
    """Requests, frontend, scheduler, metrics and the loop's body; the executor supplies the clock."""

    def __init__(self, specs: Sequence[RequestSpec] | Workload, scheduler: Scheduler, executor: Executor, *,
                 max_concurrency: int | None = None, output_seed: int = 0, use_timestamps: bool = True,
                 verify_every_step: bool = False, on_step=None, keep_requests: bool = True,
                 log: RequestLog | None = None, on_arrival: Callable[[Request, bool], None] | None = None,
                 progress=None, frontend: Frontend | None = None) -> None:
        """`specs`: a list, or a `Workload` (whose specs a lazy one makes only as they fall due).
        `keep_requests=False` is the bounded-memory mode of long runs: a `Request` exists only
        while it is in flight, its outcome goes to `metrics.log` and `requests` stays None.
        `log` (default: rows kept in memory) may stream requests.csv to a file. `on_arrival(r,
        accepted)` sees each request as it reaches the scheduler (the parity harness replays
        these to vLLM in the same order and step). `progress` (apcsim.outputs.progress.RequestProgress
        or None) is told of finished requests. `frontend`: one shared with other loops (a
        cluster's replicas, whose router hands it their schedulers' requests); it then owns the
        workload and `specs` only sizes the log's columns."""
        self.scheduler = scheduler
        self.executor = executor
        if keep_requests and hasattr(specs, "specs"):
            specs = specs.specs()  # every Request is kept: every spec is needed at once
        if log is None:  # rows in memory; a priority class column when the workload has classes
            log = RequestLog(by_class=uses_priorities(specs))
        self.metrics = MetricsCollector(scheduler, log)
        self.num_requests = len(specs)
        if keep_requests:
            self.requests: list[Request] | None = [Request(spec=s, index=i, output_seed=output_seed)
                                                   for i, s in enumerate(specs)]  # type: ignore[arg-type]
            make = self._kept_request
        else:
            self.requests = None
            make = partial(_new_request, output_seed)
        if frontend is None:
            frontend = Frontend(specs, scheduler, max_concurrency=max_concurrency, use_timestamps=use_timestamps,
                                make_request=make, on_done=self.metrics.record_request, on_send=on_arrival)
        self.frontend = frontend
        self.verify_every_step = verify_every_step
        self.progress = progress
        # callback(plan, result) after each executed step (tests, validation); a simulator's
        # skipped quiet stretch is not a plan and is not reported.
        self.on_step = on_step

    def _kept_request(self, index: int, spec: RequestSpec) -> Request:
        return self.requests[index]  # type: ignore[index]

    @property
    def done(self) -> bool:
        return not self.scheduler.has_work and not self.frontend.has_future_requests

    def next_plan(self, now: float) -> StepPlan:
        safe_point()  # a deferred Ctrl-C/kill ends the run here, between whole steps
        plan = self.scheduler.schedule(now)
        if plan.is_empty:
            sched = self.scheduler
            raise RuntimeError(
                f"step {plan.step}: nothing schedulable with {len(sched.running)} running and "
                f"{sched.num_waiting} waiting requests"
            )
        return plan

    def complete(self, plan: StepPlan, now: float, duration: float) -> StepResult:
        """The plan ran and ended at `now` after `duration` seconds."""
        result = self.scheduler.update(plan, now)
        self.metrics.record_step(now, duration, plan.num_requests, plan.num_tokens, result)
        self.release_finished(result, now)
        if self.on_step is not None:
            self.on_step(plan, result)
        return result

    def release_finished(self, result: StepResult, now: float) -> None:
        """After a step's update and its metrics (a step the simulator skipped included): the
        requests it finished leave, releasing their follow-ups and concurrency slots."""
        for r in result.finished:
            self.frontend.finish(r, now)
        if self.verify_every_step:
            self.scheduler.verify()
        if result.finished and self.progress is not None:
            self.progress.advance(len(result.finished))

    def body(self) -> Iterator:
        """The loop, once: schedule -> execute -> update -> metrics until every request is done.
        A generator of the executor's waits (see `Executor`)."""
        ex, sched, fe = self.executor, self.scheduler, self.frontend
        while sched.has_work or fe.has_future_requests:
            if not sched.has_work:
                yield from ex.wait_for_work(self)
                continue
            plan = self.next_plan(ex.now())
            duration = yield from ex.run_plan(plan)
            result = self.complete(plan, ex.now(), duration)
            yield from ex.after_step(self, result)

    def run(self) -> MetricsCollector:
        with deferred():  # Ctrl-C/kill stop the run only at a step boundary (`next_plan`)
            self.executor.drive(self)
        if self.progress is not None:
            self.progress.close()
        return self.metrics
