"""Warm requests first, with aging so that cold ones cannot starve (vllm-project/vllm#53277).

Each waiting request scores  cached_fraction + wait / aging_s,  where cached_fraction is the
share of its prompt the cache holds now (0..1) and wait the time since it arrived; the highest
score goes first (ties by arrival). A warm request beats a cold one that arrived at the same
time, but every second of waiting is worth 1/aging_s of cache: a request that has waited
aging_s longer than another outranks it whatever their hits.

The bound: a cold request R (fraction 0) that has waited w outranks every request that arrived
after it with wait < w - aging_s. So once R has waited aging_s, no request arriving after that
moment can pass it, and R waits at most aging_s plus the time to admit requests that arrived
before R + aging_s and still outrank it; with the server saturated by a stream of warm arrivals
that is aging_s plus the admission time of the requests queued ahead of R (tests show it).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling._ranked import RankedConfig, RankedPolicy


@dataclass
class WarmFirstConfig(RankedConfig):
    name: str = "warm_first"
    aging_s: float = 2.0  # seconds of waiting worth a whole prompt's cache hit


@register_scheduling("warm_first", WarmFirstConfig)
class WarmFirstPolicy(RankedPolicy):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if not cfg.aging_s > 0:
            raise ValueError(f"scheduler.aging_s must be > 0, got {cfg.aging_s}")

    def score(self, r) -> float:
        hit = self.cached_blocks(r) * self.block_size / max(r.num_tokens, 1)
        return hit + (self.clock.now - r.arrival_time) / self.cfg.aging_s

    def rank(self, window: list) -> list:
        arrival = self._arrival
        return sorted(window, key=lambda r: (-self.score(r), arrival[r]))
