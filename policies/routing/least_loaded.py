"""Least loaded: the replica with the least work in flight.

Observes only the router's own counters of what it sent and what came back: `by=requests`
counts requests in flight (ties: fewer tokens, then the lower index), `by=tokens` counts their
prompt + max output tokens (ties: fewer requests, then the lower index). Cache contents are
ignored, so load is even and prefixes scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing.base import Router, RouterConfig

BY = ("requests", "tokens")


@dataclass
class LeastLoadedConfig(RouterConfig):
    name: str = "least_loaded"
    by: str = "requests"  # requests | tokens


@register_routing("least_loaded", LeastLoadedConfig)
class LeastLoadedRouter(Router):
    """Fewest requests (or tokens) in flight; observes the router's own counters."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if cfg.by not in BY:
            raise ValueError(f"router.by must be one of {', '.join(BY)}, got {cfg.by!r}")

    def route(self, request, replicas) -> int:
        if self.cfg.by == "tokens":
            return min(range(len(replicas)),
                       key=lambda i: (replicas[i].tokens_in_flight, replicas[i].requests_in_flight, i))
        return min(range(len(replicas)),
                   key=lambda i: (replicas[i].requests_in_flight, replicas[i].tokens_in_flight, i))
