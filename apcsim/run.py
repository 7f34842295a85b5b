"""One simulation from a composed config: validate, build, run, write the outputs."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from apcsim.calibration.cost_model import make_cost_model
from apcsim.config import SimConfig
from apcsim.core.block_hash import get_hash_algo
from apcsim.core.build import NO_CACHING, make_scheduler, policies_need_future
from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.errors import ConfigError
from apcsim.hardware import activation_bytes, check_tp, kv_cache_blocks
from apcsim.hf_config import resolve_model
from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits, fmt_bytes
from apcsim.interrupt import RunInterrupted
from apcsim.mathutil import cdiv
from apcsim.outputs.metrics import MetricsCollector
from apcsim.outputs.progress import make_progress
from apcsim.outputs.requestlog import RequestLog, uses_priorities
from apcsim.outputs.rundir import streamed
from apcsim.sim.cost_model import CostModel
from apcsim.sim.simulator import Simulation
from apcsim.tier_config import host_tier_parts, tier_bound_rates, validate_cpu_tier
from apcsim.workloads import Workload, open_workload
from policies.scheduling.preemption import PREEMPTION_MODES


def validate(cfg: SimConfig) -> None:
    """Impossible values fail here, before anything runs, with the key's name."""
    checks = [
        (cfg.block_size >= 1, f"block_size must be >= 1, got {cfg.block_size}"),
        (cfg.num_gpu_blocks is None or cfg.num_gpu_blocks >= 1, f"num_gpu_blocks must be >= 1, got {cfg.num_gpu_blocks}"),
        (0 < cfg.gpu_memory_utilization <= 1, f"gpu_memory_utilization must be in (0, 1], got {cfg.gpu_memory_utilization}"),
        (cfg.max_concurrency is None or cfg.max_concurrency >= 1, f"max_concurrency must be >= 1, got {cfg.max_concurrency}"),
        (cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}"),
        (cfg.scheduler.max_num_seqs >= 1, f"scheduler.max_num_seqs must be >= 1, got {cfg.scheduler.max_num_seqs}"),
        (cfg.scheduler.max_num_batched_tokens >= cfg.scheduler.max_num_seqs,
         f"scheduler.max_num_batched_tokens ({cfg.scheduler.max_num_batched_tokens}) must be >= scheduler.max_num_seqs ({cfg.scheduler.max_num_seqs})"),
        (cfg.scheduler.long_prefill_token_threshold >= 0, "scheduler.long_prefill_token_threshold must be >= 0"),
        (cfg.scheduler.max_model_len is None or cfg.scheduler.max_model_len >= 2, "scheduler.max_model_len must be >= 2"),
        (cfg.scheduler.preemption in PREEMPTION_MODES,
         f"scheduler.preemption must be one of {', '.join(PREEMPTION_MODES)}, got {cfg.scheduler.preemption!r}"),
        (cfg.report.plotlyjs in ("inline", "cdn"), f"report.plotlyjs must be inline or cdn, got {cfg.report.plotlyjs!r}"),
    ]
    hw, model = cfg.hardware, cfg.model
    checks += [
        (hw.memory_gib > 0 and hw.peak_tflops > 0 and hw.mem_bw_gbps > 0, f"hardware {hw.name}: memory_gib, peak_tflops and mem_bw_gbps must be > 0"),
        (min(model.num_layers, model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim,
             model.intermediate_size, model.vocab_size, model.dtype_bytes) >= 1, f"model {model.name}: every size must be >= 1"),
        (model.num_heads % model.num_kv_heads == 0, f"model {model.name}: num_heads must be a multiple of num_kv_heads"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    check_tp(hw, model, cfg.tp)
    if model.is_moe and not 1 <= model.experts_per_token <= model.num_experts:
        raise ConfigError(f"model {model.name}: experts_per_token must be in 1..num_experts ({model.num_experts})")
    get_hash_algo(cfg.hash_algo)  # unknown names list the known ones
    validate_cpu_tier(cfg)
    if cfg.num_replicas < 1:
        raise ConfigError(f"num_replicas must be >= 1, got {cfg.num_replicas}")
    if cfg.num_replicas > 1 and cfg.policy is not None and cfg.policy.name == "belady":
        raise ConfigError("+policy=belady knows one engine's future, not a replica's behind a router; "
                          "use cluster_bound=true for the cluster's offline bound (belady on one pooled cache)")


def kv_options(cfg: SimConfig) -> dict:
    return {"hash_algo": cfg.hash_algo, "verify_tokens": cfg.verify_tokens}


def run_extra(cfg: SimConfig, scheduler) -> dict:
    """metrics.json keys that exist only when their option is on (so default outputs keep their shape)."""
    extra = {}
    if cfg.verify_tokens:
        extra["hash_collisions"] = scheduler.stats.hash_collisions
    policy_stats = scheduler.kv.pool.policy.stats()  # e.g. pinned_ttl's pins broken
    if policy_stats:
        extra["policy_stats"] = policy_stats
    if scheduler.host_tier is not None:
        extra["host_tier"] = scheduler.host_tier.summary(scheduler.stats.prefix_cache_queries,
                                                         scheduler.stats.prefix_cache_hits)
    return extra


def config_extra(cfg: SimConfig) -> dict:
    extra = {"hash_algo": cfg.hash_algo} if cfg.hash_algo != "xxh3_64" else {}
    if cfg.tp != 1:
        extra["tp"] = cfg.tp
    if cfg.profile is not None:
        extra["profile"] = cfg.profile
    return extra


def with_model_resolved(cfg: SimConfig) -> SimConfig:
    """The config with `model.hf_config` (if set) read into the model's sizes."""
    model = resolve_model(cfg.model)
    return cfg if model is cfg.model else dataclasses.replace(cfg, model=model)


def num_blocks_for(cfg: SimConfig) -> int:
    if cfg.num_gpu_blocks is not None:
        check_fits("the block pool of num_gpu_blocks=" f"{cfg.num_gpu_blocks} ({POOL_BYTES_PER_BLOCK} bytes a block)",
                   cfg.num_gpu_blocks * POOL_BYTES_PER_BLOCK, "lower num_gpu_blocks")
        return cfg.num_gpu_blocks
    n = kv_cache_blocks(cfg.hardware, cfg.model, cfg.block_size, cfg.gpu_memory_utilization,
                        cfg.scheduler.max_num_batched_tokens, cfg.scheduler.max_num_seqs, cfg.tp)
    if n < 1:
        model, hw = cfg.model, cfg.hardware
        room = kv_room_bytes(cfg)
        block = cfg.block_size * model.kv_bytes_per_token_per_gpu(cfg.tp)
        if room > 0:  # the weights fit, one block does not: the block size is to blame
            raise ConfigError(
                f"block_size={cfg.block_size}: one KV block of model {model.name} is {fmt_bytes(block)}"
                f"{' per GPU' if cfg.tp > 1 else ''}, more than the {fmt_bytes(room)} left for the KV cache in {cfg.gpu_memory_utilization:.0%} of {hw.name}'s "
                f"{hw.memory_gib} GiB after weights and activations; lower block_size")
        per_gpu = "" if cfg.tp == 1 else f", {model.weight_bytes / cfg.tp / 2**30:.1f} GiB per GPU at tp={cfg.tp}"
        raise ConfigError(
            f"model {model.name} ({model.weight_bytes / 2**30:.1f} GiB of weights{per_gpu}) leaves no room for a KV "
            f"cache in {cfg.gpu_memory_utilization:.0%} of {hw.name}'s {hw.memory_gib} GiB"
            + ("" if cfg.tp > 1 else "; try tp=2 or more, or a GPU with more memory")
        )
    return n


def kv_room_bytes(cfg: SimConfig) -> float:
    """What gpu_memory_utilization of each GPU leaves for the KV cache after its share of the
    weights and its activations."""
    return (cfg.hardware.memory_gib * 2**30 * cfg.gpu_memory_utilization - cfg.model.weight_bytes / cfg.tp
            - activation_bytes(cfg.model, cfg.scheduler.max_num_batched_tokens, cfg.scheduler.max_num_seqs, cfg.tp))


def kv_cache_warning(cfg: SimConfig, num_blocks: int) -> str | None:
    """A num_gpu_blocks whose KV cache does not fit the configured GPU: the run models hardware
    that does not exist (a what-if some sweeps want, so a warning, not an error)."""
    block = cfg.block_size * cfg.model.kv_bytes_per_token_per_gpu(cfg.tp)
    room = kv_room_bytes(cfg)
    if cfg.num_gpu_blocks is None or num_blocks * block <= room:
        return None
    hw = cfg.hardware
    return (f"num_gpu_blocks={num_blocks} is {fmt_bytes(num_blocks * block)} of KV cache ({block} bytes a block), "
            f"but {hw.name} has {hw.memory_gib} GiB and gpu_memory_utilization={cfg.gpu_memory_utilization} leaves "
            f"{fmt_bytes(max(room, 0))} after the weights of {cfg.model.name} and activations: at most "
            f"{max(int(room // block), 0)} blocks fit; the run models a larger GPU (hardware.memory_gib=... says so)")


def check_some_request_fits(specs, num_blocks: int, block_size: int, usable: int | None = None) -> None:
    """A cache that no request fits in is a config error; one that only some requests overflow is
    not: the scheduler rejects those (with the reason in requests.csv) and serves the rest.
    `specs`: a list, or a `Workload` (which knows its smallest request without making it).
    `usable`: the blocks requests can hold (num_blocks less the null block, see CacheConfig)."""
    usable = num_blocks if usable is None else usable
    fewest = specs.min_tokens if isinstance(specs, Workload) else min(s.prompt_len + s.output_len for s in specs)
    need = cdiv(fewest, block_size)
    if need > usable:
        held = "" if usable == num_blocks else f", {usable} usable besides the null block"
        raise ConfigError(f"the KV cache ({num_blocks} blocks of {block_size} tokens{held}) is too small for any "
                          f"request: the smallest needs {need} blocks; raise num_gpu_blocks or lower the lengths")


def build_cost_model(cfg: SimConfig) -> CostModel:
    """The step-time model the config selects (`cost_model`, `hardware`, `model`)."""
    return make_cost_model(cfg.cost_model, cfg.hardware, resolve_model(cfg.model), tp=cfg.tp, profile=cfg.profile)


def checked_config(cfg: SimConfig) -> SimConfig:
    """The config with its model resolved (`model.hf_config`), validated: what `build_run` takes."""
    cfg = with_model_resolved(cfg)
    validate(cfg)
    return cfg


@dataclass
class RunParts:
    """What every driver of the serving loop builds from a config before it runs (but the
    workload, which `build_run` hands over apart: the loop holds a request's spec only while it
    needs it, so a long run's memory does not grow with its finished requests)."""

    cfg: SimConfig  # checked (see `checked_config`)
    output_seed: int  # the seed of every request's output tokens
    num_blocks: int  # KV cache blocks
    scheduler: Scheduler

    def loop_kw(self) -> dict:
        """The `ServingLoop` arguments the config sets."""
        cfg = self.cfg
        return {"max_concurrency": cfg.max_concurrency, "output_seed": self.output_seed, "verify_every_step": cfg.verify}

    def metrics_config(self, driver: dict, extra: dict | None = None) -> dict:
        """metrics.json's "config": what ran, the driver's own keys (cost model; device, ...),
        then the seed and semantics, then `extra` (keys only some runs have)."""
        cfg = self.cfg
        return {
            "policy": "none" if cfg.policy is None else cfg.policy.name,
            "scheduler": cfg.scheduler.name,
            "workload": cfg.workload.name,
            "block_size": cfg.block_size,
            "num_gpu_blocks": self.num_blocks,
            "hardware": cfg.hardware.name,
            "model": cfg.model.name,
            **driver,
            "seed": cfg.seed,
            "semantics": cfg.semantics,
            **(extra or {}),
        }


def build_run(cfg: SimConfig, cost: CostModel, *, num_blocks: Callable[[list[RequestSpec]], int] | None = None,
              lazy: bool = False) -> tuple[RunParts, list[RequestSpec] | Workload]:
    """The parts of a run of a checked config, and its workload. Seeds: one SeedSequence(seed),
    spawned into the workload's stream and the outputs'. `cost`: the cost model whose recompute
    estimate the eviction policies use. `num_blocks(specs)`: the KV cache's size (the engine
    measures its device); by default the configured GPU's (`num_blocks_for`), which some
    request must fit. `lazy`: the workload as a `Workload`, whose specs a streamed workload
    makes only as the run reaches them (one replica, no policy that reads the future: those
    need every spec at once); otherwise the list of specs."""
    workload_ss, output_ss = np.random.SeedSequence(cfg.seed).spawn(2)
    # Streamed only where nothing reads the whole workload: a cluster's router, Belady's future,
    # and the host tier's offline bound (a replay of every spec after the run) all do.
    tier_bound = cfg.cpu_tier.enabled and cfg.cpu_tier.bound
    lazy = lazy and cfg.num_replicas == 1 and not needs_future(cfg) and not tier_bound
    workload = open_workload(cfg.workload, vocab_size=cfg.model.vocab_size, seed_seq=workload_ss, materialise=not lazy)
    specs = workload if lazy else workload.specs()
    bs = cfg.block_size
    if num_blocks is None:
        n = num_blocks_for(cfg)
        check_some_request_fits(workload, n, bs, cfg.cache.usable_blocks(n))
    else:
        n = num_blocks(workload.specs() if lazy else specs)
    scheduler = scheduler_for(cfg, cost, n, specs)
    return RunParts(cfg, int(output_ss.generate_state(1)[0]), n, scheduler), specs


def needs_future(cfg: SimConfig) -> bool:
    """Whether an eviction policy (the GPU's, or the host tier's) reads the workload's future
    (Belady): it needs every spec."""
    host = [cfg.cpu_tier.policy] if cfg.cpu_tier.enabled else []
    return policies_need_future([NO_CACHING if cfg.policy is None else cfg.policy.name, *host])


def scheduler_for(cfg: SimConfig, cost: CostModel, num_blocks: int, specs: list[RequestSpec] | Workload) -> Scheduler:
    """A serving core (scheduler, KV cache manager, block pool, policies) of `num_blocks` blocks
    as the config sets it up; a cluster builds one per replica. `specs` is read only by a
    policy that knows the future (never a lazy `Workload`, see `build_run`)."""
    bs = cfg.block_size
    return make_scheduler(
        cfg.policy, cfg.scheduler, num_blocks=num_blocks, block_size=bs,
        recompute_cost=lambda depth: cost.recompute_time(bs, depth * bs),
        specs=specs if isinstance(specs, list) else None, kv_options=kv_options(cfg), cache=cfg.cache,
        host_tier=host_tier_parts(cfg, cost),
    )


@dataclass
class SimOutcome:
    metrics: dict
    simulation: Simulation
    collector: MetricsCollector
    wall_s: float
    interrupted: RunInterrupted | None = None  # the signal that cut the run short, if any
    warnings: tuple[str, ...] = ()  # printed as `apcsim: warning:` lines and kept in run_info.json

    @property
    def status(self) -> str:
        return "ok" if self.interrupted is None else "interrupted"


def simulate(cfg: SimConfig, *, requests_csv: Path | None = None, keep_requests: bool = False,
             cost: CostModel | None = None, use_timestamps: bool = True, on_step=None,
             multirun: bool = False) -> SimOutcome:
    """Run one simulation. `requests_csv`: stream each request's row there as it leaves (flushed,
    so an interrupted run keeps them); otherwise rows are kept in memory (`collector.log.rows`).
    `keep_requests`: keep every `Request` object in `simulation.requests` (tests); by default
    a request is dropped once recorded, so memory does not grow with finished requests.

    A `RunInterrupted` (SIGINT/SIGTERM under `apcsim.interrupt.interruptible`) during the run
    ends it early: the outcome then summarises the requests that finished and says so.

    `cost` replaces the cost model the config selects (validation against a profile file);
    `use_timestamps=False` sends every request at t=0, as the engine's offline mode does;
    `on_step(plan, result)` is called after every executed step; `multirun`: this is one job of
    a sweep (the progress bar stays off unless `progress=on`)."""
    cfg = checked_config(cfg)
    t0 = time.perf_counter()
    if cost is None:
        cost = build_cost_model(cfg)
    run, specs = build_run(cfg, cost, lazy=True)
    warnings = tuple(w for w in (kv_cache_warning(cfg, run.num_blocks),) if w)
    for w in warnings:
        print(f"apcsim: warning: {w}", file=sys.stderr)
    if cfg.num_replicas > 1:  # a cluster: replica 0's core is run.scheduler, the others alike
        from apcsim.cluster.replicas import replica_configs
        from apcsim.cluster.run import run_cluster

        schedulers, costs = [], []
        for k, rcfg in enumerate(replica_configs(cfg)):  # each replica's hardware and cache
            rcost = cost if rcfg.hardware is cfg.hardware else build_cost_model(rcfg)
            n = num_blocks_for(rcfg)
            check_some_request_fits(specs, n, cfg.block_size, cfg.cache.usable_blocks(n))
            schedulers.append(run.scheduler if k == 0 and rcfg is cfg else scheduler_for(rcfg, rcost, n, specs))
            costs.append(rcost)
        config = run.metrics_config({"cost_model": cost.name}, config_extra(cfg))
        if cfg.replica_hardware is not None or cfg.replica_num_gpu_blocks is not None:
            config["replica_hardware"] = [c.hardware.name for c in replica_configs(cfg)]
            config["replica_num_gpu_blocks"] = [s.kv.pool.num_blocks for s in schedulers]
        workload = [specs]
        del specs  # the cluster's frontend holds what it still needs
        metrics, sim, collector, interrupted = run_cluster(
            cfg, workload, schedulers, costs, config, loop_kw=run.loop_kw(), requests_csv=requests_csv,
            use_timestamps=use_timestamps, on_step=on_step, multirun=multirun)
        return SimOutcome(metrics, sim, collector, time.perf_counter() - t0, interrupted, warnings)
    # Rows stream into requests.csv.partial, renamed when the run ends (finished or interrupted):
    # a crashed run leaves the .partial file (and status.json "running"), never a requests.csv
    # that looks complete.
    interrupted = None
    tier_bound = cfg.cpu_tier.enabled and cfg.cpu_tier.bound
    arrivals: list[int] = []  # the order requests reached the scheduler, for the tier's bound
    with streamed(requests_csv) as sink:
        sim = Simulation(
            specs, run.scheduler, cost, skip_quiet=cfg.skip_quiet, **run.loop_kw(), keep_requests=keep_requests,
            log=RequestLog(sink, by_class=uses_priorities(specs)) if sink is not None else None,
            use_timestamps=use_timestamps, on_step=on_step,
            progress=make_progress(cfg.progress, len(specs), multirun=multirun),
            on_arrival=(lambda r, accepted: arrivals.append(r.index)) if tier_bound else None,
        )
        bound_specs = specs if tier_bound else None
        del specs  # the frontend holds what it still needs
        try:
            collector = sim.run()
        except RunInterrupted as e:
            interrupted = e
            collector = sim.metrics
    if cfg.verify and interrupted is None:
        run.scheduler.verify()
    extra = {"config": run.metrics_config({"cost_model": cost.name}, config_extra(cfg)), **run_extra(cfg, run.scheduler)}
    if "host_tier" in extra:
        extra["host_tier"]["transfer_stall_s"] = sim.executor.transfer_stall_s
        if bound_specs is not None:
            extra["host_tier"]["bound"] = tier_bound_rates(bound_specs, arrivals, run.scheduler, run.output_seed)
    metrics = collector.summary(sim.num_requests, extra, partial=interrupted is not None)
    return SimOutcome(metrics, sim, collector, time.perf_counter() - t0, interrupted, warnings)
