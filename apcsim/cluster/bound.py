"""The cluster's offline bound: the hit rate of ONE cache with the cluster's whole capacity.

Routing decides which of N separate caches sees each prompt; pooling them removes that choice
(every prefix is cached once, in one place), so the pooled hit rate is the ceiling a router
approaches, and Belady on the pool is the ceiling for any eviction policy too. It is a reference,
not a theorem: the pooled engine's timing and eviction order differ from the replicas'.
Each is one single-engine run of the
same workload with num_gpu_blocks = N x the replica's, and the batch limits (max_num_seqs,
max_num_batched_tokens) x N so that the pooled engine is not the bottleneck the replicas are not.
"""

from __future__ import annotations

import dataclasses

from apcsim.config import SimConfig
from apcsim.outputs.progress import Progress
from apcsim.sim.cost_model import CostModel


def pooled_config(cfg: SimConfig, num_blocks: int, policy) -> SimConfig:
    n = cfg.num_replicas
    sched = dataclasses.replace(cfg.scheduler, max_num_seqs=cfg.scheduler.max_num_seqs * n,
                                max_num_batched_tokens=cfg.scheduler.max_num_batched_tokens * n)
    # The pooled cache is N replicas' memory: a GPU of N times the memory holds it (no warning
    # that the cache does not fit); only the KV sizing reads memory_gib, not the step times.
    hw = dataclasses.replace(cfg.hardware, memory_gib=cfg.hardware.memory_gib * n)
    return dataclasses.replace(cfg, num_replicas=1, num_gpu_blocks=num_blocks * n, scheduler=sched, policy=policy,
                               hardware=hw,
                               cluster_bound=False, progress=Progress.off)


def pooled_bound(cfg: SimConfig, cost: CostModel) -> dict:
    """Hit rates of the pooled cache under the configured policy and under belady."""
    from apcsim.run import num_blocks_for, simulate
    from policies.registry import EVICTION_POLICIES

    blocks = num_blocks_for(cfg)
    out = {"num_gpu_blocks": blocks * cfg.num_replicas}
    policies = [("policy", cfg.policy)] if cfg.policy is not None else []
    policies.append(("belady", EVICTION_POLICIES["belady"].config_cls()))
    for label, policy in policies:
        m = simulate(pooled_config(cfg, blocks, policy), cost=cost).metrics
        key = f"{policy.name}_hit_rate" if label == "policy" else "belady_hit_rate"
        out[key] = m["prefix_cache_hit_rate"]
    return out
