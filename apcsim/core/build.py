"""Assemble the serving core from configs: the one place both executors build it."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from apcsim.core.block_hash import HashAlgo, get_hash_algo
from apcsim.core.block_pool import BlockPool
from apcsim.core.cache_config import CacheConfig
from apcsim.core.future import FutureOracle
from apcsim.core.host_tier import RELOAD_MODES, WRITE_MODES, HostTier, HostTierConfig, TierParts
from apcsim.core.kv_cache_manager import KVCacheManager, uses_content_keys
from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.errors import ConfigError
from policies.eviction.base import EvictionConfig
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from policies.scheduling.base import SchedulerConfig
from policies.types import Clock, PolicyContext

NO_CACHING = "none"


def policies_need_future(names: Iterable[str]) -> bool:
    """Whether any of these eviction policies (a GPU pool's, a host tier's) reads the workload's
    future (`needs_future`: Belady), so needs every request spec before the run. An unknown name
    reads nothing here; make_scheduler reports it."""
    return any((e := EVICTION_POLICIES.get(n)) is not None and e.cls.needs_future for n in names)


def check_host_tier(t: HostTierConfig, gpu_policy: str, *, on: bool) -> None:
    """cpu_tier's own checks, with the messages the command line prints. A run's config
    validation (apcsim.tier_config) makes them before anything is built, `make_scheduler` again
    for callers that build a core without a config. `on`: the tier is used; its values are
    checked even when it is not (a typo fails either way), its policies only when it is."""
    checks = [
        (t.num_blocks >= 0, f"cpu_tier.num_blocks must be >= 0, got {t.num_blocks}"),
        (t.gib is None or t.gib > 0, f"cpu_tier.gib must be > 0, got {t.gib}"),
        (t.write in WRITE_MODES, f"cpu_tier.write must be one of {', '.join(WRITE_MODES)}, got {t.write!r}"),
        (t.reload in RELOAD_MODES, f"cpu_tier.reload must be one of {', '.join(RELOAD_MODES)}, got {t.reload!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if not on:
        return
    caching = sorted(n for n, e in EVICTION_POLICIES.items() if e.cls.enables_caching)
    if t.policy not in caching:
        raise ConfigError(f"cpu_tier.policy must be one of {', '.join(caching)}, got {t.policy!r}")
    gpu = EVICTION_POLICIES.get(gpu_policy)
    if gpu is not None and not gpu.cls.enables_caching:  # an unknown name fails where it is looked up
        raise ConfigError("cpu_tier needs prefix caching on the GPU: add +policy=... (e.g. +policy=lru)")


def make_scheduler(
    eviction: EvictionConfig | None,
    scheduling: SchedulerConfig,
    *,
    num_blocks: int,
    block_size: int,
    recompute_cost: Callable[[int], float],
    specs: Sequence[RequestSpec] | None = None,
    kv_options: dict | None = None,
    cache: CacheConfig | None = None,
    host_tier: TierParts | None = None,
) -> Scheduler:
    """`eviction=None` means prefix caching off, the same as the `none` policy. `specs` (the
    whole workload, in the order the serving loop numbers requests) is needed only by a policy
    that knows the future (`belady`). `kv_options`: keyword arguments of `KVCacheManager`
    (hash_algo, verify_tokens, content_keys). `num_blocks` is vLLM's num_gpu_blocks: with `cache.null_block`
    (default: vLLM 0.32's `CacheConfig()`) one of them is reserved and the pool gets the rest.
    `host_tier`: a host-memory KV tier below the pool (apcsim.core.host_tier), with its own
    eviction policy."""
    cache = cache if cache is not None else CacheConfig()
    num_blocks = cache.usable_blocks(num_blocks)
    if num_blocks < 1:
        raise ValueError("num_gpu_blocks must leave at least one block besides the null block")
    name = NO_CACHING if eviction is None else eviction.name
    entry = EVICTION_POLICIES.get(name)
    if entry is None:
        raise KeyError(f"unknown eviction policy {name!r}; known: {', '.join(sorted(EVICTION_POLICIES))}")
    sched_entry = SCHEDULING_POLICIES.get(scheduling.name)
    if sched_entry is None:
        raise KeyError(f"unknown scheduling policy {scheduling.name!r}; known: {', '.join(sorted(SCHEDULING_POLICIES))}")
    kv_options = dict(kv_options or {})
    algo = kv_options.get("hash_algo", "xxh3_64")
    kv_options["hash_algo"] = algo = algo if isinstance(algo, HashAlgo) else get_hash_algo(algo)
    host_entry = None
    if host_tier is not None:
        check_host_tier(host_tier.cfg, name, on=True)
        host_entry = EVICTION_POLICIES[host_tier.cfg.policy]
    future = None
    if policies_need_future([name, *([host_tier.cfg.policy] if host_tier is not None else [])]):
        if specs is None:
            raise ValueError(f"eviction policy {name!r} needs the workload's future (the request specs)")
        content = uses_content_keys(algo, kv_options.get("verify_tokens", False), kv_options.get("content_keys", True))
        future = FutureOracle(specs, block_size, algo, content)  # keyed exactly as the manager keys blocks
    clock = Clock()
    ctx = PolicyContext(block_size=block_size, num_blocks=num_blocks, recompute_cost=recompute_cost,
                        clock=clock, future=future)
    policy = entry.cls(eviction if eviction is not None else entry.config_cls(), ctx)
    pool = BlockPool(num_blocks, policy, free_keyless_first=cache.free_keyless_first)
    kv = KVCacheManager(pool, block_size, **kv_options)
    scheduler = Scheduler(scheduling, sched_entry.cls(scheduling), kv, clock=clock, future=future)
    if host_tier is not None:
        hctx = PolicyContext(block_size=block_size, num_blocks=host_tier.num_blocks, recompute_cost=recompute_cost,
                             clock=clock, future=future)
        hpool = BlockPool(host_tier.num_blocks, host_entry.cls(host_entry.config_cls(), hctx))
        pool.track_chain |= hpool.track_chain  # a store copies the GPU block's depth and parent key
        tier = HostTier(host_tier.cfg, hpool, host_tier.link, block_size, host_tier.recompute_time)
        if tier.write_through:
            kv.on_cached = tier.on_gpu_cache
        else:
            pool.on_evict_keyed = tier.on_gpu_evict
        scheduler.host_tier = tier
    return scheduler
