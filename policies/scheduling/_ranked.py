"""A base for waiting queues ordered by a key that depends on the cache or the clock.

Requests wait in arrival order (a preempted one goes back to the front, as under FCFS). The
order is computed when the scheduler calls `refresh()` (once at the start of each step, and
before it checks the head between steps), over the first `max_ranked` waiting requests only:
ranking probes each one's cache hit, so a long queue would cost O(queue) per step. Beyond the
window requests wait in arrival order (SGLang likewise falls back to FCFS for long queues).
Within a step the ranking is not redone after each admission. The preemption victim is the last
admitted (vLLM's default; `scheduler.preemption` can choose another rule).
"""

from __future__ import annotations

import abc
import itertools
from collections import deque
from dataclasses import dataclass

from policies.scheduling.base import SchedulerConfig, SchedulingPolicy


@dataclass
class RankedConfig(SchedulerConfig):
    max_ranked: int = 128  # waiting requests ranked per step; the rest wait in arrival order


class RankedPolicy(SchedulingPolicy):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.max_ranked < 1:
            raise ValueError(f"scheduler.max_ranked must be >= 1, got {cfg.max_ranked}")
        self._queue: deque = deque()  # arrival order; preempted requests at the front
        self._order: list | None = None  # the ranked window, best first; None: stale
        self._seq = itertools.count()
        self._arrival: dict = {}  # request -> arrival order (ties in keys)

    @abc.abstractmethod
    def rank(self, window: list) -> list:
        """The window's requests, best first (the window is in queue order)."""

    def add(self, request) -> None:
        self._arrival.setdefault(request, next(self._seq))
        self._queue.append(request)
        self._order = None

    def readd_preempted(self, request) -> None:
        self._queue.appendleft(request)
        self._order = None

    def refresh(self) -> None:
        self._order = None

    def _ranked(self) -> list:
        if self._order is None:
            window = list(itertools.islice(self._queue, self.cfg.max_ranked))
            self._order = self.rank(window)
        return self._order

    def peek(self):
        return self._ranked()[0]

    def pop(self):
        r = self._ranked().pop(0)
        self._queue.remove(r)  # near the front: the window is the queue's head
        if not self._order:
            self._order = None
        return r

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self):
        ranked = self._ranked()
        return itertools.chain(ranked, itertools.islice(self._queue, len(ranked), None))

    def victim(self, running):
        return running[-1]
