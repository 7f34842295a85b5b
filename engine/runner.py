"""One engine run from a composed config: the serving loop (`apcsim.loop`) with a forward pass
on the wall clock as its executor.

The same Request, BlockPool, Scheduler and policy objects as the simulator, built by the same
`apcsim.run.build_run`. Arrivals follow the trace's timestamps on the wall clock (`online=true`)
or all come at once (offline: every request is due at t=0, a follow-up turn as soon as its parent
finishes). The config and the KV cache's size are `engine.config`'s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from apcsim.core.plan import StepPlan
from apcsim.core.request import RequestSpec, Status
from apcsim.core.scheduler import Scheduler, StepResult
from apcsim.errors import ApcsimError, ConfigError
from apcsim.loop import ServingLoop, Waits
from apcsim.mathutil import cdiv
from apcsim.outputs.files import write_run_files
from apcsim.outputs.metrics import MetricsCollector
from apcsim.run import build_run, checked_config
from engine.config import EngineConfig, check_cpu_memory, decode_graph_mode, kv_num_blocks, resolve_device, resolve_ops
from engine.executor import Executor


class WallClockExecutor(Executor):
    """The forward pass (`engine.executor.Executor`) as the loop's executor: a step takes the
    time it takes on `time.perf_counter`, and arrivals reach the scheduler between steps."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def drive(self, loop: ServingLoop) -> None:
        self._t0 = time.perf_counter()
        loop.frontend.deliver(self.now())
        for _ in loop.body():  # nothing to wait on: the body never yields on the wall clock
            pass

    def run_plan(self, plan: StepPlan) -> Waits[float]:
        yield from ()  # a generator that never waits: the forward pass takes the time
        t_start = time.perf_counter()
        self.execute(plan)  # returns once the device is done (tokens on the host)
        return time.perf_counter() - t_start

    def wait_for_work(self, loop: ServingLoop) -> Waits[None]:
        yield from ()
        fe = loop.frontend
        due = fe.next_due_time
        if due == float("inf"):
            raise RuntimeError("follow-up or blocked requests with nothing running")
        time.sleep(max(0.0, due - self.now()))
        fe.deliver(self.now())

    def after_step(self, loop: ServingLoop, result: StepResult) -> Waits[None]:
        yield from ()
        loop.frontend.deliver(self.now())


class EngineLoop(ServingLoop):
    """The serving loop on the engine's executor; every request's token stream is the executor's."""

    def __init__(self, specs: list[RequestSpec], scheduler: Scheduler, executor: Executor, *,
                 online: bool = False, **loop_kw) -> None:
        super().__init__(specs, scheduler, executor, use_timestamps=online, **loop_kw)
        for r in self.requests:
            executor.register(r)
        # (end on the engine clock, measured seconds) of every step, in order: recorded runs
        # (engine.recorded) keep them beside each step's plan.
        self.step_times: list[tuple[float, float]] = []

    def complete(self, plan, now: float, duration: float):
        self.step_times.append((now, duration))
        return super().complete(plan, now, duration)


@dataclass
class EngineOutcome:
    metrics: dict
    loop: EngineLoop
    collector: MetricsCollector
    wall_s: float


def _recompute_cost_model(cfg: EngineConfig, cost=None):
    """The cost model whose recompute estimate the policies use: `cost` if given (validation
    passes the one the simulator uses), else the config's, else the spec sheet when there is no
    calibration profile for this hardware and model."""
    from apcsim.calibration.cost_model import make_cost_model

    if cost is not None:
        return cost
    try:
        return make_cost_model(cfg.cost_model, cfg.hardware, cfg.model)
    except ApcsimError:
        return make_cost_model("roofline", cfg.hardware, cfg.model)


def _widest(specs: list[RequestSpec], block_size: int) -> int:
    """The most blocks a request holds: its prompt plus its output fill."""
    return max((cdiv(s.prompt_len + s.output_len, block_size) for s in specs), default=1)


def build_engine(cfg: EngineConfig, *, capture_logits: bool = False, on_step=None, cost=None):
    """(loop, run parts) for a config; nothing runs yet. `cost`: the cost model whose recompute
    estimate the policies use (default: the config's, see `_recompute_cost_model`)."""
    import torch

    from engine.decode_graphs import graph_memory_bytes
    from engine.weights import build_model, default_dtype

    cfg = checked_config(cfg)  # model.hf_config: a dense Llama config.json runs here too
    if cfg.model.is_moe or cfg.tp != 1:
        raise ConfigError(f"the engine runs dense Llama models on one GPU; model {cfg.model.name} "
                          f"({cfg.model.num_experts} experts) at tp={cfg.tp} is for the simulator only")
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.cpu_threads is not None:
        if cfg.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {cfg.cpu_threads}")
        torch.set_num_threads(cfg.cpu_threads)
    ops = resolve_ops(cfg.attention_backend, device)
    dtype = default_dtype(device)
    if device.type == "cpu":
        check_cpu_memory(cfg, dtype)
    elif cfg.num_gpu_blocks is not None:
        from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits

        check_fits(f"the block pool of num_gpu_blocks={cfg.num_gpu_blocks}", cfg.num_gpu_blocks * POOL_BYTES_PER_BLOCK,
                   "lower num_gpu_blocks")
    graph_mode = decode_graph_mode(cfg.cuda_graphs, device, ops.name, cfg.cuda_graph_max_batch)
    seed = cfg.seed if cfg.weights_seed is None else cfg.weights_seed
    model = build_model(cfg.model, weights=cfg.weights, seed=seed, device=device, dtype=dtype)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    graph_batch = cfg.cuda_graph_max_batch or cfg.scheduler.max_num_seqs

    def num_blocks(specs: list[RequestSpec]) -> int:  # what the device has room for
        graph_bytes = (graph_memory_bytes(cfg.model, graph_batch, _widest(specs, cfg.block_size),
                                          keep_logits=capture_logits) if graph_mode == "graph" else 0)
        return kv_num_blocks(cfg, device, dtype, weights_bytes, graph_bytes=graph_bytes)

    run, specs = build_run(cfg, _recompute_cost_model(cfg, cost), num_blocks=num_blocks)
    executor = WallClockExecutor(model, ops, num_blocks=run.num_blocks, block_size=cfg.block_size,
                                 capture_logits=capture_logits)
    if run.scheduler.host_tier is not None:
        from apcsim.hostmem import check_fits
        from engine.executor import kv_block_bytes

        n = run.scheduler.host_tier.num_blocks
        check_fits(f"the host tier's KV buffer of cpu_tier {n} blocks", n * kv_block_bytes(cfg.model, cfg.block_size, dtype),
                   "lower cpu_tier.num_blocks or cpu_tier.gib")
        executor.enable_host_tier(n)
    if graph_mode is not None and specs:
        executor.enable_decode_graphs(graph_mode, max_batch=graph_batch,
                                      max_blocks_per_seq=_widest(specs, cfg.block_size))
    loop = EngineLoop(specs, run.scheduler, executor, online=cfg.online, on_step=on_step, **run.loop_kw())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loop, run


def run_engine(cfg: EngineConfig, **kw) -> EngineOutcome:
    t0 = time.perf_counter()
    loop, run = build_engine(cfg, **kw)
    collector = loop.run()
    if cfg.verify:
        loop.scheduler.verify()
    ex = loop.executor
    config = run.metrics_config({
        "executor": "engine",
        "device": str(ex.device),
        "dtype": str(ex.dtype).removeprefix("torch."),
        "attention_backend": ex.ops.name,
        "cuda_graphs": "off" if ex.decode_graphs is None else ex.decode_graphs.mode,
        "weights": cfg.weights or f"random(seed={cfg.seed if cfg.weights_seed is None else cfg.weights_seed})",
        "online": cfg.online,
    }, {"num_params": sum(p.numel() for p in ex.model.parameters())})
    extra = {"config": config}
    tier = loop.scheduler.host_tier
    if tier is not None:
        stats = loop.scheduler.stats
        extra["host_tier"] = {**tier.summary(stats.prefix_cache_queries, stats.prefix_cache_hits),
                              "copy_s": ex.host_kv.copy_s}  # measured: the copies ran synchronously
    metrics = collector.summary(loop.num_requests, extra)
    return EngineOutcome(metrics, loop, collector, time.perf_counter() - t0)


def write_engine_outputs(out: EngineOutcome, run_dir: Path, cfg: EngineConfig) -> None:
    """The simulator's run files (metrics.json, requests.csv, run_info.json, report.html) plus
    outputs.jsonl: each request's greedy output token ids."""
    from apcsim.outputs.rundir import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    ex = out.loop.executor
    lines = []
    for r in out.loop.requests:
        toks = ex.generated(r.request_id)[: r.num_output_tokens] if r.status is Status.FINISHED else []
        lines.append(json.dumps({"request_id": r.request_id, "output_token_ids": [int(t) for t in toks]}) + "\n")
    write_text_atomic(run_dir / "outputs.jsonl", "".join(lines))
    n = len(out.loop.requests)
    write_run_files(run_dir, cfg, out.metrics, out.collector, {
        "wall_s": out.wall_s,
        "requests_per_wall_s": n / out.wall_s if out.wall_s > 0 else None,
        "device": out.metrics["config"]["device"],
    })
