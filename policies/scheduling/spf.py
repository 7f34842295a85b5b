"""Shortest prefill first: the waiting request with the fewest prompt tokens left to compute
after its cache hit goes first (ties by arrival). It minimises mean TTFT when prefill dominates,
at the price of long cold prompts waiting behind short or warm ones (no aging: see
`warm_first` for a bounded variant)."""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_scheduling
from policies.scheduling._ranked import RankedConfig, RankedPolicy


@dataclass
class SPFConfig(RankedConfig):
    name: str = "spf"


@register_scheduling("spf", SPFConfig)
class SPFPolicy(RankedPolicy):
    def rank(self, window: list) -> list:
        hit, arrival = self.cached_blocks, self._arrival
        bs = self.block_size
        return sorted(window, key=lambda r: (r.num_tokens - hit(r) * bs, arrival[r]))
