"""First come, first served, as vLLM V1: arrivals join the tail, a preempted request goes back to
the head (it was admitted earliest among those waiting), and the victim is the request admitted
last."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling.base import SchedulerConfig, SchedulingPolicy


@dataclass
class FCFSConfig(SchedulerConfig):
    name: str = "fcfs"


@register_scheduling("fcfs", FCFSConfig)
class FCFSPolicy(SchedulingPolicy):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._queue: deque = deque()

    def add(self, request) -> None:
        self._queue.append(request)

    def readd_preempted(self, request) -> None:
        self._queue.appendleft(request)

    def peek(self):
        return self._queue[0]

    def pop(self):
        return self._queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self):
        return iter(self._queue)

    def victim(self, running):
        return running[-1]
