"""Longest prefix match first (SGLang's `lpm`): among the waiting requests, the one whose prompt
has the most blocks in the cache now goes first; ties by arrival. It raises the hit rate when
many requests share prefixes that may soon be evicted, and can starve a request with a cold
prompt as long as warm ones keep coming (sgl-project/sglang#31954); `warm_first` bounds that."""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling._ranked import RankedConfig, RankedPolicy


@dataclass
class LPMConfig(RankedConfig):
    name: str = "lpm"


@register_scheduling("lpm", LPMConfig)
class LPMPolicy(RankedPolicy):
    def rank(self, window: list) -> list:
        hit, arrival = self.cached_blocks, self._arrival
        return sorted(window, key=lambda r: (-hit(r), arrival[r]))
