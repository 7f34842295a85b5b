"""A weighted scorer, as llm-d's endpoint picker (EPP) combines its scorers.

Each replica gets score = prefix_weight * prefix + queue_weight * queue + kv_weight * kv, each
term in [0, 1]:
- prefix: the fraction of the prompt's blocks the replica holds, from the replicas' real caches
  (`prefix=precise`, the probe) or from the router's own LRU index of what it routed
  (`prefix=approximate`, see `_prefix_index`);
- queue: 1 for the shortest waiting queue, 0 for the longest, linear between (min-max
  normalised, as llm-d's queue scorer; 1 for all when the queues are equal);
- kv: 1 - the replica's KV cache usage.
The highest score wins; ties go to the least loaded. Observes queue depths and KV usage (a
metrics scrape), the router's in-flight counts, and the prefix source above. No separate guard:
the load terms are the balance.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing._prefix_index import ApproxPrefixIndex
from policies.routing.base import Router, RouterConfig, least_loaded

PREFIX_SOURCES = ("precise", "approximate")


@dataclass
class WeightedConfig(RouterConfig):
    name: str = "weighted"
    prefix_weight: float = 2.0
    queue_weight: float = 1.0
    kv_weight: float = 1.0
    prefix: str = "precise"  # precise (the replicas' caches) | approximate (the router's index)


@register_routing("weighted", WeightedConfig)
class WeightedRouter(Router):
    """llm-d EPP style: weighted prefix overlap + queue depth + KV utilisation scores."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if cfg.prefix not in PREFIX_SOURCES:
            raise ValueError(f"router.prefix must be one of {', '.join(PREFIX_SOURCES)}, got {cfg.prefix!r}")
        if min(cfg.prefix_weight, cfg.queue_weight, cfg.kv_weight) < 0:
            raise ValueError("router weights must be >= 0")
        self.index = ApproxPrefixIndex(ctx.replica_blocks) if cfg.prefix == "approximate" else None

    def scores(self, request, replicas) -> list[float]:
        cfg = self.cfg
        keys = request.prompt_block_keys()
        n = len(replicas)
        if not keys:
            prefix = [0.0] * n
        elif self.index is None:
            prefix = [r.cached_prefix_blocks(request) / len(keys) for r in replicas]
        else:
            prefix = [self.index.matched(i, keys) / len(keys) for i in range(n)]
        q = [r.num_waiting for r in replicas]
        lo, hi = min(q), max(q)
        queue = [1.0 if hi == lo else (hi - x) / (hi - lo) for x in q]
        return [cfg.prefix_weight * prefix[i] + cfg.queue_weight * queue[i] + cfg.kv_weight * (1.0 - replicas[i].kv_usage)
                for i in range(n)]

    def route(self, request, replicas) -> int:
        s = self.scores(request, replicas)
        best = max(s)
        k = least_loaded(replicas, [i for i, x in enumerate(s) if x == best])
        if self.index is not None:
            self.index.record(k, request.prompt_block_keys())
        return k
