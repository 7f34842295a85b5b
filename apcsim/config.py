"""Typed config schemas and their registration in Hydra's ConfigStore.

The primary schema is `SimConfig`. Policy, scheduler and workload options come from their
registries (one file per policy or workload, nothing to add here); hardware and model presets
are YAML files in `conf/` checked against `HardwareConfig` and `ModelConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from apcsim.core.cache_config import CacheConfig
from apcsim.core.tier_values import HostTierConfig
from apcsim.hardware import HardwareConfig, ModelConfig
from apcsim.outputs.progress import Progress
from apcsim.workloads import WORKLOADS, WorkloadConfig
from policies.eviction.base import EvictionConfig
from policies.registry import EVICTION_POLICIES, ROUTING_POLICIES, SCHEDULING_POLICIES
from policies.routing.base import RouterConfig
from policies.scheduling.base import SchedulerConfig

# omegaconf.MISSING (a mandatory value), spelled out: a run whose config comes from the CLI's
# fast path (apcsim.cli.fast_run) unpickles these schemas without importing OmegaConf or Hydra.
MISSING = "???"


@dataclass
class ReportConfig:
    enabled: bool = True
    # "inline" embeds plotly.js (a report that opens offline, ~4 MB); "cdn" links it (small file).
    plotlyjs: str = "inline"


# Sweep nodes: in SimConfig (keys `sweep` and `tune`) so that a typo is a composition
# error; left out of a job's config fingerprint (`apcsim.sweep.job.config_fingerprint`): none of
# them changes a simulation's results. They live here, not in apcsim/sweep/, because the config
# is below everything that reads it (the sweep package imports the config, never the reverse).
@dataclass
class SweepConfig:
    # A multirun job whose directory already holds metrics.json from the same config is not
    # simulated again (re-running a sweep only fills in what is missing or failed); true forces it.
    rerun: bool = False
    # A multirun in which any job failed exits with status 1 once every job ran and sweep.csv /
    # sweep.html are written (so scripts and CI notice); false: exit 0 and leave it to `status`.
    fail_on_error: bool = True


@dataclass
class TuneConfig:
    """The value a job returns to an optimising sweeper (hydra-optuna-sweeper), to minimise.

    Feasible (TTFT p99 <= target and no request rejected): the KV cache's capacity in tokens,
    num_gpu_blocks * block_size, i.e. its memory. Infeasible: max_capacity_tokens * (1 + ttft_p99 /
    target), worse than any feasible point and still graded, so the sampler moves toward the
    target. A failed job returns +inf."""

    ttft_p99_target_s: float = 1.0
    max_capacity_tokens: int = 1 << 20  # an upper bound of num_gpu_blocks * block_size over the search space


@dataclass
class SimConfig:
    block_size: int = 16
    num_gpu_blocks: Optional[int] = None  # None: derived from gpu_memory_utilization
    gpu_memory_utilization: float = 0.9
    max_concurrency: Optional[int] = None  # client-side cap on requests in flight
    seed: int = 0
    # No default: without `+policy=...` prefix caching is off.
    policy: Optional[EvictionConfig] = None
    scheduler: SchedulerConfig = MISSING
    # Release-dependent behaviours of the KV cache manager; the scheduler's are in `scheduler`.
    # The `vllm=` preset group (conf/vllm/) sets both to one release's and names it here.
    cache: CacheConfig = field(default_factory=CacheConfig)
    semantics: str = "vllm-0.32"
    # A host-memory KV tier below the GPU pool (apcsim/core/host_tier.py, docs/tiers.md); off by
    # default: cpu_tier.num_blocks=... or cpu_tier.gib=... turns it on.
    cpu_tier: HostTierConfig = field(default_factory=HostTierConfig)
    workload: WorkloadConfig = MISSING
    hardware: HardwareConfig = MISSING
    model: ModelConfig = MISSING
    # "calibrated": step times fitted on profiled kernel timings of (hardware, model), see
    # apcsim/profiles; "roofline": the spec-sheet bound, for presets without a profile.
    cost_model: str = "calibrated"
    # A calibration profile CSV of your own (e.g. from `python -m engine.profile`) instead of the
    # bundled one of (hardware, model, tp); its .meta.json, if any, must name the same three.
    profile: Optional[str] = None
    tp: int = 1  # tensor-parallel degree of one replica (GPUs sharing each layer)
    # A cluster: num_replicas serving loops (each its own cache, scheduler and policies, sized as
    # above) on one clock behind `router` (policies/routing/); 1 is the single engine, untouched.
    num_replicas: int = 1
    router: Optional[RouterConfig] = None  # conf/config.yaml's `router` group sets it (round_robin)
    # num_replicas > 1: also replay the requests through one cache of the cluster's whole capacity
    # (LRU and belady; apcsim/cluster/bound.py), as metrics.json's cluster.pooled_bound.
    cluster_bound: bool = False
    # Heterogeneous replicas (num_replicas entries each; unset: every replica as configured
    # above): a hardware preset name (conf/hardware/) and a num_gpu_blocks per replica, e.g.
    # replica_hardware=[a100,h100] replica_num_gpu_blocks=[4000,8000].
    replica_hardware: Optional[List[str]] = None
    replica_num_gpu_blocks: Optional[List[int]] = None
    report: ReportConfig = field(default_factory=ReportConfig)
    verify: bool = False  # check every block-pool and scheduler invariant after every step (slow)
    skip_quiet: bool = True  # skip stretches of pure decode in one event (results are identical)
    # Block-key hash: xxh3_64 (fastest), xxh3_128 or sha256 (see apcsim/core/block_hash.py and the
    # README's collision odds). verify_tokens: compare token ids on every hit; a mismatch (a hash
    # collision) is a miss, counted in metrics.json's hash_collisions.
    hash_algo: str = "xxh3_64"
    verify_tokens: bool = False
    experiment: Optional[Any] = None  # set by +experiment=... presets
    progress: Progress = Progress.auto  # a bar over simulated requests (see apcsim.outputs.progress)
    sweep: SweepConfig = field(default_factory=SweepConfig)  # multirun: skip jobs already done
    tune: Optional[TuneConfig] = None  # set by tuning presets: the job returns an objective


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    # ${pid:} in the default run directories; cached, so a launcher's workers see the parent's.
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="apcsim_schema", node=SimConfig)
    for name, entry in EVICTION_POLICIES.items():
        cs.store(group="policy", name=name, node=entry.config_cls)
    for name, entry in SCHEDULING_POLICIES.items():
        cs.store(group="scheduler", name=name, node=entry.config_cls)
    for name, entry in ROUTING_POLICIES.items():
        cs.store(group="router", name=name, node=entry.config_cls)
    for name, entry in WORKLOADS.items():
        cs.store(group="workload", name=name, node=entry.config_cls)
    # Schemas the YAML presets extend (`defaults: [/schema/hardware@_here_]`); a group of their
    # own so that they are not listed as hardware or model options.
    cs.store(group="schema", name="hardware", node=HardwareConfig)
    cs.store(group="schema", name="model", node=ModelConfig)
