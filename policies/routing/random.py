"""Uniformly random replica, from the router's own seeded stream (the run's seed, its own child
sequence: the same config picks the same replicas every run).

Observes nothing. Balanced in expectation only; the baseline a cache-aware router must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.registry import register_routing
from policies.routing.base import Router, RouterConfig


@dataclass
class RandomConfig(RouterConfig):
    name: str = "random"


@register_routing("random", RandomConfig)
class RandomRouter(Router):
    """A uniformly random replica (seeded); observes nothing."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._rng = np.random.default_rng(ctx.seed_seq)

    def route(self, request, replicas) -> int:
        return int(self._rng.integers(len(replicas)))
