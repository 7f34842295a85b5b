"""One engine run from a composed config: the simulator's loop with a real executor and a wall clock.

schedule(now) -> StepPlan -> Executor.execute (forward pass, measured) -> update(plan, now): the
serving loop of `apcsim.loop`, with the same Request, BlockPool, Scheduler and policy objects as
the simulator. Arrivals
follow the trace's timestamps on the wall clock (`online=true`) or all come at once (offline:
every request is due at t=0, a follow-up turn as soon as its parent finishes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from apcsim.config import SimConfig
from apcsim.core.build import make_scheduler
from apcsim.core.request import RequestSpec, Status
from apcsim.core.scheduler import Scheduler
from apcsim.errors import ApcsimError, ConfigError
from apcsim.loop import ServingLoop
from apcsim.outputs.files import write_run_files
from apcsim.outputs.metrics import MetricsCollector
from apcsim.run import kv_options, validate, with_model_resolved
from apcsim.workloads import build_workload


@dataclass
class EngineConfig(SimConfig):
    device: str = "auto"  # auto: cuda if available, else cpu
    weights: Optional[str] = None  # a folder of HF Llama *.safetensors; None: random weights (seed)
    online: bool = False  # arrivals on the wall clock at the trace's timestamps; false: all at once
    attention_backend: str = "auto"  # auto: triton on cuda, torch (reference) on cpu; or triton/torch
    cpu_kv_cache_mib: int = 256  # KV cache size on the CPU when num_gpu_blocks is not given
    weights_seed: Optional[int] = None  # seed of the random weights; None: `seed`
    cpu_threads: Optional[int] = None  # torch intra-op threads on the CPU; None: torch's default
    # Pure-decode steps (engine/decode_graphs.py): auto = CUDA graphs on a GPU with the Triton
    # kernels, eager otherwise; on = CUDA graphs (a GPU is required); padded = the graphs'
    # padded static-buffer path run without capture; off = every step eager.
    cuda_graphs: str = "auto"
    cuda_graph_max_batch: Optional[int] = None  # largest captured batch; None: scheduler.max_num_seqs


CUDA_GRAPH_MODES = ("auto", "on", "padded", "off")


def decode_graph_mode(cuda_graphs: str, device, ops_name: str, max_batch: int | None = None) -> str | None:
    """The `engine.decode_graphs` mode of a `cuda_graphs=` value on a device with a kernel
    backend, or None for eager decode steps. The engine and its profiler both decide here."""
    if cuda_graphs not in CUDA_GRAPH_MODES:
        raise ConfigError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, got {cuda_graphs!r}")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"cuda_graph_max_batch must be >= 1, got {max_batch}")
    if cuda_graphs == "on" and device.type != "cuda":
        raise ConfigError(f"cuda_graphs=on needs a CUDA device, got {device}; cuda_graphs=padded runs the same "
                          "padded decode path without capture")
    if cuda_graphs == "auto":
        mode = "graph" if device.type == "cuda" and ops_name == "triton" else None
    else:
        mode = {"on": "graph", "padded": "padded", "off": None}[cuda_graphs]
    if mode == "graph" and ops_name != "triton":
        raise ConfigError(f"CUDA graphs need attention_backend=triton (the {ops_name} backend syncs with the host); "
                          "set cuda_graphs=off to run it eagerly")
    return mode


def register_engine_config() -> None:
    from hydra.core.config_store import ConfigStore

    from apcsim.config import register_configs

    register_configs()
    ConfigStore.instance().store(name="engine_schema", node=EngineConfig)


class EngineLoop(ServingLoop):
    """The wall-clock driver of the serving loop (`apcsim.loop`); the simulator's is SimPy's."""

    def __init__(self, specs: list[RequestSpec], scheduler: Scheduler, executor, *,
                 max_concurrency: int | None = None, online: bool = False, output_seed: int = 0,
                 verify_every_step: bool = False, on_step=None) -> None:
        super().__init__(specs, scheduler, max_concurrency=max_concurrency, output_seed=output_seed,
                         use_timestamps=online, verify_every_step=verify_every_step, on_step=on_step)
        self.executor = executor
        for r in self.requests:
            executor.register(r)
        self._t0 = 0.0
        # (end on the engine clock, measured seconds) of every step, in order: recorded runs
        # (engine.recorded) keep them beside each step's plan.
        self.step_times: list[tuple[float, float]] = []

    def complete(self, plan, now: float, duration: float):
        self.step_times.append((now, duration))
        return super().complete(plan, now, duration)

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def run(self) -> MetricsCollector:
        sched, fe = self.scheduler, self.frontend
        self._t0 = time.perf_counter()
        while True:
            fe.deliver(self.now())
            if not sched.has_work:
                if not fe.has_future_requests:
                    break
                due = fe.next_due_time
                if due == float("inf"):
                    raise RuntimeError("follow-up or blocked requests with nothing running")
                time.sleep(max(0.0, due - self.now()))
                continue
            plan = self.next_plan(self.now())
            t_start = time.perf_counter()
            self.executor.execute(plan)  # returns once the device is done (tokens on the host)
            t_end = time.perf_counter()
            self.complete(plan, t_end - self._t0, t_end - t_start)
        return self.metrics


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # torch's message lists ~20 device types and is not about this option
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r} (the engine runs on those)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available")
    return dev


def resolve_ops(name: str, device):
    from engine import kernels

    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name not in kernels.BACKENDS:
        raise ConfigError(f"attention_backend must be auto or one of {', '.join(kernels.BACKENDS)}, got {name!r}")
    if name == "triton" and (why := kernels.triton_unusable_reason(device.type)):
        raise ConfigError(f"attention_backend=triton on {device}: {why}")
    return kernels.get_ops(name)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def kv_memory_error(*, model: str, weights_bytes: int, activation_bytes: int, block_bytes: int, num_blocks: int | None,
                    free_bytes: int, total_bytes: int, utilization: float, graph_bytes: int = 0) -> str | None:
    """The message for a KV cache that does not fit on the GPU (None if it fits), with every
    number the user needs: weights, activations, the KV asked for, free and total memory.
    `num_blocks`: the blocks asked for (num_gpu_blocks), or None when sized from utilization.
    `activation_bytes` includes `graph_bytes`, the decode graphs' share, named when > 0."""
    budget = total_bytes * utilization - (total_bytes - free_bytes)  # the weights are loaded by now
    room = budget - activation_bytes
    graphs = f" (CUDA graphs {_gib(graph_bytes)})" if graph_bytes > 0 else ""
    head = (f"GPU out of memory for model {model}: weights {_gib(weights_bytes)}, activations {_gib(activation_bytes)}"
            f"{graphs}, {_gib(free_bytes)} free of {_gib(total_bytes)}")
    if num_blocks is None:
        if room >= block_bytes:
            return None
        return (f"{head}; gpu_memory_utilization={utilization} leaves {_gib(max(room, 0))} for the KV cache, "
                f"less than one block ({block_bytes} bytes); raise gpu_memory_utilization or use a smaller model")
    kv = num_blocks * block_bytes
    if kv + activation_bytes <= free_bytes:
        return None
    fit = max(int((free_bytes - activation_bytes) // block_bytes), 0)
    return (f"{head}; num_gpu_blocks={num_blocks} needs {_gib(kv)} of KV cache ({block_bytes} bytes a block), "
            f"at most {fit} blocks fit")


def check_cpu_memory(cfg: EngineConfig, dtype, available: int | None = None) -> None:
    """On the CPU the weights, the KV cache and the block pool live in host memory: refuse a model
    that cannot fit before building it (the default llama3_8b is 30 GiB in fp32), with the numbers."""
    import torch

    from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits
    from engine.executor import kv_block_bytes

    elem = torch.empty((), dtype=dtype).element_size()
    weights = cfg.model.num_params * elem
    per_block = kv_block_bytes(cfg.model, cfg.block_size, dtype)
    kv = (cfg.num_gpu_blocks * (per_block + POOL_BYTES_PER_BLOCK) if cfg.num_gpu_blocks is not None
          else cfg.cpu_kv_cache_mib * 2**20)
    what = (f"model {cfg.model.name} on the CPU ({weights / 2**30:.1f} GiB of {str(dtype).removeprefix('torch.')} "
            f"weights + {kv / 2**30:.1f} GiB of KV cache)")
    check_fits(what, weights + kv, "use model=tiny, a smaller num_gpu_blocks/cpu_kv_cache_mib, or a GPU",
               available=available)


def kv_num_blocks(cfg: EngineConfig, device, dtype, weights_bytes: int = 0, graph_bytes: int = 0) -> int:
    """num_gpu_blocks if given; on CUDA what gpu_memory_utilization leaves after the weights,
    one full-budget step's activations (as vLLM sizes it) and the decode graphs' memory
    (`graph_bytes`, see engine.decode_graphs.graph_memory_bytes); on the CPU cpu_kv_cache_mib. On CUDA
    a cache that cannot fit is a ConfigError with the numbers (see kv_memory_error), raised
    before anything is allocated, instead of torch's OutOfMemoryError mid-setup."""
    import torch

    from apcsim.hardware import activation_bytes
    from engine.executor import kv_block_bytes

    per_block = kv_block_bytes(cfg.model, cfg.block_size, dtype)
    if device.type == "cuda":
        # Blocks the caching allocator holds but no tensor uses (temporaries of the weights'
        # initialisation, an earlier run's cache) count as used in mem_get_info: hand them back
        # first, or the KV cache comes out smaller by all of them.
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        act = activation_bytes(cfg.model, cfg.scheduler.max_num_batched_tokens, cfg.scheduler.max_num_seqs) + graph_bytes
        msg = kv_memory_error(model=cfg.model.name, weights_bytes=weights_bytes, activation_bytes=act, graph_bytes=graph_bytes,
                              block_bytes=per_block, num_blocks=cfg.num_gpu_blocks, free_bytes=free,
                              total_bytes=total, utilization=cfg.gpu_memory_utilization)
        if msg is not None:
            raise ConfigError(msg)
        if cfg.num_gpu_blocks is not None:
            return cfg.num_gpu_blocks
        return int((total * cfg.gpu_memory_utilization - (total - free) - act) // per_block)
    if cfg.num_gpu_blocks is not None:
        return cfg.num_gpu_blocks
    n = int(cfg.cpu_kv_cache_mib * 2**20 // per_block)
    if n < 1:
        raise ConfigError(f"no room for a KV cache of model {cfg.model.name} (one block is {per_block} bytes)")
    return n


@dataclass
class EngineOutcome:
    metrics: dict
    loop: EngineLoop
    collector: MetricsCollector
    wall_s: float


def _recompute_cost(cfg: SimConfig, cost=None):
    """The policies' recompute-cost estimate comes from the simulator's cost model: `cost` if
    given (validation passes the one the simulator uses), else the config's, else the spec sheet
    when there is no calibration profile for this hardware and model."""
    from apcsim.calibration.cost_model import make_cost_model

    if cost is None:
        try:
            cost = make_cost_model(cfg.cost_model, cfg.hardware, cfg.model)
        except ApcsimError:
            cost = make_cost_model("roofline", cfg.hardware, cfg.model)
    bs = cfg.block_size
    return lambda depth: cost.recompute_time(bs, depth * bs)


def build_engine(cfg: EngineConfig, *, capture_logits: bool = False, on_step=None, cost=None):
    """(loop, executor) for a config; nothing runs yet. `cost`: the cost model whose recompute
    estimate the policies use (default: the config's, see `_recompute_cost`)."""
    import torch

    from engine.decode_graphs import graph_memory_bytes
    from engine.executor import Executor
    from engine.weights import build_model, default_dtype

    cfg = with_model_resolved(cfg)  # model.hf_config: a dense Llama config.json runs here too
    validate(cfg)
    if cfg.model.is_moe or cfg.tp != 1:
        raise ConfigError(f"the engine runs dense Llama models on one GPU; model {cfg.model.name} "
                          f"({cfg.model.num_experts} experts) at tp={cfg.tp} is for the simulator only")
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.cpu_threads is not None:
        if cfg.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {cfg.cpu_threads}")
        torch.set_num_threads(cfg.cpu_threads)
    ops = resolve_ops(cfg.attention_backend, device)
    if device.type == "cpu":
        check_cpu_memory(cfg, default_dtype(device))
    elif cfg.num_gpu_blocks is not None:
        from apcsim.hostmem import POOL_BYTES_PER_BLOCK, check_fits

        check_fits(f"the block pool of num_gpu_blocks={cfg.num_gpu_blocks}", cfg.num_gpu_blocks * POOL_BYTES_PER_BLOCK,
                   "lower num_gpu_blocks")
    graph_mode = decode_graph_mode(cfg.cuda_graphs, device, ops.name, cfg.cuda_graph_max_batch)
    seed = cfg.seed if cfg.weights_seed is None else cfg.weights_seed
    model = build_model(cfg.model, weights=cfg.weights, seed=seed, device=device, dtype=default_dtype(device))
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    workload_ss, output_ss = np.random.SeedSequence(cfg.seed).spawn(2)
    specs = build_workload(cfg.workload, vocab_size=cfg.model.vocab_size, seed_seq=workload_ss)
    # A request never holds more blocks than its prompt plus its output fill.
    widest = max((-(-(s.prompt_len + s.output_len) // cfg.block_size) for s in specs), default=1)
    graph_batch = cfg.cuda_graph_max_batch or cfg.scheduler.max_num_seqs
    graph_bytes = (graph_memory_bytes(cfg.model, graph_batch, widest, keep_logits=capture_logits)
                   if graph_mode == "graph" else 0)
    num_blocks = kv_num_blocks(cfg, device, default_dtype(device), weights_bytes, graph_bytes=graph_bytes)
    executor = Executor(model, ops, num_blocks=num_blocks, block_size=cfg.block_size, capture_logits=capture_logits)
    scheduler = make_scheduler(cfg.policy, cfg.scheduler, num_blocks=num_blocks, block_size=cfg.block_size,
                               recompute_cost=_recompute_cost(cfg, cost), specs=specs, kv_options=kv_options(cfg),
                               cache=cfg.cache)
    if graph_mode is not None and specs:
        executor.enable_decode_graphs(graph_mode, max_batch=graph_batch, max_blocks_per_seq=widest)
    loop = EngineLoop(specs, scheduler, executor, max_concurrency=cfg.max_concurrency, online=cfg.online,
                      output_seed=int(output_ss.generate_state(1)[0]), verify_every_step=cfg.verify, on_step=on_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loop, executor


def run_engine(cfg: EngineConfig, **kw) -> EngineOutcome:
    t0 = time.perf_counter()
    loop, executor = build_engine(cfg, **kw)
    collector = loop.run()
    if cfg.verify:
        loop.scheduler.verify()
    m = executor.model
    extra = {
        "config": {
            "policy": "none" if cfg.policy is None else cfg.policy.name,
            "scheduler": cfg.scheduler.name,
            "workload": cfg.workload.name,
            "block_size": cfg.block_size,
            "num_gpu_blocks": executor.num_blocks,
            "hardware": cfg.hardware.name,
            "model": cfg.model.name,
            "executor": "engine",
            "device": str(executor.device),
            "dtype": str(executor.dtype).removeprefix("torch."),
            "attention_backend": executor.ops.name,
            "cuda_graphs": "off" if executor.decode_graphs is None else executor.decode_graphs.mode,
            "weights": cfg.weights or f"random(seed={cfg.seed if cfg.weights_seed is None else cfg.weights_seed})",
            "online": cfg.online,
            "seed": cfg.seed,
            "semantics": cfg.semantics,
            "num_params": sum(p.numel() for p in m.parameters()),
        }
    }
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


def compose_engine_config(overrides: list[str] | None = None) -> EngineConfig:
    """A typed engine config from the same overrides `python -m engine` takes (tests, benchmarks)."""
    from apcsim.cli.compose import compose_config

    register_engine_config()
    return compose_config(overrides, config_name="engine")  # type: ignore[return-value]
