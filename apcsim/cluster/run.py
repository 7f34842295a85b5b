"""One cluster simulation (`apcsim.run.simulate` with num_replicas > 1 hands it the checked
config, the workload and one serving core per replica): the router, the replicas
(`apcsim.cluster.simulation`), one requests.csv with each request's replica, and metrics.json
with the cluster's and each replica's metrics (`apcsim.cluster.metrics`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apcsim.cluster.bound import pooled_bound
from apcsim.cluster.metrics import ClusterCollector, cluster_summary
from apcsim.cluster.simulation import ClusterSimulation
from apcsim.config import SimConfig
from apcsim.core.request import RequestSpec
from apcsim.core.scheduler import Scheduler
from apcsim.errors import ConfigError
from apcsim.interrupt import RunInterrupted
from apcsim.outputs.progress import make_progress
from apcsim.outputs.requestlog import RequestLog, uses_priorities
from apcsim.outputs.rundir import streamed
from apcsim.sim.cost_model import CostModel
from policies.registry import ROUTING_POLICIES
from policies.routing.base import Router, RouterContext

ROUTER_STREAM = 2  # the router's child of SeedSequence(seed); 0 and 1 are the workload's and the outputs'


def make_router(cfg: SimConfig, replica_blocks: list[int]) -> Router:
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


def run_cluster(cfg: SimConfig, workload: list[list[RequestSpec]], schedulers: list[Scheduler], costs: list[CostModel],
                config: dict,
                *, loop_kw: dict, requests_csv: Path | None = None, use_timestamps: bool = True, on_step=None,
                multirun: bool = False):
    """Returns (metrics, simulation, collector, interruption or None). `config`: metrics.json's
    "config" of one replica, to which the cluster's keys are added; `on_step(replica, plan,
    result)`; the other arguments as `simulate`'s. `workload`: [specs], handed over (emptied
    here) so that finished requests' specs can be freed unless the pooled bound needs them."""
    specs = workload.pop()
    router = make_router(cfg, [s.kv.pool.num_blocks for s in schedulers])
    by_class = uses_priorities(specs)
    interrupted = None
    with streamed(requests_csv) as sink:  # requests.csv.partial until the run ends (see simulate)
        logs = [RequestLog(sink, by_class=by_class, replica=k, write_header=k == 0) for k in range(len(schedulers))]
        sim = ClusterSimulation(specs, schedulers, router, costs, skip_quiet=cfg.skip_quiet, **loop_kw,
                                use_timestamps=use_timestamps, on_step=on_step, logs=logs,
                                progress=make_progress(cfg.progress, len(specs), multirun=multirun))
        if not cfg.cluster_bound:
            del specs
        try:
            sim.run()
        except RunInterrupted as e:
            interrupted = e
    if cfg.verify and interrupted is None:
        for s in schedulers:
            s.verify()
    config = {**config, "num_replicas": cfg.num_replicas, "router": cfg.router.name}  # type: ignore[union-attr]
    metrics = cluster_summary(sim, {"config": config}, partial=interrupted is not None)
    if cfg.cluster_bound and interrupted is None:
        capacity = sum(s.kv.pool.num_blocks for s in schedulers)
        output_seed = loop_kw["output_seed"]
        metrics["cluster"]["pooled_bound"] = pooled_bound(specs, sim.dispatch.order, output_seed, schedulers[0].kv, capacity)
    return metrics, sim, ClusterCollector(sim), interrupted
