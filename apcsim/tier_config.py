"""The host KV tier from a run's config: its checks, its size and link (apcsim.core.host_tier's
`TierParts`), and its offline bound after the run. Kept apart from apcsim.run, which assembles
every run, so that the tier's setup reads in one place."""

from __future__ import annotations

from apcsim.config import SimConfig
from apcsim.core.build import NO_CACHING, check_host_tier
from apcsim.core.host_tier import HostLink, TierParts
from apcsim.core.scheduler import Scheduler
from apcsim.errors import ConfigError
from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits, fmt_bytes
from apcsim.sim.cost_model import CostModel


def validate_cpu_tier(cfg: SimConfig) -> None:
    t = cfg.cpu_tier
    check_host_tier(t, NO_CACHING if cfg.policy is None else cfg.policy.name, on=t.enabled)
    if not t.enabled:
        return
    if cfg.num_replicas > 1:
        raise ConfigError("cpu_tier is modelled for one engine (num_replicas=1)")
    if t.link_profile is None and (not cfg.hardware.host_link_bw_gbps > 0 or cfg.hardware.host_link_latency_us < 0):
        raise ConfigError(f"cpu_tier needs hardware.host_link_bw_gbps > 0 and host_link_latency_us >= 0 "
                          f"(hardware {cfg.hardware.name} gives {cfg.hardware.host_link_bw_gbps} and "
                          f"{cfg.hardware.host_link_latency_us})")


def host_tier_parts(cfg: SimConfig, cost: CostModel) -> TierParts | None:
    """The host tier's size and link from the config (None: off)."""
    t = cfg.cpu_tier
    if not t.enabled:
        return None
    block_bytes = cfg.block_size * cfg.model.kv_bytes_per_token_per_gpu(cfg.tp)
    n = t.num_blocks if t.gib is None else int(t.gib * 2**30 // block_bytes)
    if n < 1:
        raise ConfigError(f"cpu_tier.gib={t.gib} holds no block of {fmt_bytes(block_bytes)}")
    check_fits(f"the host tier's bookkeeping of {n} blocks ({POOL_BYTES_PER_BLOCK} bytes a block)",
               n * POOL_BYTES_PER_BLOCK, "lower cpu_tier.num_blocks or cpu_tier.gib")
    hw = cfg.hardware
    if t.link_profile is not None:
        from apcsim.calibration.host_link import read_link_profile

        fit = read_link_profile(t.link_profile)
        link = HostLink(fit["load"].bw_gbps, fit["load"].latency_us, block_bytes,
                        fit["store"].bw_gbps, fit["store"].latency_us)
    else:
        link = HostLink(hw.host_link_bw_gbps, hw.host_link_latency_us, block_bytes)
    return TierParts(t, n, link, cost.recompute_time)


def tier_bound_rates(specs, order: list[int], scheduler: Scheduler, output_seed: int) -> dict:
    """Timing-free replays of the run's arrival order through one cache of the GPU's capacity
    and one of the GPU's plus the host's (apcsim.cluster.bound: LRU and Belady)."""
    from apcsim.cluster.bound import pooled_bound

    sched = scheduler
    gpu = sched.kv.pool.num_blocks
    return {"gpu": pooled_bound(specs, order, output_seed, sched.kv, gpu),
            "gpu_plus_host": pooled_bound(specs, order, output_seed, sched.kv, gpu + sched.host_tier.num_blocks)}
