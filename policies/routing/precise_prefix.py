"""Precise prefix affinity (llm-d's precise prefix-cache scorer, which learns each replica's
cache from its KV events).

Observes the replicas' real cache contents through a read-only probe (how many leading blocks
of this prompt each holds now), their queue depths, and the router's own in-flight counts.

The request goes to the replica holding the most leading blocks of its prompt; ties (no replica
holding any, too) go to the least loaded. Guard: a replica with more than `max_waiting` requests
in its waiting queue is skipped (unless every replica is over it), so a hot prefix does not
pile every request onto one replica; `max_waiting=0` turns the guard off.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing.base import Router, RouterConfig, least_loaded


@dataclass
class PrecisePrefixConfig(RouterConfig):
    name: str = "precise_prefix"
    max_waiting: int = 8  # guard: skip a replica whose queue is longer; 0: off


@register_routing("precise_prefix", PrecisePrefixConfig)
class PrecisePrefixRouter(Router):
    """Most leading prompt blocks in the replica's real cache (probed), then least loaded; a
    replica whose queue exceeds `max_waiting` is skipped."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if cfg.max_waiting < 0:
            raise ValueError(f"router.max_waiting must be >= 0, got {cfg.max_waiting}")
        self.num_guarded = 0

    def candidates(self, replicas) -> list[int]:
        everyone = list(range(len(replicas)))
        if self.cfg.max_waiting <= 0:
            return everyone
        ok = [i for i in everyone if replicas[i].num_waiting <= self.cfg.max_waiting]
        return ok or everyone

    def route(self, request, replicas) -> int:
        cand = self.candidates(replicas)
        held = {i: replicas[i].cached_prefix_blocks(request) for i in cand}
        best = max(held.values())
        k = least_loaded(replicas, [i for i in cand if held[i] == best])
        if len(cand) < len(replicas) and best < max(r.cached_prefix_blocks(request) for r in replicas):
            self.num_guarded += 1  # the guard sent it away from a replica holding more
        return k

    def stats(self) -> dict:
        return {"guard_redirects": self.num_guarded}
