"""N serving loops on one SimPy clock behind a router.

    arrivals process: Frontend.deliver(now) -> Dispatch.add_request -> router.route -> replica k's
                      scheduler.add_request, replica k woken
    replica k:        ServingLoop.body() on a ReplicaExecutor (the single engine's loop body)
    a finish on k:    Frontend.finish -> follow-ups due later (the arrivals process re-plans)
                      and gate slots freed (blocked requests routed at once)

One `Frontend` serves the whole cluster: the clients' gate (`max_concurrency`) and their
follow-up turns are the cluster's, so the router sees every arrival and every turn exactly once,
as it reaches the cluster. Each replica has its own scheduler, KV cache, policies and metrics.
"""

from __future__ import annotations

from array import array
from functools import partial
from typing import Callable, Sequence

import simpy

from apcsim.cluster.replica import ClusterClock, ReplicaExecutor, ReplicaView
from apcsim.core.request import Request, RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.interrupt import deferred
from apcsim.loop import Frontend, ServingLoop, _new_request
from apcsim.outputs.requestlog import RequestLog
from apcsim.sim.cost_model import CostModel
from apcsim.sim.events import first_of
from apcsim.sim.gc_pause import fewer_collections
from policies.routing.base import Router


def session_ids(specs: Sequence[RequestSpec]) -> dict[str, str]:
    """Each request's conversation: the id of the first request of its chain of parents."""
    parent = {s.request_id: s.parent_id for s in specs}
    root: dict[str, str] = {}
    for s in specs:
        chain, rid = [], s.request_id
        while rid not in root and parent.get(rid) is not None:
            chain.append(rid)
            rid = parent[rid]
        top = root.get(rid, rid)
        for c in chain:
            root[c] = top
        root.setdefault(s.request_id, top)
    return root


class RoutedRequest:
    """A request as the router sees it (`policies.routing.base.RoutedRequest`). Its prompt's
    block keys are computed on first use, by the replicas' own key function, into the request's
    key list, so the replica that serves it does not hash its prompt again."""

    __slots__ = ("_r", "_kv", "_keys", "session_id")

    def __init__(self, r: Request, kv, session_id: str) -> None:
        self._r, self._kv, self.session_id = r, kv, session_id
        self._keys: list[int] | None = None

    @property
    def request_id(self) -> str:
        return self._r.request_id

    @property
    def prompt_len(self) -> int:
        return self._r.prompt_len

    @property
    def output_len(self) -> int:
        return self._r.max_output_tokens

    def prompt_block_keys(self) -> list[int]:
        if self._keys is None:
            n = (self._r.prompt_len - 1) // self._kv.block_size  # blocks a lookup may hit (the last token is computed)
            self._keys = self._kv.block_keys(self._r, n)[:n]
        return self._keys


class Dispatch:
    """What the cluster's frontend hands requests to: the router, then the chosen replica."""

    def __init__(self, router: Router, views: list[ReplicaView], schedulers: list[Scheduler],
                 executors: list[ReplicaExecutor], sessions: dict[str, str]) -> None:
        self.router = router
        self.views = views
        self.schedulers = schedulers
        self.executors = executors
        self.sessions = sessions
        self.replica_of: dict[int, int] = {}  # request index -> replica, while in flight
        self.order = array("q")  # request indices in the order they reached the cluster
        self.loops: list[ServingLoop] = []  # set once the loops exist

    def add_request(self, r: Request, now: float) -> bool:
        k = self.router.route(RoutedRequest(r, self.schedulers[0].kv, self.sessions[r.request_id]), self.views)
        if not (isinstance(k, int) and 0 <= k < len(self.views)):
            raise RuntimeError(f"router {self.router.cfg.name!r} returned replica {k!r} of {len(self.views)}")
        self.replica_of[r.index] = k
        self.order.append(r.index)
        self.views[k].sent(r)
        accepted = self.schedulers[k].add_request(r, now)
        if accepted:
            self.executors[k].new_work()
        return accepted

    def on_done(self, r: Request) -> None:
        k = self.replica_of.pop(r.index)
        self.views[k].returned(r)
        self.loops[k].metrics.record_request(r)


class ClusterSimulation:
    """The cluster's replicas (`loops[k]`, each a `ServingLoop` with its own metrics) and their
    shared frontend and router."""

    def __init__(self, specs: list[RequestSpec], schedulers: list[Scheduler], router: Router,
                 costs: CostModel | list[CostModel], *,
                 skip_quiet: bool = True, max_concurrency: int | None = None, output_seed: int = 0,
                 use_timestamps: bool = True, verify_every_step: bool = False, on_step=None,
                 logs: list[RequestLog] | None = None, progress=None) -> None:
        self.clock = ClusterClock()
        self.num_requests = len(specs)
        self.router = router
        if not isinstance(costs, list):  # one cost model for every replica (the same hardware)
            costs = [costs] * len(schedulers)
        self.executors = [ReplicaExecutor(c, self.clock, skip_quiet=skip_quiet) for c in costs]
        self.views = [ReplicaView(k, s) for k, s in enumerate(schedulers)]
        self.dispatch = Dispatch(router, self.views, schedulers, self.executors, session_ids(specs))
        self.frontend = Frontend(specs, self.dispatch, max_concurrency=max_concurrency,  # type: ignore[arg-type]
                                 use_timestamps=use_timestamps, make_request=partial(_new_request, output_seed),
                                 on_done=self.dispatch.on_done)
        if logs is None:
            logs = [RequestLog(replica=k) for k in range(len(schedulers))]
        step_hook: Callable | None = None
        self.loops = []
        for k, (sched, ex) in enumerate(zip(schedulers, self.executors)):
            if on_step is not None:
                step_hook = partial(on_step, k)
            self.loops.append(ServingLoop([], sched, ex, output_seed=output_seed, verify_every_step=verify_every_step,
                                          on_step=step_hook, keep_requests=False, log=logs[k], progress=progress,
                                          frontend=self.frontend))
        self.dispatch.loops = self.loops
        self.progress = progress

    @property
    def schedulers(self) -> list[Scheduler]:
        return self.dispatch.schedulers

    def _arrivals(self):
        env, fe, clock = self.clock.env, self.frontend, self.clock
        while True:
            fe.deliver(env.now)  # the dispatch wakes each replica it queues a request on
            t = fe.next_due_time
            if t < float("inf"):
                wake = env.timeout(t - env.now)
            elif fe.has_future_requests or any(s.has_work for s in self.schedulers):
                wake = None  # follow-ups or blocked requests may still come
            else:
                for ex in self.executors:  # nothing will arrive again: idle loops see that and end
                    ex.new_work()
                return
            changed = clock.arrivals_changed
            yield (changed if wake is None else first_of(env, wake, changed))
            if changed.triggered:
                clock.arrivals_changed = env.event()

    def run(self) -> None:
        env = self.clock.env
        with deferred():  # Ctrl-C/kill stop the run only at a step boundary
            for loop in self.loops:
                loop.executor.prepare(loop)
            env.process(self._arrivals())
            bodies = [env.process(loop.body()) for loop in self.loops]
            with fewer_collections():
                env.run(until=simpy.AllOf(env, bodies))
        if self.progress is not None:
            self.progress.close()
