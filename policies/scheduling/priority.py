"""Priority scheduling, as vLLM V1's `priority` policy: lower `priority` value first, ties by
arrival time (then by arrival order); the preemption victim is the running request with the
highest value, latest arrival among equals (and of those, the first in running order, as vLLM's
`max` picks)."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling.base import SchedulerConfig, SchedulingPolicy


@dataclass
class PriorityConfig(SchedulerConfig):
    name: str = "priority"


@register_scheduling("priority", PriorityConfig)
class PriorityPolicy(SchedulingPolicy):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._heap: list = []
        self._seq = itertools.count()  # arrival order: ties on (priority, arrival time)
        # request -> its position, kept across preemptions (requests hash by identity)
        self._arrival_order: dict = {}

    def _push(self, request) -> None:
        order = self._arrival_order.setdefault(request, next(self._seq))
        heapq.heappush(self._heap, (request.priority, request.arrival_time, order, request))

    def add(self, request) -> None:
        self._push(request)

    def readd_preempted(self, request) -> None:
        self._push(request)  # back in its original place among equals

    def pop(self):
        return heapq.heappop(self._heap)[3]

    def peek(self):
        return self._heap[0][3]

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return (entry[3] for entry in sorted(self._heap))

    def victim(self, running):
        # vLLM's rule exactly: max() keeps the first of equals, so among requests of the same
        # priority and arrival time the one admitted first is preempted.
        return max(running, key=lambda r: (r.priority, r.arrival_time))
