"""The serving core as the tests build it: one roofline cost model, one scheduler factory, one pool
factory. tests/conftest.py hands the same objects out as fixtures; module-level helpers and
Hypothesis tests (which cannot take function-scoped fixtures) import them from here."""

from __future__ import annotations

from typing import Callable, Sequence

from apcsim.core.block_pool import BlockPool
from apcsim.core.build import make_scheduler
from apcsim.core.cache_config import CacheConfig
from apcsim.core.future import StaticFuture
from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.hardware import HardwareConfig, ModelConfig
from apcsim.sim.cost_model import RooflineCostModel
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from policies.types import PolicyContext

# The default hardware and model presets' roofline: what `simulate` uses unless told otherwise.
COST = RooflineCostModel(HardwareConfig(), ModelConfig())

RecomputeCost = Callable[[int], float]


def roofline_recompute(block_size: int, cost: RooflineCostModel = COST) -> RecomputeCost:
    """A block's recompute cost at prefix depth d: the roofline time of its block_size tokens
    after d blocks of context (what a run wires into the policies)."""
    return lambda depth: cost.recompute_time(block_size, depth * block_size)


def unit_recompute(depth: int) -> float:
    """Every block costs the same: for tests whose policy ignores the cost."""
    return 1.0


def linear_recompute(depth: int) -> float:
    return float(depth + 1)  # exact in floating point, grows with depth


def build_scheduler(
    eviction: str = "lru",
    scheduling: str = "fcfs",
    *,
    num_blocks: int = 64,
    bs: int = 16,
    recompute_cost: RecomputeCost | None = None,
    specs: Sequence[RequestSpec] | None = None,
    kv_options: dict | None = None,
    cache: CacheConfig | None = None,
    **sched_kw,
) -> Scheduler:
    """A scheduler over a fresh pool: eviction and scheduling policies by registry name with their
    default configs, `sched_kw` overriding the scheduling config's fields (SchedulerConfig's
    budgets and the policy's own knobs). `recompute_cost` defaults to the roofline's
    (`roofline_recompute(bs)`). `num_blocks` is vLLM's num_gpu_blocks (null block included)."""
    sc = SCHEDULING_POLICIES[scheduling].config_cls(**sched_kw)
    return make_scheduler(EVICTION_POLICIES[eviction].config_cls(), sc, num_blocks=num_blocks, block_size=bs,
                          recompute_cost=recompute_cost if recompute_cost is not None else roofline_recompute(bs),
                          specs=specs, kv_options=kv_options, cache=cache)


def future_for(entry):
    """A future for policies that need one (belady): a fixed, scrambled next use per key."""
    return StaticFuture(lambda key: (key * 7919) % 101) if entry.cls.needs_future else None


def make_pool(name: str, num_blocks: int, overrides: dict | None = None, cost: RecomputeCost = linear_recompute,
              block_size: int = 4) -> BlockPool:
    """A bare block pool under eviction policy `name` (config fields from `overrides`)."""
    entry = EVICTION_POLICIES[name]
    ctx = PolicyContext(block_size=block_size, num_blocks=num_blocks, recompute_cost=cost, future=future_for(entry))
    return BlockPool(num_blocks, entry.cls(entry.config_cls(**(overrides or {})), ctx))
