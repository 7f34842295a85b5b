"""Round robin: replica 0, 1, ..., N-1, 0, ... in arrival order.

Observes nothing but its own counter, so it spreads requests evenly in number and ignores both
load (a replica stuck with long requests keeps getting its share) and cache contents (a prefix
lands on every replica in turn, so each caches it once).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing.base import Router, RouterConfig


@dataclass
class RoundRobinConfig(RouterConfig):
    name: str = "round_robin"


@register_routing("round_robin", RoundRobinConfig)
class RoundRobinRouter(Router):
    """Replicas in turn, in arrival order; observes nothing."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._next = 0

    def route(self, request, replicas) -> int:
        k = self._next
        self._next = (k + 1) % len(replicas)
        return k
