"""Approximate prefix affinity (SGLang's cache-aware router, llm-d's approximate prefix scorer).

Observes the router's own index of block keys per replica (`_prefix_index`: an LRU of what it
routed there, never the replicas' real caches) and its own in-flight counts.

Per request, as SGLang's cache-aware policy does:
1. Guard: when the load is imbalanced, i.e. max - min requests in flight > `balance_abs_threshold`
   and max > `balance_rel_threshold` * min, the request goes to the least-loaded replica.
2. Otherwise, if the best-matching replica's index holds at least `cache_threshold` of the
   prompt's blocks, it goes there (ties: the least loaded);
3. otherwise to the replica whose index is smallest (most room for a new prefix; ties: least
   loaded).
The prompt's keys are then recorded in the chosen replica's index.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.registry import register_routing
from policies.routing._prefix_index import ApproxPrefixIndex
from policies.routing.base import Router, RouterConfig, least_loaded


@dataclass
class ApproxPrefixConfig(RouterConfig):
    name: str = "approx_prefix"
    cache_threshold: float = 0.5  # matched fraction of the prompt's blocks that wins affinity
    balance_abs_threshold: int = 32  # guard: max - min requests in flight above this ...
    balance_rel_threshold: float = 1.5  # ... and max above this times min: route by load
    capacity_blocks: int = 0  # the index's blocks per replica; 0: the replica's cache size


@register_routing("approx_prefix", ApproxPrefixConfig)
class ApproxPrefixRouter(Router):
    """Prefix affinity from the router's own LRU of routed block keys, with SGLang's balance
    guard; observes its own index and in-flight counts, never the replicas' caches."""

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        if not 0 <= cfg.cache_threshold <= 1:
            raise ValueError(f"router.cache_threshold must be in [0, 1], got {cfg.cache_threshold}")
        caps = [cfg.capacity_blocks or b for b in ctx.replica_blocks]
        self.index = ApproxPrefixIndex(caps)
        self.num_guarded = 0
        self.num_affinity = 0

    def imbalanced(self, replicas) -> bool:
        loads = [r.requests_in_flight for r in replicas]
        hi, lo = max(loads), min(loads)
        return hi - lo > self.cfg.balance_abs_threshold and hi > self.cfg.balance_rel_threshold * lo

    def route(self, request, replicas) -> int:
        keys = request.prompt_block_keys()
        if self.imbalanced(replicas):
            self.num_guarded += 1
            k = least_loaded(replicas)
        else:
            matched = [self.index.matched(i, keys) for i in range(len(replicas))]
            best = max(matched)
            if keys and best / len(keys) >= self.cfg.cache_threshold and best > 0:
                self.num_affinity += 1
                k = least_loaded(replicas, [i for i, m in enumerate(matched) if m == best])
            else:
                smallest = min(self.index.size(i) for i in range(len(replicas)))
                k = least_loaded(replicas, [i for i in range(len(replicas)) if self.index.size(i) == smallest])
        self.index.record(k, keys)
        return k

    def stats(self) -> dict:
        return {"guard_fired": self.num_guarded, "affinity_hits": self.num_affinity}
