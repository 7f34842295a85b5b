"""One cluster simulation from a checked config: N replicas (`apcsim.cluster.simulation`), one
requests.csv with each request's replica, metrics.json with the cluster's and each replica's
metrics (`apcsim.cluster.metrics`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from apcsim.cluster.bound import pooled_bound
from apcsim.cluster.metrics import ClusterCollector, cluster_summary
from apcsim.cluster.simulation import ClusterSimulation
from apcsim.config import SimConfig
from apcsim.interrupt import RunInterrupted
from apcsim.outputs.progress import make_progress
from apcsim.outputs.requestlog import RequestLog, uses_priorities
from apcsim.sim.cost_model import CostModel
from policies.registry import ROUTING_POLICIES
from policies.routing.base import Router, RouterContext

ROUTER_STREAM = 2  # the router's child of SeedSequence(seed); 0 and 1 are the workload's and the outputs'


def make_router(cfg: SimConfig, replica_blocks: list[int]) -> Router:
    from apcsim.errors import ConfigError

    if cfg.router is None:
        raise ConfigError(f"num_replicas={cfg.num_replicas} needs a router; one of: {', '.join(sorted(ROUTING_POLICIES))}")
    entry = ROUTING_POLICIES.get(cfg.router.name)
    if entry is None:
        raise ConfigError(f"unknown router {cfg.router.name!r}; known: {', '.join(sorted(ROUTING_POLICIES))}")
    ctx = RouterContext(num_replicas=cfg.num_replicas, block_size=cfg.block_size, replica_blocks=tuple(replica_blocks),
                        seed_seq=np.random.SeedSequence(cfg.seed, spawn_key=(ROUTER_STREAM,)))
    try:
        return entry.cls(cfg.router, ctx)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def simulate_cluster(cfg: SimConfig, *, requests_csv: Path | None = None, cost: CostModel | None = None,
                     use_timestamps: bool = True, on_step=None, multirun: bool = False):
    """`simulate` for num_replicas > 1 (same arguments; `on_step(replica, plan, result)`)."""
    from apcsim.run import SimOutcome, build_cost_model, build_run, kv_cache_warning, scheduler_for

    t0 = time.perf_counter()
    if cost is None:
        cost = build_cost_model(cfg)
    run, specs = build_run(cfg, cost)  # the workload, the output seed and replica 0's core
    schedulers = [run.scheduler] + [scheduler_for(cfg, cost, run.num_blocks, specs) for _ in range(cfg.num_replicas - 1)]
    router = make_router(cfg, [s.kv.pool.num_blocks for s in schedulers])
    warnings = tuple(w for w in (kv_cache_warning(cfg, run.num_blocks),) if w)
    for w in warnings:
        print(f"apcsim: warning: {w}", file=sys.stderr)
    partial = None if requests_csv is None else Path(requests_csv).with_name(Path(requests_csv).name + ".partial")
    sink = open(partial, "w", newline="") if partial is not None else None
    by_class = uses_priorities(specs)
    logs = [RequestLog(sink, by_class=by_class, replica=k, write_header=k == 0) for k in range(cfg.num_replicas)]
    interrupted = None
    try:
        sim = ClusterSimulation(specs, schedulers, router, cost, skip_quiet=cfg.skip_quiet, **run.loop_kw(),
                                use_timestamps=use_timestamps, on_step=on_step, logs=logs,
                                progress=make_progress(cfg.progress, len(specs), multirun=multirun))
        if not cfg.cluster_bound:
            del specs  # the frontend holds what it still needs
        try:
            sim.run()
        except RunInterrupted as e:
            interrupted = e
    finally:
        if sink is not None:
            sink.close()
    if partial is not None:
        os.replace(partial, requests_csv)
    if cfg.verify and interrupted is None:
        for s in schedulers:
            s.verify()
    from apcsim.run import config_extra

    config = run.metrics_config({"cost_model": cost.name}, config_extra(cfg))
    config.update(num_replicas=cfg.num_replicas, router=cfg.router.name)
    metrics = cluster_summary(sim, {"config": config}, partial=interrupted is not None)
    if cfg.cluster_bound and interrupted is None:
        kv = schedulers[0].kv
        capacity = sum(s.kv.pool.num_blocks for s in schedulers)
        metrics["cluster"]["pooled_bound"] = pooled_bound(specs, sim.dispatch.order, run.output_seed, kv, capacity)
    return SimOutcome(metrics, sim, ClusterCollector(sim), time.perf_counter() - t0, interrupted, warnings)
