"""Assemble the serving core from configs: the one place both executors build it."""

from __future__ import annotations

from typing import Callable

from apcsim.core.block_pool import BlockPool
from apcsim.core.kv_cache_manager import KVCacheManager
from apcsim.core.scheduler import Scheduler
from policies.eviction.base import EvictionConfig
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from policies.scheduling.base import SchedulerConfig
from policies.types import PolicyContext

NO_CACHING = "none"


def make_scheduler(
    eviction: EvictionConfig | None,
    scheduling: SchedulerConfig,
    *,
    num_blocks: int,
    block_size: int,
    recompute_cost: Callable[[int], float],
    kv_options: dict | None = None,
) -> Scheduler:
    """`eviction=None` means prefix caching off, the same as the `none` policy. `kv_options`:
    keyword arguments of `KVCacheManager` (hash_algo, verify_tokens)."""
    name = NO_CACHING if eviction is None else eviction.name
    entry = EVICTION_POLICIES.get(name)
    if entry is None:
        raise KeyError(f"unknown eviction policy {name!r}; known: {', '.join(sorted(EVICTION_POLICIES))}")
    sched_entry = SCHEDULING_POLICIES.get(scheduling.name)
    if sched_entry is None:
        raise KeyError(f"unknown scheduling policy {scheduling.name!r}; known: {', '.join(sorted(SCHEDULING_POLICIES))}")
    ctx = PolicyContext(block_size=block_size, num_blocks=num_blocks, recompute_cost=recompute_cost)
    policy = entry.cls(eviction if eviction is not None else entry.config_cls(), ctx)
    pool = BlockPool(num_blocks, policy)
    return Scheduler(scheduling, sched_entry.cls(scheduling), KVCacheManager(pool, block_size, **(kv_options or {})))
